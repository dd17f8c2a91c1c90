"""One file's upload, writer side: bytes in from the writer, sealed slices out, one object.

State machine (``FileUpload.state``)::

    OPEN ──finalize()──> FINALIZING ──> DONE
      │                       │
      └──── any failure ──────┴──> FAILED    (multipart upload aborted; sticky EIO)
      └──── abort() ─────────────> ABORTED   (mount stopped while the file was open)

While OPEN, writes fill the file's current ring slot; a full slot is sealed and queued for
upload, and the file takes another slot (waiting if the ring is full: backpressure). The first
sealed slot creates the multipart upload; a file that never fills a slot is sent as one
PutObject when it is finalized. Nothing is visible in the bucket before finalize succeeds.

Three jobs live elsewhere: where a write lands (appends, writes into any slice, resizes,
retention, the file hash in file order) is slices.py's :class:`FileSlices`; what is said to the
store is multipart.py's :class:`MultipartSession` (and how the object is made at close,
commit.py's :class:`Commit`); the slots themselves are ring.py's. This module is the state
machine over them. A write that :class:`FileSlices` refuses (EINVAL: it goes back into bytes
already sent, and the file's late patches are not kept) fails the upload and aborts it, so no
object that differs from what the writer wrote can ever appear. A file whose running hash is
not its content (patched after hashing, or made of copied parts) is hashed at close by reading
the finished object back from the store (logged, counted in :attr:`FileUpload.bytes_fetched`).

A file may start from an existing object (``base``, overlay.py): the slices no write touched
are copied server-side or sent as zeros at close; the others went through the ring; never
written nor resized, nothing is sent (:attr:`FileUpload.unchanged`). Each file keeps its cost:
:attr:`FileUpload.bytes_sent`, :attr:`~FileUpload.bytes_copied`,
:attr:`~FileUpload.bytes_fetched`, said in its finish log line and shown by ``chute status``. A file
unlinked while open (:meth:`FileUpload.unlinked`) drops its upload at once; later writes go
nowhere and its last close makes no object (POSIX: the data lives until the last close).

Errors are sticky: once the upload failed, every later write, fsync and finalize of the file
raises :class:`UploadFailed` (EIO), so ``cp`` learns of it at its next write or at close.

Collaborators are passed in (the ring, the session, the mount's counters, and two callbacks to
whoever runs the upload workers); this module imports nothing that imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import trio

from .commit import Commit
from .config import UploaderConfig
from .errors import ChuteError, ObjectExists, UploadFailed
from .late_patches import LatePatches
from .multipart import MultipartSession
from .overlay import Base
from .quick_lock import QuickLock
from .recompose import Recomposer
from .ring import Ring, Slot
from .slices import FileSlices
from .statistics import UploadCounters
from .upload_status import FileUploadStatistics, UploadCost, UploadState

__all__ = ["FileUpload", "FileUploadStatistics", "UploadState"]

log = logging.getLogger(__name__)


class FileUpload:
    """The upload of one file opened for writing through the mount."""

    def __init__(self, key: str, path: str, metadata: Mapping[str, str] | None = None, *,
                 ring: Ring, session: MultipartSession, config: UploaderConfig,
                 counters: UploadCounters,
                 enqueue: Callable[[FileUpload, Slot], None],
                 on_finished: Callable[[FileUpload], None],
                 base: Base | None = None, late: LatePatches | None = None,
                 recomposer: Recomposer | None = None) -> None:
        """``enqueue(upload, slot)`` hands a sealed slot to the upload workers, which call
        :meth:`send_part`; ``on_finished(upload)`` is called once, at DONE, FAILED or
        ABORTED. ``base``: the existing object this file starts from (overlay.py);
        ``late``: the keeper of writes into slices already sent (late_patches.py; none:
        refused), with ``recomposer`` making an upload at a temporary key the object."""
        self.key = key
        self.path = path
        self.metadata = dict(metadata or {})
        """x-amz-meta-* for the object; read when Create/Put is sent, so it may change until."""
        self.state = UploadState.OPEN
        self.bytes_acked = 0
        """Bytes the store has acknowledged."""
        self.cost = UploadCost()
        """What making the object took: sent, copied server-side, read back."""
        self.parts_in_flight = 0
        self.started = trio.current_time()
        self.finished: float | None = None
        self.etag = ""
        self.xxh3_128 = ""
        self.error: BaseException | None = None
        self.writer_died = False
        """Dropped because its writer died with it open (not because the mount stopped)."""
        self._ring = ring
        self._session = session
        self._config = config
        self._counters = counters
        self._enqueue = enqueue
        self._on_finished = on_finished
        self._base = base
        self._late = late
        self._recomposer = recomposer if late is not None else None
        self._changed = False
        """Written or resized since the open."""
        self.unchanged = False
        """Finished without a change although it started from an existing object: nothing
        was sent, the object is the one it was (its ETag is kept)."""
        self._unlinked = False
        self._unlinked_size = 0
        self._slices = FileSlices(ring, path, self._sealed,
                                  base_size=base.size if base is not None else 0,
                                  fetch=self._fetch_base, late=late)
        self._commit = Commit(path, key, slices=self._slices, session=session, ring=ring,
                              config=config, counters=counters, cost=self.cost, base=base,
                              late=late, recomposer=self._recomposer, create=self._create,
                              settle=self._settle, failed=lambda: self.error is not None)
        self._lock = QuickLock()  # taken at every write and close: no yield when free
        self._idle = trio.Event()
        self._idle.set()

    @property
    def size(self) -> int:
        """The file's current length (as written, or as resized)."""
        if self._unlinked:
            return self._unlinked_size
        return self._slices.size

    @property
    def bytes_sent(self) -> int:
        """Bytes of parts (or of the PutObject) uploaded from this machine."""
        return self.cost.sent

    @property
    def bytes_copied(self) -> int:
        """Bytes copied server-side (from the object it replaces, or its temporary one)."""
        return self.cost.copied

    @property
    def bytes_fetched(self) -> int:
        """Bytes read from the store: the base's old bytes (ranged GETs), and objects read
        back (a temporary one; the finished one to hash it)."""
        return self._slices.bytes_fetched + self.cost.fetched

    @property
    def unlinked_while_open(self) -> bool:
        """Its name was removed while open: the upload is dropped (see :meth:`unlinked`)."""
        return self._unlinked

    @property
    def metadata_sent(self) -> dict[str, str]:
        """The metadata the object was actually created with (once Create/Put was sent)."""
        return self._session.metadata_sent

    async def _fetch_base(self, first: int, last: int) -> bytes:
        """Bytes ``first..last`` of the base, exactly the version the open saw (412 else)."""
        assert self._base is not None
        data = await self._session.fetch_range(self._base.key, first, last, self._base.etag)
        self._counters.bytes_fetched += len(data)
        return data

    # -- writer side ------------------------------------------------------------------

    async def write(self, offset: int, data: bytes | memoryview) -> int:
        """Accept ``data`` at ``offset``; may wait for a ring slot (backpressure)."""
        async with self._lock:
            if self._unlinked:  # the data of an unlinked file goes nowhere
                self._unlinked_size = max(self._unlinked_size, offset + len(data))
                return len(data)
            await self._check_writable()
            self._changed = True
            slices = self._slices
            before = slices.size
            try:
                await slices.write(offset, data)
            except ChuteError as exc:
                await self._fail(exc)
                raise
            except Exception as exc:
                await self._fail(exc)
                raise UploadFailed(str(exc)) from exc
            finally:
                self._counters.bytes_written += max(slices.size - before, 0)
            return len(data)

    async def truncate(self, size: int) -> None:
        """Change the file's length (ftruncate, ``truncate -s``): growth is zeros that are
        never streamed; a shrink drops what lies past the end. A change the file cannot take
        (a shrink into a slice already sent, outside temp-key mode; a size over the part
        limit) raises its ChuteError and leaves the upload as it was."""
        async with self._lock:
            if self._unlinked:
                self._unlinked_size = size
                return
            await self._check_writable()
            if size == self._slices.size:
                return
            self._changed = True
            if await self._slices.truncate(size):
                await self._idle.wait()  # parts cut off settle before one is sent again

    async def _check_writable(self) -> None:
        """Raise UploadFailed if the upload failed (aborting it, once) or is no longer OPEN."""
        if self.error is not None:
            if self.state in (UploadState.OPEN, UploadState.FINALIZING):
                await self._fail(self.error)
            raise UploadFailed(f"upload of {self.path} failed: {self.error}")
        if self.state is not UploadState.OPEN:
            raise UploadFailed(f"{self.path} is already {self.state.value}; no more writes")

    async def unlinked(self) -> None:
        """The file's name was removed while it is open: drop the upload now (its slots,
        its multipart upload); later writes go nowhere and the last close makes nothing."""
        async with self._lock:
            if self.state is not UploadState.OPEN or self._unlinked:
                return
            log.info("%s: unlinked while open for writing: upload dropped (%d bytes), no "
                     "object will be made; writes through open descriptors go nowhere",
                     self.path, self.size)
            self._unlinked_size = self.size
            self._unlinked = True
            await self._discard()

    def _sealed(self, slot: Slot) -> None:
        """FileSlices sealed ``slot``: it goes to the upload workers."""
        self.parts_in_flight += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._enqueue(self, slot)

    # -- upload worker side -----------------------------------------------------------

    async def send_part(self, slot: Slot) -> None:
        """Send one sealed slot as a part; always releases the slot (run by a worker)."""
        try:
            if self.error is not None or self._unlinked or self.state in (
                    UploadState.FAILED, UploadState.ABORTED):
                return
            self._ring.start_upload(slot)
            await self._create()
            await self._session.upload_part(slot.part_number, slot.data)
            self.bytes_acked += slot.length
            self.cost.sent += slot.length
            self._counters.bytes_uploaded += slot.length
            self._counters.parts += 1
        except Exception as exc:
            self._record_failure(exc)
        finally:
            self._ring.release(slot)
            self.parts_in_flight -= 1
            if self.parts_in_flight == 0:
                self._idle.set()

    async def _create(self) -> None:
        """The multipart upload, created at the first call: at a temporary key if its late
        patches want one (recompose.py decides, at this first Create)."""
        if self._recomposer is not None and self._late is not None:
            self._recomposer.prepare(self._session, self._late)
        await self._session.create(self.metadata)

    def _record_failure(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
            log.error("%s: upload failed: %s", self.path, exc)

    # -- completion -------------------------------------------------------------------

    async def _settle(self) -> None:
        """Every part sent is acknowledged; raise the upload's error if it failed."""
        await self._idle.wait()
        if self.error is not None:
            raise self.error

    async def wait_acknowledged(self) -> None:
        """fsync: wait until every sealed slice is acknowledged; report a failure."""
        await self._idle.wait()
        async with self._lock:
            if self.error is not None:
                await self._check_writable()

    async def finalize(self) -> None:
        """Make the object exist, complete and exact, or raise UploadFailed (EIO).

        Idempotent: a DONE upload returns at once, a FAILED one raises again.
        """
        async with self._lock:
            if self.state is UploadState.DONE:
                return
            if self._unlinked:
                self.state = UploadState.ABORTED
                self.finished = trio.current_time()
                return
            await self._check_writable()
            if self._base is not None and not self._changed:
                self._keep_unchanged(self._base)
                return
            self.state = UploadState.FINALIZING
            try:
                if self._slices.fits_one_object:
                    self.etag, self.xxh3_128 = await self._commit.put_whole(self.metadata)
                else:
                    self.etag, self.xxh3_128 = await self._commit.complete()
                self.bytes_acked = self.size
            except ObjectExists as exc:
                await self._fail(exc)
                raise
            except Exception as exc:
                await self._fail(exc)
                raise UploadFailed(f"upload of {self.path} failed: {exc}") from exc
            if self._late is not None:
                self._late.release()
            self.state = UploadState.DONE
            self.finished = trio.current_time()
            self._log_finished()
            self._on_finished(self)

    def _log_finished(self) -> None:
        assert self.finished is not None
        elapsed = max(self.finished - self.started, 1e-9)
        cost = ""
        if self.bytes_copied or self.bytes_fetched:  # the cost of an in-place change
            cost = (f"; {self.bytes_sent} bytes sent, {self.bytes_copied} copied server-side, "
                    f"{self.bytes_fetched} re-read")
        log.info(
            "uploaded %s: %d bytes, %d parts, %.2f s, %.1f MB/s, %d retries, xxh3-128 %s%s",
            self.key, self.size, max(self._slices.count, 1), elapsed,
            self.size / elapsed / 1e6, sum(self._session.retries.values()), self.xxh3_128,
            cost,
        )

    def _keep_unchanged(self, base: Base) -> None:
        """An existing object opened for writing and closed unchanged: nothing to send."""
        self._slices.release_all()
        self.unchanged = True
        self.etag = base.etag
        self.state = UploadState.DONE
        self.finished = trio.current_time()
        self._on_finished(self)

    # -- failure ----------------------------------------------------------------------

    async def _fail(self, exc: BaseException) -> None:
        """Make the failure sticky, free this file's slots, abort the multipart upload."""
        self._record_failure(exc)
        self.state = UploadState.FAILED
        self._counters.failures += 1
        await self._discard()

    async def abort(self, why: str, *, writer_died: bool = False) -> None:
        """Drop the file, leave nothing behind: the mount is stopping with it still open, or
        (``writer_died``) its last close came from a writer dying with a failure, and
        committing would make a truncated object (or replace a good one with it)."""
        if self.state in (UploadState.DONE, UploadState.FAILED, UploadState.ABORTED):
            return
        if self._unlinked:  # already dropped
            self.state = UploadState.ABORTED
            return
        if writer_died:
            log.error("%r: its writer died with the file open (%s): upload dropped, %d bytes "
                      "discarded; no object was made, and an object it was to replace is "
                      "untouched (--commit-partial keeps what a dying writer wrote)",
                      self.path, why, self.size)
        else:
            log.warning("%s: abandoning upload (%s): %d bytes received, %d acknowledged; "
                        "nothing is left in the bucket", self.path, why, self.size,
                        self.bytes_acked)
        self.writer_died = writer_died
        self.state = UploadState.ABORTED
        if self.error is None:
            self.error = UploadFailed(f"upload abandoned: {why}")
        await self._discard()

    async def _discard(self) -> None:
        self._slices.release_all()
        if self._late is not None:
            self._late.release()
        with trio.CancelScope(shield=True):
            if self._session.upload_id is not None:
                with trio.move_on_after(self._config.stall_timeout):
                    await self._idle.wait()
            await self._session.abort()
        self._on_finished(self)

    # -- status -----------------------------------------------------------------------

    def statistics(self) -> FileUploadStatistics:
        now = self.finished or trio.current_time()
        elapsed = max(now - self.started, 1e-9)
        session = self._session.statistics()
        return FileUploadStatistics(
            path=self.path, key=self.key, state=self.state, bytes_received=self.size,
            bytes_acknowledged=self.bytes_acked, parts_in_flight=self.parts_in_flight,
            retries=sum(session.retries.values()), seconds=elapsed,
            throughput_bps=self.bytes_acked / elapsed,
            error=str(self.error) if self.error else None,
            parts_acknowledged=session.parts_acknowledged, retries_by_reason=session.retries,
            bytes_sent=self.bytes_sent, bytes_copied=self.bytes_copied,
            bytes_fetched=self.bytes_fetched,
        )
