"""The upload service of a mount: the ring, the S3 client, and the workers that send parts.

One :class:`Uploader` per mount. Its :meth:`run` owns a trio nursery with
``upload_concurrency`` worker tasks that take sealed slots from one FIFO queue and send them
as parts; so parts start in the order their slices were sealed, and with a concurrency of 1
each file's parts reach the store strictly in order (for stores that require it).

The queue is unbounded by construction but never long: only sealed slots are queued, and the
ring has a fixed number of slots. When the mount stops, :meth:`run` is cancelled by its
owner; files still open are aborted first (see :meth:`abort_open_uploads`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
import xxhash

from . import leftovers
from .config import UploaderConfig
from .retry import RetryPolicy
from .ring import Ring
from .upload import FileUpload, UploadState

if TYPE_CHECKING:
    from .ring import Slot
    from .s3 import S3Client

log = logging.getLogger(__name__)

JANITOR_INTERVAL = 2.0


@dataclass
class UploaderStats:
    """Counters for the whole mount (status, metrics, logs)."""

    bytes_written: int = 0
    bytes_uploaded: int = 0
    parts: int = 0
    files_done: int = 0
    failures: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    files_opened: int = 0
    files_aborted: int = 0
    """Files dropped because the mount stopped while they were open."""


class Uploader:
    """Owns the ring and the part-upload workers; creates one FileUpload per written file."""

    def __init__(self, config: UploaderConfig, client: S3Client) -> None:
        config.validate()
        self.config = config
        self.client = client
        self.ring = Ring(config.slot_count, config.slice_size, stall_grace=config.ring_stall_grace,
                         upload_concurrency=config.upload_concurrency)
        self.stats = UploaderStats()
        self.uploads: set[FileUpload] = set()
        """Files being written (OPEN or FINALIZING), for status and shutdown."""
        self._multipart: set[FileUpload] = set()
        self._orphans: set[tuple[str, str]] = set()
        """(key, upload id) of multipart uploads whose abort failed; retried by the janitor."""
        self._read_back = trio.Semaphore(1)
        self._send, self._receive = trio.open_memory_channel[tuple[FileUpload, "Slot"]](
            math.inf
        )

    def open_file(self, key: str, path: str, metadata: dict[str, str] | None = None, *,
                  no_clobber: bool = False) -> FileUpload:
        upload = FileUpload(self, key, path, metadata, no_clobber=no_clobber)
        self.uploads.add(upload)
        self.stats.files_opened += 1
        return upload

    def enqueue(self, upload: FileUpload, slot: Slot) -> None:
        self._send.send_nowait((upload, slot))

    async def track_multipart(self, upload: FileUpload) -> None:
        """Record a new multipart upload so a later mount can abort it if this one dies."""
        assert upload.upload_id is not None
        self._multipart.add(upload)
        await leftovers.record(self.client, upload.key, upload.upload_id)

    async def untrack_multipart(self, upload: FileUpload) -> None:
        """The upload was completed or aborted: its marker goes (a failure only logs)."""
        if upload not in self._multipart:
            return
        self._multipart.discard(upload)
        assert upload.upload_id is not None
        try:
            await leftovers.forget(self.client, upload.upload_id)
        except Exception as exc:
            log.warning("could not delete the marker of upload %s of %s: %s",
                        upload.upload_id, upload.key, exc)

    async def hash_object(self, key: str, size: int) -> str:
        """The xxh3-128 of an object as stored, read back one slice at a time.

        For files whose retained first slice was patched after it was hashed (upload.py).
        One read-back at a time, so the memory it takes beside the ring is one slice.
        """
        hasher = xxhash.xxh3_128()
        async with self._read_back:
            for first in range(0, size, self.config.slice_size):
                last = min(first + self.config.slice_size, size) - 1
                data = await self.client.get_range(key, first, last)
                await trio.to_thread.run_sync(hasher.update, data)
        return hasher.hexdigest()

    def count_retry(self, operation: str, reason: str) -> None:
        self.stats.retries[operation] += 1

    def defer_abort(self, key: str, upload_id: str) -> None:
        self._orphans.add((key, upload_id))

    async def _janitor(self) -> None:
        """Keep trying to abort uploads that could not be aborted when they failed.

        They failed because the store was unreachable, so each try is a single attempt; the
        store coming back is what makes one succeed. What is left at unmount is logged, and
        the next mount's startup cleanup finds it.
        """
        once = RetryPolicy(max_attempts=1)
        try:
            while True:
                await trio.sleep(JANITOR_INTERVAL)
                for key, upload_id in sorted(self._orphans):
                    try:
                        await self.client.abort_multipart_upload(key, upload_id, policy=once)
                    except Exception as exc:
                        log.debug("abort of %s (%s) still failing: %s", key, upload_id, exc)
                    else:
                        log.info("aborted leftover multipart upload of %s", key)
                        self._orphans.discard((key, upload_id))
                        with contextlib.suppress(Exception):
                            await leftovers.forget(self.client, upload_id)
        finally:
            for key, upload_id in sorted(self._orphans):
                log.warning("multipart upload %s of %s could not be aborted; the next mount "
                            "of this prefix will", upload_id, key)

    def finished(self, upload: FileUpload) -> None:
        """Called once per upload when it reaches DONE, FAILED or ABORTED."""
        if upload in self.uploads:
            self.uploads.discard(upload)
            if upload.state is UploadState.ABORTED:
                self.stats.files_aborted += 1
            if upload.state is UploadState.DONE:
                self.stats.files_done += 1
                elapsed = max((upload.finished or 0) - upload.started, 1e-9)
                log.info(
                    "uploaded %s: %d bytes, %d parts, %.2f s, %.1f MB/s, %d retries, "
                    "xxh3-128 %s", upload.key, upload.size, max(upload._next_part - 1, 1),
                    elapsed, upload.size / elapsed / 1e6, upload.retries, upload.xxh3_128,
                )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Run the part-upload workers until cancelled."""
        async with trio.open_nursery() as nursery:
            for _ in range(self.config.upload_concurrency):
                nursery.start_soon(self._worker, self._receive.clone())
            nursery.start_soon(self._janitor)
            task_status.started()

    async def _worker(self, receive: trio.MemoryReceiveChannel[tuple[FileUpload, Slot]]
                      ) -> None:
        async with receive:
            async for upload, slot in receive:
                await upload.upload_part(slot)

    async def abort_open_uploads(self, why: str) -> None:
        """Abort every file still open: nothing partial may stay behind."""
        for upload in list(self.uploads):
            await upload.abort(why)

    def snapshot(self) -> dict[str, Any]:
        """Everything `chute status` shows, as plain data."""
        return {
            "ring": {
                "slots": len(self.ring.slots),
                "slice_size": self.ring.slice_size,
                **self.ring.counts(),
                "writers_waiting": self.ring.waiting,
                "blocked_seconds": round(self.ring.blocked_seconds, 3),
            },
            "files": [u.snapshot() for u in self.uploads],
            "totals": {
                "bytes_written": self.stats.bytes_written,
                "bytes_uploaded": self.stats.bytes_uploaded,
                "parts": self.stats.parts,
                "files_done": self.stats.files_done,
                "failures": self.stats.failures,
                "retries": dict(self.stats.retries),
            },
        }
