"""The upload service of a mount: the ring, the S3 client, and the workers that send parts.

One :class:`Uploader` per mount. Its :meth:`run` owns a trio nursery with
``upload_concurrency`` worker tasks that take sealed slots from one FIFO queue and send them
as parts; so parts start in the order their slices were sealed, and with a concurrency of 1
each file's parts reach the store strictly in order (for stores that require it).

The queue is unbounded by construction but never long: only sealed slots are queued, and the
ring has a fixed number of slots. When the mount stops, :meth:`run` is cancelled by its
owner; files still open are aborted first (see :meth:`abort_open_uploads`).

Who knows whom: the uploader makes each :class:`FileUpload` (file_upload.py) with its
:class:`MultipartSession` (multipart.py) and hands both their collaborators; neither knows
the uploader. Aborts that fail go to the :class:`AbortJanitor` (janitor.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import trio

from . import leftovers
from .config import UploaderConfig
from .file_upload import FileUpload
from .janitor import AbortJanitor
from .late_patches import LatePatches, PatchBudget
from .multipart import MultipartSession
from .overlay import Base
from .recompose import Recomposer
from .retry import RetryReason
from .ring import Ring, RingStatistics, Slot
from .s3 import S3Client
from .statistics import UploadCounters, UploadTotals
from .upload_status import FileUploadStatistics, UploadState


@dataclass(frozen=True)
class UploaderStatistics:
    """Everything ``chute status`` shows of the uploader (its JSON is this record's shape)."""

    ring: RingStatistics
    files: tuple[FileUploadStatistics, ...]
    """Files being written now (OPEN or FINALIZING)."""
    totals: UploadTotals


class Uploader:
    """Owns the ring and the part-upload workers; creates one FileUpload per written file."""

    def __init__(self, config: UploaderConfig, client: S3Client) -> None:
        config.validate()
        self.config = config
        self.client = client
        self.ring = Ring(config.slot_count, config.slice_size, stall_grace=config.ring_stall_grace,
                         upload_concurrency=config.upload_concurrency,
                         max_waiters=config.max_waiting_writers)
        self.counters = UploadCounters()
        self.uploads: set[FileUpload] = set()
        """Files being written (OPEN or FINALIZING), for status and shutdown."""
        self.janitor = AbortJanitor(client)
        self._read_back = trio.Semaphore(1)
        """One read-back of a patched file at a time (see MultipartSession.read_back_hash)."""
        self.patch_budget = PatchBudget(config.patch_budget)
        """--patch-budget: the late patches of all files (late_patches.py)."""
        self.recomposer = Recomposer(client, self.ring, slice_size=config.slice_size,
                                     defer=self.janitor.defer, read_back=self._read_back)
        """Uploads made at a temporary key, and their objects composed at close."""
        self._send, self._receive = trio.open_memory_channel[tuple[FileUpload, Slot]](
            math.inf
        )

    def open_file(self, key: str, path: str, metadata: dict[str, str] | None = None, *,
                  no_clobber: bool = False, base: Base | None = None,
                  opened_rdwr: bool = False) -> FileUpload:
        """A new upload of ``path`` to ``key``; ``no_clobber``: only if the key is free;
        ``base``: the existing object it starts from (appends, in-place writes; overlay.py);
        ``opened_rdwr``: opened O_RDWR (``--patch-back auto`` then makes it at a temporary
        key, so that writes far back can land: late_patches.py).

        A file over a base of at least one slice may copy parts of it server-side: its
        session then announces no checksum algorithm (see MultipartSession.copy_part)."""
        copies = base is not None and base.size >= self.config.slice_size
        session = MultipartSession(
            self.client, key, checksum="md5" if copies else self.config.checksum,
            no_clobber=no_clobber,
            name=path, defer_abort=self.janitor.defer, read_back=self._read_back,
        )
        upload = FileUpload(
            key, path, metadata, ring=self.ring, session=session, config=self.config,
            counters=self.counters, enqueue=self._enqueue, on_finished=self._finished,
            base=base, late=self.late_patches(path, opened_rdwr=opened_rdwr),
            recomposer=self.recomposer,
        )
        self.uploads.add(upload)
        self.counters.files_opened += 1
        return upload

    def late_patches(self, path: str, *, opened_rdwr: bool = False) -> LatePatches:
        """A file's late patches (late_patches.py), on the mount's budget and --patch-back;
        ``opened_rdwr``: the file was opened O_RDWR (``auto`` then makes it at a temp key)."""
        return LatePatches(path, self.patch_budget, self.config.slice_size,
                           patch_back=self.config.patch_back, opened_rdwr=opened_rdwr)

    def _enqueue(self, upload: FileUpload, slot: Slot) -> None:
        self._send.send_nowait((upload, slot))

    def _finished(self, upload: FileUpload) -> None:
        """Called once per upload when it reaches DONE, FAILED or ABORTED."""
        if upload in self.uploads:
            self.uploads.discard(upload)
            if upload.state is UploadState.ABORTED:
                if upload.writer_died:
                    self.counters.files_writer_died += 1
                else:
                    self.counters.files_abandoned += 1
            if upload.state is UploadState.DONE:
                self.counters.files_done += 1

    def count_retry(self, operation: str, reason: RetryReason) -> None:
        """An S3 request is being retried (the client's ``on_retry`` hook)."""
        self.counters.count_retry(operation, reason)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Run the part-upload workers, the janitor and the renewal of upload markers
        (leftovers.keep_fresh) until cancelled."""
        async with trio.open_nursery() as nursery:
            for _ in range(self.config.upload_concurrency):
                nursery.start_soon(self._worker, self._receive.clone())
            nursery.start_soon(self.janitor.run)
            nursery.start_soon(leftovers.keep_fresh, self.client)
            task_status.started()

    async def _worker(self, receive: trio.MemoryReceiveChannel[tuple[FileUpload, Slot]]
                      ) -> None:
        async with receive:
            async for upload, slot in receive:
                await upload.send_part(slot)

    async def abort_open_uploads(self, why: str) -> None:
        """Abort every file still open: nothing partial may stay behind."""
        for upload in list(self.uploads):
            await upload.abort(why)

    def statistics(self) -> UploaderStatistics:
        """Everything ``chute status`` shows, as one typed snapshot."""
        return UploaderStatistics(
            ring=self.ring.statistics(),
            files=tuple(u.statistics() for u in self.uploads),
            totals=self.counters.totals(),
        )
