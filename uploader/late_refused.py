"""The late-patch port of a file upload, and its keeper when late patches are refused.

A *late patch* is a write into a slice already sealed for upload (slices.py). Whether it can
be kept is decided by the file's keeper: late_patches.py's ``LatePatches`` (temp-key mode,
``--patch-back``) or, for an upload that cannot keep them, :class:`NoLatePatches` here,
which refuses every one as chute always did (EINVAL, the upload aborted, nothing partial
visible). :class:`LatePatchesLike` is what slices.py and file_upload.py call, so neither
depends on how patches are kept.
"""

from __future__ import annotations

import logging
from typing import Protocol

from .errors import BackwardWrite, TruncateRefused

log = logging.getLogger(__name__)


class LatePatchesLike(Protocol):
    """What a file needs of the keeper of its late patches (writes into SENT slices)."""

    enabled: bool
    """Temp-key mode: late patches are kept and applied at close."""

    @property
    def pending(self) -> bool:
        """Patches are held (the object must be recomposed at close)."""

    def note_backward_write(self) -> None:
        """A write landed back in an earlier, still retained slice (a hint: more may come)."""

    def add(self, offset: int, data: bytes | memoryview) -> None:
        """Keep ``data`` at ``offset`` (inside SENT slices), or raise (BackwardWrite, a
        budget error)."""

    def truncate(self, size: int, *, into_sent: bool) -> None:
        """The file was cut to ``size`` (``into_sent``: inside a SENT slice); raise if that
        cannot be kept (TruncateRefused: EOPNOTSUPP)."""

    def release(self) -> None:
        """The upload ended: give back what is held. Idempotent."""


class NoLatePatches:
    """Late patches refused: a write into bytes already sent is EINVAL (today's rule)."""

    enabled = False
    pending = False

    def __init__(self, path: str) -> None:
        self.path = path

    def add(self, offset: int, data: bytes | memoryview) -> None:
        log.error(
            "%s: write at offset %d..%d goes back into bytes already sent to the store (only "
            "the first and the two latest written slices are kept while the ring has room); "
            "this upload was not made at a temporary key (--patch-back): EINVAL, upload "
            "aborted", self.path, offset, offset + len(data))
        raise BackwardWrite(f"backward write at {offset} into sent data of {self.path}")

    def note_backward_write(self) -> None:
        pass

    def truncate(self, size: int, *, into_sent: bool) -> None:
        if not into_sent:
            return
        log.error("%s: cannot cut the file to %d bytes: that slice was already sent to the "
                  "store and this upload was not made at a temporary key (--patch-back)",
                  self.path, size)
        raise TruncateRefused(f"truncate of {self.path} to {size} into sent data")

    def release(self) -> None:
        pass


