"""How one file's object is made at close: one PutObject, a Complete, or a recomposition.

At the last close a file upload (file_upload.py) hands its slices here:

- a file that fits one slice whose part was not sent is one PutObject of that slot (an
  untouched first slice is made from the base first; parts a shrink cut off are aborted with
  their upload);
- otherwise every materialized slice is sealed, the untouched slices are copied from the base
  or sent as zero parts (overlay.py decides, :func:`overlay.send_untouched` sends), and the
  upload is completed with exactly the parts of the file's slices, in order (parts a shrink
  cut off are left out);
- an upload made at a temporary key (late_patches.py's temp-key mode) is completed there and
  the object at the file's key composed from it with the late patches applied (recompose.py).

The file hash (xxh3-128 tag) is the streaming one when it holds, else the object is read back.
Whatever is sent, copied or read back is added to the file's :class:`UploadCost` and to the
mount's counters. Nothing here is visible before the Complete/Put succeeds; a failure raises
and the caller aborts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from . import overlay
from .config import UploaderConfig
from .hash_tag import tag_object
from .late_patches import LatePatches
from .multipart import MultipartSession
from .overlay import Base
from .recompose import Recomposer
from .ring import Ring
from .slices import FileSlices
from .statistics import UploadCounters
from .upload_status import UploadCost

log = logging.getLogger(__name__)


class Commit:
    """The close of one file upload (its collaborators are the file upload's)."""

    def __init__(self, path: str, key: str, *, slices: FileSlices, session: MultipartSession,
                 ring: Ring, config: UploaderConfig, counters: UploadCounters,
                 cost: UploadCost, base: Base | None, late: LatePatches | None,
                 recomposer: Recomposer | None, create: Callable[[], Awaitable[None]],
                 settle: Callable[[], Awaitable[None]], failed: Callable[[], bool]) -> None:
        """``create()``: the file's multipart upload (made at a temporary key if due);
        ``settle()``: wait until every part sent is acknowledged, raise the upload's error;
        ``failed()``: the upload has failed (stop sending)."""
        self.path, self.key = path, key
        self._slices, self._session, self._ring = slices, session, ring
        self._config, self._counters, self._cost = config, counters, cost
        self._base, self._late, self._recomposer = base, late, recomposer
        self._create, self._settle, self._failed = create, settle, failed

    def _sent(self, n: int) -> None:
        self._cost.sent += n
        self._counters.bytes_uploaded += n

    async def put_whole(self, metadata: Mapping[str, str]) -> tuple[str, str]:
        """The file fits one slice: one PutObject; its ETag and xxh3-128."""
        if self._slices.sealed:  # cut after parts were sent: their upload goes first
            await self._settle()
            await self._session.abort()
            self._session.key = self.key  # (it may have been made at a temporary key)
        slot, xxh3_128 = await self._slices.take_whole()
        try:
            body = slot.data if slot is not None else b""
            etag = await self._session.put(body, metadata, xxh3_128)
        finally:
            if slot is not None:
                self._ring.release(slot)
        self._sent(len(body))
        return etag, xxh3_128

    async def complete(self) -> tuple[str, str]:
        """Every slice sent, copied or zeroed, then Complete (or recomposition); its ETag and
        xxh3-128."""
        slices = self._slices
        xxh3_128 = await slices.seal_all()
        plan = overlay.plan_untouched(slices.size, slices.base_end, self._config.slice_size,
                                      slices.touched)
        await self._create()
        for k in plan.straddling:
            await slices.seal_straddling(k)
        copied, sent = await overlay.send_untouched(
            plan, self._base, self._session, self._ring, self._config.upload_concurrency,
            self._failed)
        self._cost.copied += copied
        self._counters.bytes_copied += copied
        self._sent(sent)
        self._counters.parts += len(plan.zeros)
        await self._settle()
        parts = {k + 1 for k in slices.sent} | plan.part_numbers
        if self._late is not None and self._late.temp_key is not None:
            return await self._recompose(parts, None if slices.rehash else xxh3_128)
        size = slices.size

        async def tag() -> None:  # beside the marker's deletion (MultipartSession.complete)
            nonlocal xxh3_128
            why = ("parts of it were copied server-side from the object it replaces"
                   if plan.copies else "it was not written in file order")
            xxh3_128, fetched = await tag_object(
                self._session, self.path, None if slices.rehash else xxh3_128, size=size,
                chunk=self._config.slice_size, why=why)
            self._cost.fetched += fetched
            self._counters.bytes_fetched += fetched

        etag = await self._session.complete(size, parts, alongside=tag)
        return etag, xxh3_128

    async def _recompose(self, parts: set[int], xxh3_128: str | None) -> tuple[str, str]:
        """The upload was made at a temporary key: complete it there, and compose the object
        at its key from it with the late patches applied (recompose.py)."""
        assert self._recomposer is not None and self._late is not None
        made = await self._recomposer.recompose(self._session, self._late, key=self.key,
                                                size=self._slices.size, xxh3_128=xxh3_128,
                                                numbers=parts)
        self._cost.copied += made.bytes_copied
        self._cost.fetched += made.bytes_fetched
        self._counters.bytes_copied += made.bytes_copied
        self._counters.bytes_fetched += made.bytes_fetched
        self._sent(made.bytes_sent)
        return made.etag, made.xxh3_128
