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

Three jobs live elsewhere: where a write lands (sequential writes, gap zero-fill, header
patches into retained slices, the file hash in file order) is slices.py's :class:`FileSlices`;
what is said to the store is multipart.py's :class:`MultipartSession`; the slots themselves
are ring.py's. This module is the state machine over them. A write that :class:`FileSlices`
refuses (EINVAL: it goes back into bytes already sent) fails the upload and aborts it, so no
object that differs from what the writer wrote can ever appear. A file whose retained first
slice was patched after it was hashed is hashed again at close by reading the finished object
back from the store (logged).

A file may continue an existing object (``prefix``, prefix.py): its old whole slices are
copied server-side as the first parts at close, the rest is fetched into the first ring slice
at the first write; never written, nothing is sent (:attr:`FileUpload.unchanged`). A file
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

from .config import UploaderConfig
from .errors import ChuteError, ObjectExists, UploadFailed
from .multipart import MultipartSession
from .prefix import Prefix, plan
from .ring import Ring, Slot
from .slices import FileSlices
from .statistics import UploadCounters
from .upload_status import FileUploadStatistics, UploadState

__all__ = ["FileUpload", "FileUploadStatistics", "UploadState"]

log = logging.getLogger(__name__)


class FileUpload:
    """The upload of one file opened for writing through the mount."""

    def __init__(self, key: str, path: str, metadata: Mapping[str, str] | None = None, *,
                 ring: Ring, session: MultipartSession, config: UploaderConfig,
                 counters: UploadCounters,
                 enqueue: Callable[[FileUpload, Slot], None],
                 on_finished: Callable[[FileUpload], None],
                 prefix: Prefix | None = None) -> None:
        """``enqueue(upload, slot)`` hands a sealed slot to the upload workers, which call
        :meth:`send_part`; ``on_finished(upload)`` is called once, at DONE, FAILED or
        ABORTED. ``prefix``: the existing object this file continues (prefix.py)."""
        self.key = key
        self.path = path
        self.metadata = dict(metadata or {})
        """x-amz-meta-* for the object; read when Create/Put is sent, so it may change until."""
        self.state = UploadState.OPEN
        self.bytes_acked = 0
        """Bytes the store has acknowledged."""
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
        self._plan = plan(prefix, config.slice_size)
        self._tail_pending = self._plan.has_tail
        """The old object's last bytes are still to be fetched into the first slice."""
        self._written = False
        self.unchanged = False
        """Finished without a write although it continued an existing object: nothing was
        sent, the object is the one it was (its ETag is kept)."""
        self._unlinked = False
        self._unlinked_size = 0
        self._slices = FileSlices(ring, path, self._sealed, start=self._plan.copied,
                                  first_part=self._plan.first_part)
        self._lock = trio.Lock()
        self._idle = trio.Event()
        self._idle.set()

    @property
    def size(self) -> int:
        """Bytes received from the writer (the file's current length)."""
        if self._unlinked:
            return self._unlinked_size
        if self._tail_pending:
            return self._plan.size
        return self._slices.size

    @property
    def unlinked_while_open(self) -> bool:
        """Its name was removed while open: the upload is dropped (see :meth:`unlinked`)."""
        return self._unlinked

    @property
    def metadata_sent(self) -> dict[str, str]:
        """The metadata the object was actually created with (once Create/Put was sent)."""
        return self._session.metadata_sent

    # -- writer side ------------------------------------------------------------------

    async def write(self, offset: int, data: bytes | memoryview) -> int:
        """Accept ``data`` at ``offset``; may wait for a ring slot (backpressure)."""
        async with self._lock:
            if self._unlinked:  # the data of an unlinked file goes nowhere
                self._unlinked_size = max(self._unlinked_size, offset + len(data))
                return len(data)
            await self._check_writable()
            self._written = True
            slices = self._slices
            before = slices.size
            try:
                await self._load_prefix()
                if offset < slices.size:
                    slices.patch(offset, data)
                    return len(data)
                if offset > slices.size:
                    await slices.zero_fill(offset - slices.size)
                await slices.append(memoryview(data))
            except ChuteError as exc:
                await self._fail(exc)
                raise
            except Exception as exc:
                await self._fail(exc)
                raise UploadFailed(str(exc)) from exc
            finally:
                self._counters.bytes_written += max(slices.size - before, 0)
            return len(data)

    async def _check_writable(self) -> None:
        """Raise UploadFailed if the upload failed (aborting it, once) or is no longer OPEN."""
        if self.error is not None:
            if self.state in (UploadState.OPEN, UploadState.FINALIZING):
                await self._fail(self.error)
            raise UploadFailed(f"upload of {self.path} failed: {self.error}")
        if self.state is not UploadState.OPEN:
            raise UploadFailed(f"{self.path} is already {self.state.value}; no more writes")

    async def _load_prefix(self) -> None:
        """Fetch the old object's bytes that are not copied server-side (less than one slice)
        into the first ring slice, pinned to the ETag the open saw (prefix.py)."""
        if not self._tail_pending:
            return
        self._tail_pending = False
        data = await self._plan.fetch_tail(self._session)
        await self._slices.append(memoryview(data))
        self._counters.bytes_written -= len(data)  # counted as received by write()

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
            await self._session.create(self.metadata)
            await self._session.upload_part(slot.part_number, slot.data)
            self.bytes_acked += slot.length
            self._counters.bytes_uploaded += slot.length
            self._counters.parts += 1
        except Exception as exc:
            self._record_failure(exc)
        finally:
            self._ring.release(slot)
            self.parts_in_flight -= 1
            if self.parts_in_flight == 0:
                self._idle.set()

    def _record_failure(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
            log.error("%s: upload failed: %s", self.path, exc)

    # -- completion -------------------------------------------------------------------

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
            if self._plan.source is not None and not self._written:
                self._keep_unchanged(self._plan.source)
                return
            self.state = UploadState.FINALIZING
            try:
                await self._load_prefix()
                if self._slices.fits_one_object and not self._plan.copy_ranges:
                    await self._put_whole()
                else:
                    await self._complete()
            except ObjectExists as exc:
                await self._fail(exc)
                raise
            except Exception as exc:
                await self._fail(exc)
                raise UploadFailed(f"upload of {self.path} failed: {exc}") from exc
            self.state = UploadState.DONE
            self.finished = trio.current_time()
            elapsed = max(self.finished - self.started, 1e-9)
            log.info(
                "uploaded %s: %d bytes, %d parts, %.2f s, %.1f MB/s, %d retries, xxh3-128 %s",
                self.key, self.size, max(self._slices.parts, 1), elapsed,
                self.size / elapsed / 1e6, sum(self._session.retries.values()), self.xxh3_128,
            )
            self._on_finished(self)

    def _keep_unchanged(self, prefix: Prefix) -> None:
        """An existing object opened for writing and closed unwritten: nothing to send."""
        self._slices.release_all()
        self.unchanged = True
        self.etag = prefix.etag
        self.state = UploadState.DONE
        self.finished = trio.current_time()
        self._on_finished(self)

    async def _put_whole(self) -> None:
        """The file fits one slice (in the slot filling, or the retained first slice)."""
        slot, self.xxh3_128 = self._slices.take_whole()
        try:
            body = slot.data if slot is not None else b""
            self.etag = await self._session.put(body, self.metadata, self.xxh3_128)
        finally:
            if slot is not None:
                self._ring.release(slot)
        self.bytes_acked = self.size
        self._counters.bytes_uploaded += self.size

    async def _complete(self) -> None:
        xxh3_128 = self._slices.seal_all()
        if self._plan.copy_ranges:
            await self._session.create(self.metadata)
            await self._plan.copy_parts(self._session, lambda: self.error is not None)
        await self._idle.wait()
        if self.error is not None:
            raise self.error
        self.xxh3_128 = xxh3_128
        self.etag = await self._session.complete(self.size)
        try:
            if self._plan.copy_ranges:
                log.info("%s: its first %d bytes were copied server-side from the object it "
                         "continues; reading the object back to record its xxh3-128",
                         self.path, self._plan.copied)
            elif self._slices.rehash:
                log.info("%s: its first slice was patched after it was hashed; reading the "
                         "object back to record its xxh3-128", self.path)
            if self._slices.rehash or self._plan.copy_ranges:
                self.xxh3_128 = await self._session.read_back_hash(
                    self.size, self._config.slice_size)
            await self._session.tag(self.xxh3_128)
        except Exception as exc:
            log.warning("%s: object complete, but storing its xxh3-128 tag failed: %s",
                        self.path, exc)

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
        )
