"""What S3 requests look like on the wire, how much of an answer is read, and what a failed
transfer means.

The S3 client (s3.py) sends; this module builds its query strings and XML bodies, reads
answer bodies up to a cap, and turns the HTTP library's failures into chute's errors
(errors.py), so that no httpx type or exception gets past the client (s3_answers.py reads
what the answers say):

- a body is read incrementally and never beyond its cap (:func:`read_body`): an answer
  larger than chute can need is :class:`MalformedResponse`, not a large allocation;
- a transport failure becomes :class:`StoreUnreachable` (or :class:`Stalled` for a
  timeout: the per-socket-operation timeouts are the stall timeout), saying whether the
  whole request had been sent, which is what decides whether its answer may have been lost.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import quote

import httpx

from .errors import ChuteError, MalformedResponse, Stalled, StoreUnreachable

KiB, MiB = 1024, 1024 * 1024
XML_BODY_MAX = 8 * MiB
"""The largest XML answer read (listings, ListMultipartUploads, Complete...). A page of
1,000 entries is 300-500 KB with ordinary keys; with 1,024-byte keys URL-encoded to 3 KiB
each it is about 3.5 MiB, so 8 MiB refuses no page S3 could send, while a store sending
hundreds of MiB costs chute at most this much (a 400 MiB listing took 1.2 GiB of RSS)."""
ERROR_BODY_MAX = 64 * KiB
"""The part of an error answer read: S3's error documents are a few hundred bytes; the
rest is not read (the connection is closed)."""
MAX_KEYS = 1000
"""Entries per listing page asked for (S3's maximum): with XML_BODY_MAX, what bounds the
memory one page takes; a page with more is refused."""
SMALL_BODY_MAX = 64 * KiB
"""The largest body read from an answer that should have none or a tiny one (PutObject,
UploadPart, Delete, HEAD, tagging)."""


@dataclass(frozen=True)
class Answer:
    """A store's answer: status, headers (names lower-cased), body. The client's own type,
    so callers of :meth:`S3Client.request` never hold an httpx response."""

    status: int
    headers: Mapping[str, str]
    body: bytes | memoryview
    """``bytes``; a view of the caller's buffer for a GetObject read ``into`` one."""

    @property
    def request_id(self) -> str:
        return self.headers.get("x-amz-request-id", "")

    def etag(self) -> str:
        return self.headers.get("etag", "").strip('"')


@dataclass
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Listing:
    objects: list[ObjectInfo]
    prefixes: list[str]


@dataclass
class PendingUpload:
    key: str
    upload_id: str
    initiated: str


# -- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """Where objects go: endpoint, bucket and key prefix (``s3://bucket/prefix``)."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"

    @property
    def path_style(self) -> bool:
        return self.endpoint_url is not None

    def key(self, path: str) -> str:
        """The object key of a path relative to the mount root."""
        return f"{self.prefix}{path}"

    def url(self, key: str = "", query: str = "") -> str:
        quoted = quote(key, safe="/~")
        if self.path_style:
            base = f"{self.endpoint_url.rstrip('/')}/{self.bucket}"
        else:
            base = f"https://{self.bucket}.s3.{self.region}.amazonaws.com"
        url = f"{base}/{quoted}" if key else f"{base}{'/' if not self.path_style else ''}"
        return f"{url}?{query}" if query else url


def canonical_query(params: Mapping[str, str | int | None]) -> str:
    """A canonical (sorted, RFC 3986 encoded) query string, as SigV4 wants it; None values
    are left out."""
    pairs = sorted(
        (quote(k, safe="-_.~"), quote(str(v), safe="-_.~"))
        for k, v in params.items()
        if v is not None
    )
    return "&".join(f"{k}={v}" for k, v in pairs)


def xml_text(text: str) -> str:
    """``text`` escaped for an XML element's content."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def tagging_body(tags: Mapping[str, str]) -> bytes:
    tagset = "".join(
        f"<Tag><Key>{xml_text(k)}</Key><Value>{xml_text(v)}</Value></Tag>"
        for k, v in tags.items()
    )
    return f"<Tagging><TagSet>{tagset}</TagSet></Tagging>".encode()


def complete_body(parts: list[tuple[int, str, Mapping[str, str]]]) -> bytes:
    """CompleteMultipartUpload's body: [(number, etag, {ChecksumCRC32C: ...})] in order."""
    elements = "".join(
        f"<Part><PartNumber>{n}</PartNumber><ETag>\"{etag}\"</ETag>"
        + "".join(f"<{k}>{xml_text(v)}</{k}>" for k, v in extra.items())
        + "</Part>"
        for n, etag, extra in parts
    )
    return f"<CompleteMultipartUpload>{elements}</CompleteMultipartUpload>".encode()


# -- answer bodies ----------------------------------------------------------------------------


async def read_body(operation: str, method: str, response: httpx.Response, limit: int,
                    into: memoryview | None = None) -> bytes | memoryview:
    """The answer's body, read a chunk at a time, never more than ``limit`` bytes held.

    ``into`` (a GetObject's receive buffer, read_buffers.py): a successful answer's body is
    copied straight into it as it arrives, instead of being kept in pieces and joined into
    a new ``bytes`` (a second copy of every byte, into memory not yet mapped); the result is
    the filled part of ``into``. ``limit`` is then at most ``len(into)``.

    An error answer (status >= 300) is cut to ERROR_BODY_MAX, whatever ``limit`` the call's
    success allows; any other answer longer than
    ``limit`` (by its Content-Length, before reading, or by what arrives) is
    MalformedResponse. Bytes are kept as sent (no content decoding): a GetObject returns
    the object's bytes even if it is stored with a Content-Encoding, and nothing expands a
    small answer into a large one.
    """
    status = response.status_code
    if status >= 300:
        limit = ERROR_BODY_MAX
    declared = response.headers.get("content-length", "")
    if method != "HEAD" and status < 300 and declared.isdigit() and int(declared) > limit:
        raise MalformedResponse(operation, status, f"the answer is {declared} bytes, more "
                                f"than the {limit} chute reads for {operation}")
    if method == "HEAD":
        return b""
    if into is not None and status < 300:
        return await _read_into(operation, status, response, min(limit, len(into)), into)
    chunks: list[bytes] = []
    size = 0
    async for chunk in cast(AsyncIterable[bytes], response.stream):
        if size + len(chunk) > limit:
            if status >= 300:
                chunks.append(chunk[:limit - size])
                break
            raise MalformedResponse(operation, status, f"the answer is more than the {limit} "
                                    f"bytes chute reads for {operation}; not read further")
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def _read_into(operation: str, status: int, response: httpx.Response, limit: int,
                     into: memoryview) -> memoryview:
    read_into = getattr(response, "read_into", None)  # s3_http.Response: straight from the
    if read_into is not None:  # socket into ``into`` (a Content-Length body that fits)
        filled = await read_into(into[:limit])
        if filled is not None:
            return into[:filled]
    size = 0
    async for chunk in cast(AsyncIterable[bytes], response.stream):
        end = size + len(chunk)
        if end > limit:
            raise MalformedResponse(operation, status, f"the answer is more than the {limit} "
                                    f"bytes chute reads for {operation}; not read further")
        into[size:end] = chunk
        size = end
    return into[:size]


# -- transport failures -----------------------------------------------------------------------

_BEFORE_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.WriteError, httpx.WriteTimeout,
                httpx.PoolTimeout, httpx.UnsupportedProtocol, httpx.LocalProtocolError,
                httpx.ProxyError)
"""Failures before the whole request was out (no connection, or broke while sending): the
store cannot have acted on it. Anything later (a read error or timeout, the peer closing
mid-answer) may have followed a request the store carried out."""


def transport_failure(operation: str, exc: httpx.HTTPError, *, send_timeout: float,
                      read_timeout: float) -> ChuteError:
    """The chute error for an httpx failure of one attempt.

    Timeouts are per socket operation (see s3.py), so each one is a stall: :class:`Stalled`.
    Other transport errors are :class:`StoreUnreachable`. An answer that arrived but cannot
    be decoded is :class:`MalformedResponse`. The description names the httpx exception
    (``timeout (ReadTimeout)``, ``connection error (ConnectError: ...)``), as logs always did.
    """
    name = type(exc).__name__
    if not isinstance(exc, httpx.TransportError):  # e.g. DecodingError: a garbled answer
        return MalformedResponse(operation, 0, f"{name}: {exc}")
    sent = not isinstance(exc, _BEFORE_SENT)
    if isinstance(exc, httpx.TimeoutException):
        seconds = read_timeout if isinstance(exc, httpx.ReadTimeout) else send_timeout
        return Stalled(operation, f"timeout ({name}): no progress for {seconds:g} s",
                       request_sent=sent)
    detail = f"{name}: {exc}" if str(exc) else name
    return StoreUnreachable(operation, f"connection error ({detail})", request_sent=sent)
