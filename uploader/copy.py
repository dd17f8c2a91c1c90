"""Server-side copy of an object too large for one CopyObject: a multipart upload of ranges.

S3 copies at most 5 GiB with one CopyObject. A larger object (renamed through the mount, or
its metadata changed) is copied as a multipart upload whose parts are UploadPartCopy ranges of
the source, at most ``COPY_PARTS_IN_FLIGHT`` at a time. No byte passes through chute.

Invariants: nothing appears at the destination unless the whole copy completed (a failure
aborts the upload, shielded from cancellation); with ``if_match_etag`` every part is copied
from that exact version of the source (a source replaced meanwhile fails the copy with 412);
the source's tags, which a multipart upload does not take over, are copied after Complete.
"""

from __future__ import annotations

import contextlib
import logging

import trio

from .bounded import each_bounded
from .s3 import S3Client
from .sizes import MAX_PART_SIZE, MAX_PARTS, GiB, format_size

log = logging.getLogger(__name__)

MAX_COPY_BYTES = MAX_PART_SIZE
"""S3's limit for one CopyObject; larger objects are copied in parts (UploadPartCopy)."""
COPY_PART_BYTES = 1 * GiB
"""Part size of a copy in parts: few requests, each well under S3's 5 GiB part limit."""
COPY_PARTS_IN_FLIGHT = 4


async def copy_in_parts(client: S3Client, source_key: str, dest_key: str, size: int,
                        metadata_headers: dict[str, str], *, if_match_etag: str | None = None,
                        part_size: int = COPY_PART_BYTES) -> str:
    """Copy an object too large for one CopyObject (> 5 GiB) as a multipart upload of
    UploadPartCopy ranges; returns the new ETag. A multipart upload does not take the
    source's tags as CopyObject does, so they are copied after Complete. On failure the
    upload is aborted and nothing appears at ``dest_key``.
    """
    part_size = max(part_size, -(-size // MAX_PARTS))
    ranges = [(number, start, min(start + part_size, size) - 1)
              for number, start in enumerate(range(0, size, part_size), 1)]
    tags = await client.get_tags(source_key)
    upload_id = await client.create_multipart_upload(dest_key, metadata_headers)
    etags: dict[int, str] = {}

    async def copy_part(part: tuple[int, int, int]) -> None:
        number, first, last = part
        etags[number] = await client.upload_part_copy(
            source_key, dest_key, upload_id, number, first, last, if_match_etag=if_match_etag)

    try:
        await each_bounded(ranges, copy_part, COPY_PARTS_IN_FLIGHT)
        etag = await client.complete_multipart_upload(
            dest_key, upload_id, [(n, etags[n], {}) for n in sorted(etags)])
    except BaseException:
        with trio.CancelScope(shield=True), contextlib.suppress(Exception):
            await client.abort_multipart_upload(dest_key, upload_id)
        raise
    log.info("copied %s to %s in %d parts of %s", source_key, dest_key, len(ranges),
             format_size(part_size))
    if tags:
        await client.put_tags(dest_key, tags)
    return etag
