"""What S3 requests and answers look like on the wire, and what a failed transfer means.

The S3 client (s3.py) sends; this module builds its query strings and XML bodies, reads the
answers, and turns the HTTP library's failures into chute's errors (errors.py), so that no
httpx or XML type or exception gets past the client:

- an error answer becomes a :class:`StoreError` with the store's code;
- an answer that is not XML, or lacks a field chute needs, becomes
  :class:`MalformedResponse` (never an XML parse error);
- a transport failure becomes :class:`StoreUnreachable` (or :class:`Stalled` for a
  timeout: the per-socket-operation timeouts are the stall timeout), saying whether the
  whole request had been sent, which is what decides whether its answer may have been lost.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_plus

import httpx

from .errors import ChuteError, MalformedResponse, Stalled, StoreError, StoreUnreachable

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


@dataclass(frozen=True)
class Answer:
    """A store's answer: status, headers (names lower-cased), body. The client's own type,
    so callers of :meth:`S3Client.request` never hold an httpx response."""

    status: int
    headers: Mapping[str, str]
    body: bytes

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


# -- answers ----------------------------------------------------------------------------------


def _find(element: ET.Element, tag: str) -> ET.Element | None:
    found = element.find(NS + tag)
    return found if found is not None else element.find(tag)


def _all(root: ET.Element, tag: str) -> list[ET.Element]:
    """Every ``tag`` element under ``root``, in S3's namespace or (some stores) in none."""
    return list(root.iter(NS + tag)) or list(root.iter(tag))


def text(element: ET.Element | None, tag: str, default: str = "") -> str:
    """The text of ``element``'s child ``tag`` (with or without the S3 namespace)."""
    if element is None:
        return default
    found = _find(element, tag)
    return found.text or default if found is not None else default


def required(operation: str, answer: Answer, element: ET.Element, tag: str) -> str:
    """The text of a child that must be there; MalformedResponse if it is not."""
    found = _find(element, tag)
    if found is None or not found.text:
        raise MalformedResponse(operation, answer.status, f"the answer has no <{tag}>",
                                answer.request_id)
    return found.text


def number(operation: str, answer: Answer, value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise MalformedResponse(operation, answer.status, f"{what} is not a number: {value!r}",
                                answer.request_id) from None


def parse(operation: str, answer: Answer) -> ET.Element:
    """The answer's XML document; MalformedResponse if it is not one."""
    try:
        return ET.fromstring(answer.body)
    except ET.ParseError as exc:
        raise MalformedResponse(
            operation, answer.status, f"the answer is not XML ({exc}): "
            f"{answer.body[:80].decode('utf-8', 'replace')!r}", answer.request_id,
        ) from None


def error_from_answer(operation: str, answer: Answer) -> StoreError:
    """The StoreError an error answer stands for (S3's <Error> document, if readable)."""
    code, message = f"HTTP{answer.status}", ""
    if answer.body:
        try:
            root = ET.fromstring(answer.body)
            code = text(root, "Code", code)
            message = text(root, "Message")
        except ET.ParseError:
            message = answer.body[:200].decode("utf-8", "replace")
    elif answer.status == 404:
        code = "NotFound"
    elif answer.status == 412:
        code = "PreconditionFailed"
    return StoreError(operation, answer.status, code, message, answer.request_id)


def result_etag(operation: str, answer: Answer) -> str:
    """The ETag of a CopyObjectResult, CopyPartResult or CompleteMultipartUploadResult.

    Such a 200 answer may still carry an <Error> document (S3 sends it after whitespace
    keep-alives on long copies and completes), so the body is always read.
    """
    root = parse(operation, answer)
    if root.tag.endswith("Error"):
        raise error_from_answer(operation, answer)
    return required(operation, answer, root, "ETag").strip('"')


def upload_id(operation: str, answer: Answer) -> str:
    return required(operation, answer, parse(operation, answer), "UploadId")


def tags(operation: str, answer: Answer) -> dict[str, str]:
    root = parse(operation, answer)
    return {text(t, "Key"): text(t, "Value") for t in _all(root, "Tag")}


def object_info(operation: str, key: str, answer: Answer) -> ObjectInfo:
    """Size, ETag, date and user metadata (``x-amz-meta-*``) from a HEAD's headers."""
    metadata = {
        name[len("x-amz-meta-"):]: value
        for name, value in answer.headers.items()
        if name.startswith("x-amz-meta-")
    }
    return ObjectInfo(
        key=key,
        size=number(operation, answer, answer.headers.get("content-length", "0"),
                    "Content-Length"),
        etag=answer.etag(), last_modified=answer.headers.get("last-modified", ""),
        metadata=metadata,
    )


def listing(operation: str, answer: Answer) -> tuple[Listing, str | None]:
    """One ListObjectsV2 page and the token of the next one (None on the last page).

    Keys and prefixes are URL-decoded if the store says it encoded them
    (``<EncodingType>url</EncodingType>``, asked for so that any key fits in XML 1.0).
    """
    root = parse(operation, answer)
    decode = unquote_plus if text(root, "EncodingType") == "url" else (lambda s: s)
    objects = []
    for entry in _all(root, "Contents"):
        objects.append(ObjectInfo(
            key=decode(required(operation, answer, entry, "Key")),
            size=number(operation, answer, text(entry, "Size", "0"), "Size"),
            etag=text(entry, "ETag").strip('"'), last_modified=text(entry, "LastModified"),
        ))
    prefixes = [decode(required(operation, answer, p, "Prefix"))
                for p in _all(root, "CommonPrefixes")]
    token = text(root, "NextContinuationToken") or None
    if text(root, "IsTruncated") != "true":
        token = None
    return Listing(objects, prefixes), token


def pending_uploads(operation: str, answer: Answer
                    ) -> tuple[list[PendingUpload], tuple[str, str] | None]:
    """One ListMultipartUploads page, and the (key, upload id) markers of the next one."""
    root = parse(operation, answer)
    uploads = [
        PendingUpload(required(operation, answer, u, "Key"),
                      required(operation, answer, u, "UploadId"), text(u, "Initiated"))
        for u in _all(root, "Upload")
    ]
    key_marker = text(root, "NextKeyMarker")
    if text(root, "IsTruncated") != "true" or not key_marker:
        return uploads, None
    return uploads, (key_marker, text(root, "NextUploadIdMarker"))


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
