"""A small S3 client on trio, signing with botocore's SigV4: only the calls chute makes.

Why not boto3: it is synchronous, and running each part upload in a worker thread would put
a thread per part in flight and copy each part into a new bytes object. This client streams a
part straight out of its ring slot (a memoryview) and runs on the trio event loop.

Every call goes through :class:`RetryPolicy` (one policy for the whole mount). There are no
whole-request timeouts: the connect/read/write timeouts apply to each socket operation,
so they fire only when a transfer makes no progress for ``stall_timeout`` seconds. A slow
but moving upload is never cancelled. Bodies are sent in chunks that a link moving at 8 KiB/s
sends within the stall timeout (SLOWEST_MOVING_LINK), so each chunk's send is a progress tick.

Payloads are sent ``UNSIGNED-PAYLOAD``; their integrity is protected by a checksum header the
store verifies (``x-amz-checksum-crc32c`` or ``Content-MD5``, see checksums.py). Small XML
bodies (Complete) are signed in full.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from urllib.parse import quote

import httpx
import trio

from . import s3_answers as answers
from . import s3_wire as wire
from .bandwidth import Bandwidth, throttled
from .credentials import CredentialSource
from .errors import StoreError
from .object_options import ObjectOptions, is_own_key, is_temp_key
from .retry import RetryPolicy, RetryReason
from .s3_multipart import COMPLETE_READ_TIMEOUT, MultipartCalls
from .s3_signing import Signer
from .s3_transport import (
    SLOWEST_MOVING_LINK,
    Transport,
    chunks,
    exchange,
    real_transport,
    send_chunk_size,
)
from .s3_wire import Answer, Bucket, Listing, ObjectInfo, PendingUpload

__all__ = ["SLOWEST_MOVING_LINK", "Answer", "Bucket", "Listing", "ObjectInfo", "PendingUpload",
           "S3Client", "send_chunk_size"]

log = logging.getLogger(__name__)

RetryHook = Callable[[str, RetryReason, Exception], object]
"""``S3Client.on_retry``: told ``(operation, reason, error)`` about every retry."""


class S3Client(MultipartCalls):
    """The S3 calls chute needs, each retried by the mount's policy.

    Whatever goes wrong reaches the caller as a chute error (errors.py): StoreError for an
    error answer (MalformedResponse for one that cannot be read), StoreUnreachable or
    Stalled when no answer came, once the policy's retries are spent. The multipart calls
    (create, upload_part, complete, abort, list_multipart_uploads) are in s3_multipart.py.
    """

    def __init__(
        self,
        bucket: Bucket,
        credentials: CredentialSource,
        policy: RetryPolicy,
        *,
        stall_timeout: float = 30.0,
        max_connections: int = 16,
        on_retry: RetryHook | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.bucket = bucket
        self.credentials = credentials
        self.policy = policy
        self.stall_timeout = stall_timeout
        self._send_chunk = send_chunk_size(stall_timeout)
        self._signer = Signer(bucket.region)
        self.on_retry = on_retry
        """Told ``(operation, reason, error)`` about every retry (the mount's counters)."""
        self.on_request: Callable[[str, float, int | None], object] | None = None
        """Told ``(operation, seconds, HTTP status or None)`` after every attempt that got an
        answer or a transport error (the mount's latency histogram); not on cancellation."""
        # chute's own connection pool (s3_http.py, on h11), not httpx: an AsyncClient's layers
        # and httpx's transport (httpcore and its models) cost two thirds of the CPU of a small PUT,
        # measured (docs/performance.md, Small files). Tests inject an httpx transport (an
        # in-memory S3 on httpx.MockTransport, tests/support/memory_s3.py).
        self._http: Transport = (transport if transport is not None
                                 else real_transport(max_connections))
        self.object_options: ObjectOptions | None = None
        """The mount's upload options (object_options.py), added to every request's headers
        as that call needs them; None: none."""
        self.bandwidth: Bandwidth | None = None
        """--bwlimit: PutObject and UploadPart bodies go out through this token bucket."""

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- transport --------------------------------------------------------------------

    async def _send_once(
        self,
        operation: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | memoryview,
        *,
        sign_payload: bool,
        read_timeout: float | None,
        progress: Callable[[int], object] | None,
        max_body: int,
        into: memoryview | None = None,
    ) -> Answer:
        credentials = await self.credentials.get()
        send_headers = self._signer.headers(credentials, method, url, headers, body,
                                            sign_payload)
        send_headers["Content-Length"] = str(len(body))
        # Per socket operation, so only a stall trips it; waiting for a pooled connection
        # behind other slow transfers is not a stall.
        read_seconds = max(read_timeout or 0, self.stall_timeout)
        content: bytes | memoryview | AsyncIterator[memoryview]
        if self.bandwidth is not None and body and operation in ("PutObject", "UploadPart"):
            content = throttled(self.bandwidth, memoryview(body), self._send_chunk, progress)
        elif isinstance(body, memoryview) and len(body) > self._send_chunk:
            content = chunks(body, self._send_chunk, progress)
        else:
            content = body
        if method in ("GET", "HEAD", "DELETE") and not body:
            send_headers.pop("Content-Length")
            content = b""
        started = trio.current_time()
        try:
            response = await exchange(self._http, method, url, send_headers, content,
                                      stall_timeout=self.stall_timeout,
                                      read_timeout=read_seconds)
            try:
                body = await wire.read_body(operation, method, response, max_body, into)
            finally:
                await response.aclose()
        except Exception as exc:
            if self.on_request is not None:
                self.on_request(operation, trio.current_time() - started,
                                getattr(exc, "status", None))  # an answer too large: its status
            if isinstance(exc, httpx.HTTPError):
                raise wire.transport_failure(operation, exc, send_timeout=self.stall_timeout,
                                             read_timeout=read_seconds) from exc
            raise
        if self.on_request is not None:
            self.on_request(operation, trio.current_time() - started, response.status_code)
        answer = Answer(response.status_code, dict(response.headers.items()), body)
        if answer.status >= 300:
            raise answers.error_from_answer(operation, answer)
        return answer

    async def request(
        self,
        operation: str,
        method: str,
        key: str = "",
        *,
        query: Mapping[str, str | int | None] | str = "",
        headers: Mapping[str, str] | None = None,
        body: bytes | memoryview = b"",
        sign_payload: bool = True,
        read_timeout: float | None = None,
        progress: Callable[[int], object] | None = None,
        on_retry: Callable[[RetryReason], object] | None = None,
        policy: RetryPolicy | None = None,
        max_body: int = wire.SMALL_BODY_MAX,
        into: memoryview | None = None,
    ) -> Answer:
        """Send one S3 request, retried per the policy; raise StoreError on an error answer.

        At most ``max_body`` bytes of an answer are held (s3_wire.read_body); with ``into``,
        a successful answer's body is read into that buffer (each attempt from its start).

        ``on_retry(reason)`` is told about each retry of this request (besides the client's
        own ``on_retry`` hook), e.g. to note that an answer may have been lost.
        """
        query_string = query if isinstance(query, str) else wire.canonical_query(query)
        url = self.bucket.url(key, query_string)
        label = f"{operation} {key}" if key else operation
        if self.object_options is not None and key:
            headers = self.object_options.request_headers(
                operation, key, headers or {}, own=is_own_key(self.bucket.prefix, key),
                temporary=is_temp_key(self.bucket.prefix, key))

        def retried(reason: RetryReason, error: Exception) -> None:
            if on_retry is not None:
                on_retry(reason)
            if self.on_retry is not None:
                self.on_retry(operation, reason, error)

        return await (policy or self.policy).run(
            label,
            lambda: self._send_once(
                operation, method, url, headers or {}, body, sign_payload=sign_payload,
                read_timeout=read_timeout, progress=progress, max_body=max_body, into=into,
            ),
            on_retry=retried,
            on_credential_error=self.credentials.reload,
        )

    # -- bucket -----------------------------------------------------------------------

    async def head_bucket(self) -> None:
        await self.request("HeadBucket", "HEAD")

    async def list(
        self, prefix: str, *, delimiter: str | None = "/", max_keys: int = 1000,
        start_after: str | None = None,
    ) -> AsyncIterator[Listing]:
        """ListObjectsV2, one page at a time (pages follow continuation tokens).

        Asks for URL-encoded keys (``encoding-type=url``): a key may hold characters XML 1.0
        cannot carry. They are decoded if the store did encode them (s3_answers.listing).
        At most 1,000 keys a page (S3's own limit), and a page with more is refused.
        """
        max_keys = min(max_keys, wire.MAX_KEYS)
        token: str | None = None
        while True:
            answer = await self.request(
                "ListObjectsV2", "GET", query={
                    "list-type": 2, "prefix": prefix, "delimiter": delimiter,
                    "max-keys": max_keys, "continuation-token": token,
                    "start-after": start_after if token is None else None,
                    "encoding-type": "url",
                }, max_body=wire.XML_BODY_MAX,
            )
            page, token = answers.listing("ListObjectsV2", answer, prefix, max_keys, token)
            yield page
            if token is None:
                return

    # -- objects ----------------------------------------------------------------------

    async def head_object(self, key: str) -> ObjectInfo | None:
        """The object's size, ETag and user metadata, or None if there is no such key."""
        try:
            answer = await self.request("HeadObject", "HEAD", key)
        except StoreError as exc:
            if exc.status == 404:
                return None
            raise
        return answers.object_info(key, answer)

    async def get_range(self, key: str, first: int, last: int, *,
                        if_match: str | None = None,
                        into: memoryview | None = None) -> bytes | memoryview:
        """Bytes ``first..last`` (inclusive) of the object; a short answer is an error.

        ``if_match`` (an ETag) makes the store refuse with 412 PreconditionFailed, a
        StoreError, if the object is no longer that version: a reader never mixes two.
        ``into``: a buffer of exactly ``last - first + 1`` bytes the body is read into
        (read_buffers.py); the answer is then that buffer, not a new ``bytes``."""
        if into is not None and len(into) != last - first + 1:
            raise ValueError(f"a buffer of {len(into)} bytes for {last - first + 1}")
        headers = {"Range": f"bytes={first}-{last}"}
        if if_match:
            headers["If-Match"] = f'"{if_match}"'
        answer = await self.request("GetObject", "GET", key, headers=headers,
                                    max_body=last - first + 1, into=into)
        if len(answer.body) != last - first + 1:
            raise StoreError("GetObject", answer.status, "ShortRead",
                             f"asked {last - first + 1} bytes, got {len(answer.body)}")
        return answer.body

    async def put_object(
        self, key: str, body: memoryview | bytes, headers: Mapping[str, str],
        on_retry: Callable[[RetryReason], object] | None = None,
    ) -> str:
        answer = await self.request(
            "PutObject", "PUT", key, headers=headers, body=body, sign_payload=False,
            on_retry=on_retry,
        )
        return answers.commit_etag("PutObject", answer, answers.checksum_sent(headers))

    async def delete_object(self, key: str, *, policy: RetryPolicy | None = None) -> None:
        await self.request("DeleteObject", "DELETE", key, policy=policy)

    async def copy_object(
        self, source_key: str, dest_key: str, metadata_headers: Mapping[str, str] | None,
        *, if_match_etag: str | None = None,
    ) -> str:
        """Server-side copy of at most 5 GiB (S3's limit; beyond it see upload_part_copy).

        With ``metadata_headers`` (``x-amz-meta-*``) the destination gets exactly those
        (MetadataDirective=REPLACE); that is also how an object's metadata is changed in place,
        by copying it onto itself. With None it keeps the source's. Tags are copied either
        way. ``if_match_etag`` makes the store refuse (412) if the source changed meanwhile.
        A 200 answer may carry an <Error> body, so the body is always parsed. Returns the
        new object's ETag.
        """
        headers = self._copy_headers(source_key, if_match_etag)
        if metadata_headers is not None:
            headers["x-amz-metadata-directive"] = "REPLACE"
            headers.update(metadata_headers)
        answer = await self.request(
            "CopyObject", "PUT", dest_key, headers=headers, read_timeout=COMPLETE_READ_TIMEOUT,
            max_body=wire.XML_BODY_MAX,
        )
        return answers.result_etag("CopyObject", answer, "CopyObjectResult")

    async def upload_part_copy(
        self, source_key: str, dest_key: str, upload_id: str, part_number: int, first: int,
        last: int, *, if_match_etag: str | None = None,
    ) -> str:
        """Copy bytes ``first..last`` (inclusive) of ``source_key`` as one part; its ETag."""
        headers = self._copy_headers(source_key, if_match_etag)
        headers["x-amz-copy-source-range"] = f"bytes={first}-{last}"
        answer = await self.request(
            "UploadPartCopy", "PUT", dest_key,
            query={"partNumber": part_number, "uploadId": upload_id}, headers=headers,
            read_timeout=COMPLETE_READ_TIMEOUT, max_body=wire.XML_BODY_MAX,
        )
        return answers.result_etag("UploadPartCopy", answer, "CopyPartResult")

    def _copy_headers(self, source_key: str, if_match_etag: str | None) -> dict[str, str]:
        """x-amz-copy-source is ``/bucket/key``, URL-quoted like a path."""
        headers = {"x-amz-copy-source": "/" + quote(f"{self.bucket.bucket}/{source_key}",
                                                    safe="/~")}
        if if_match_etag:
            headers["x-amz-copy-source-if-match"] = f'"{if_match_etag}"'
        return headers

    async def put_tags(self, key: str, tags: Mapping[str, str]) -> None:
        """Replace the object's tag set with ``tags`` and the mount's extra tags (--tag)."""
        if self.object_options is not None and not is_own_key(self.bucket.prefix, key):
            tags = self.object_options.with_tags(tags)
        await self.request("PutObjectTagging", "PUT", key, query="tagging=",
                           body=wire.tagging_body(tags))

    async def get_tags(self, key: str) -> dict[str, str]:
        answer = await self.request("GetObjectTagging", "GET", key, query="tagging=",
                                    max_body=wire.XML_BODY_MAX)
        return answers.tags("GetObjectTagging", answer, key)
