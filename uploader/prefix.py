"""A file upload that starts from an existing object: appends, and reopens without O_TRUNC.

S3 cannot append to an object. A file opened for writing over an existing object without
truncating it (``>>``, O_APPEND, an O_RDWR reopen whose writes start at the end) becomes a new
multipart upload to the same key whose first parts are the old object's bytes:

- its whole slices, ``[0, copied)``, are server-side copies (UploadPartCopy), each range a
  whole number of slices (so every one is at least 5 MiB, S3's rule for a part that is not the
  last: sizes.py) and at most ``COPY_PART_BYTES``; no byte of them passes through chute;
- the rest of it, ``[copied, size)``, shorter than one slice, is fetched with one ranged GET
  into the file's first ring slice, which the new bytes then continue as for any file.

Every request that reads the old object is pinned to the ETag the open saw
(``x-amz-copy-source-if-match`` on the copies, ``If-Match`` on the GET): if the object was
replaced meanwhile they fail (412) and so does the upload, so the new object is never made of
two versions. The old object stays visible and untouched until the Complete (or PutObject)
replaces it; a failure, an abort or a dying writer leave it as it was.

This module decides the layout (:func:`plan`); the file upload (file_upload.py) carries it
out with its session (multipart.py) and slices (slices.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .copy import COPY_PART_BYTES
from .multipart import MultipartSession
from .sizes import MIN_PART_SIZE


@dataclass(frozen=True)
class Prefix:
    """The existing object a file upload starts from: its key, length and ETag."""

    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class PrefixPlan:
    source: Prefix | None
    """The object continued; None for a new file (then the plan is empty)."""
    copy_ranges: tuple[tuple[int, int, int], ...]
    """(part number, first byte, last byte inclusive) of each UploadPartCopy, in order."""
    copied: int
    """Bytes ``[0, copied)`` are copied server-side; the file's first ring slice starts here."""
    size: int
    """The old object's length; ``[copied, size)`` is fetched into the first ring slice."""

    @property
    def first_part(self) -> int:
        """Part number of the file's first ring slice."""
        return len(self.copy_ranges) + 1

    @property
    def has_tail(self) -> bool:
        return self.size > self.copied

    async def fetch_tail(self, session: MultipartSession) -> bytes:
        """The old object's bytes that are not copied, of the version seen at open."""
        assert self.source is not None and self.has_tail
        return await session.fetch_range(self.source.key, self.copied, self.size - 1,
                                         self.source.etag)

    async def copy_parts(self, session: MultipartSession, failed: Callable[[], bool]
                         ) -> None:
        """UploadPartCopy of every copied range (the session's upload created), in order,
        stopping once ``failed()``."""
        assert self.source is not None
        for number, first, last in self.copy_ranges:
            if failed():
                return
            await session.copy_part(number, self.source.key, first, last, self.source.etag)


def plan(source: Prefix | None, slice_size: int) -> PrefixPlan:
    """Copy the old object's whole slices, fetch what is left (less than one slice).

    An object smaller than ``MIN_PART_SIZE`` is fetched whole (it could not be a part on its
    own); ``slice_size`` is at least ``MIN_PART_SIZE`` (sizes.check_slice_size)."""
    assert slice_size >= MIN_PART_SIZE
    size = source.size if source is not None else 0
    copied = size - size % slice_size if size >= MIN_PART_SIZE else 0
    step = slice_size * max(1, COPY_PART_BYTES // slice_size)
    ranges = tuple((number, first, min(first + step, copied) - 1)
                   for number, first in enumerate(range(0, copied, step), 1))
    return PrefixPlan(source, ranges, copied, size)
