"""The multipart-upload calls of :class:`~chute.uploader.s3.S3Client` (a mixin it inherits).

Create, UploadPart, Complete, Abort and ListMultipartUploads: the calls whose answers carry an
upload's identity (its upload id, its parts' ETags). Each goes through the client's one
``request`` (signing, retry policy, error answers), so the invariants of s3.py hold here too:
every part and every answer is checked (s3_answers.py) before its ETag is trusted, a 200
Complete with an <Error> body is an error, and an Abort of an upload already gone counts as
done. This module holds no state and imports nothing that imports it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from . import s3_answers as answers
from . import s3_wire as wire
from .errors import StoreError
from .retry import RetryPolicy, RetryReason
from .s3_wire import Answer, PendingUpload

COMPLETE_READ_TIMEOUT = 120.0
"""Silence allowed while the store answers Complete or a copy, per socket read.

Completing a large upload or copying 5 GiB may take minutes, but AWS sends whitespace every
few seconds meanwhile, and each byte restarts this clock; SeaweedFS answers Complete in well
under a second. So two minutes of silence means a store that took the request and hung: the
attempt is cancelled and retried like any stall, and a close() waits at most the retry budget
plus this, not ten minutes per attempt."""


class MultipartCalls:
    """S3's multipart-upload calls, over ``self.request`` (provided by S3Client)."""

    request: Callable[..., Awaitable[Answer]]

    async def list_multipart_uploads(self, prefix: str) -> list[PendingUpload]:
        uploads: list[PendingUpload] = []
        key_marker: str | None = None
        id_marker: str | None = None
        while True:
            answer = await self.request(
                "ListMultipartUploads", "GET", query={
                    "uploads": "", "prefix": prefix, "key-marker": key_marker,
                    "upload-id-marker": id_marker or None, "max-uploads": wire.MAX_KEYS,
                }, max_body=wire.XML_BODY_MAX,
            )
            page, markers = answers.pending_uploads("ListMultipartUploads", answer,
                                                    wire.MAX_KEYS, (key_marker, id_marker))
            uploads += page
            if markers is None:
                return uploads
            key_marker, id_marker = markers

    async def create_multipart_upload(
        self, key: str, headers: Mapping[str, str],
        on_retry: Callable[[RetryReason], object] | None = None,
    ) -> str:
        answer = await self.request(
            "CreateMultipartUpload", "POST", key, query="uploads=", headers=headers,
            on_retry=on_retry, max_body=wire.XML_BODY_MAX,
        )
        return answers.upload_id("CreateMultipartUpload", answer)

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, body: memoryview,
        headers: Mapping[str, str], *, progress: Callable[[int], object] | None = None,
        on_retry: Callable[[RetryReason], object] | None = None,
    ) -> str:
        answer = await self.request(
            "UploadPart", "PUT", key,
            query={"partNumber": part_number, "uploadId": upload_id},
            headers=headers, body=body, sign_payload=False, progress=progress,
            on_retry=on_retry,
        )
        return answers.commit_etag("UploadPart", answer, answers.checksum_sent(headers))

    async def complete_multipart_upload(
        self, key: str, upload_id: str, parts: list[tuple[int, str, Mapping[str, str]]],
        on_retry: Callable[[RetryReason], object] | None = None, *,
        if_none_match: bool = False,
    ) -> str:
        """Complete with ``parts`` = [(number, etag, {ChecksumCRC32C: ...})] in ascending order.

        A 200 answer may still carry an <Error> body (S3 sends it after whitespace keep-alives
        on long completes), so the body is always parsed. ``if_none_match`` makes the store
        refuse (412 PreconditionFailed) if the key exists by then: a no-clobber create.
        """
        answer = await self.request(
            "CompleteMultipartUpload", "POST", key, query={"uploadId": upload_id},
            body=wire.complete_body(parts),
            headers={"If-None-Match": "*"} if if_none_match else None,
            read_timeout=COMPLETE_READ_TIMEOUT, on_retry=on_retry, max_body=wire.XML_BODY_MAX,
        )
        etag = answers.result_etag("CompleteMultipartUpload", answer,
                                   "CompleteMultipartUploadResult")
        answers.check_completed_key("CompleteMultipartUpload", answer, key)
        return etag

    async def abort_multipart_upload(self, key: str, upload_id: str, *,
                                     policy: RetryPolicy | None = None) -> None:
        """Abort; an upload that is already gone counts as aborted."""
        try:
            await self.request(
                "AbortMultipartUpload", "DELETE", key, query={"uploadId": upload_id},
                policy=policy,
            )
        except StoreError as exc:
            if exc.code != "NoSuchUpload" and exc.status != 404:
                raise
