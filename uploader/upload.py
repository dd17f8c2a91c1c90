"""One file's upload: bytes in from the writer, parts out to the store, one object at the end.

State machine (``FileUpload.state``)::

    OPEN ──finalize()──> FINALIZING ──> DONE
      │                       │
      └──── any failure ──────┴──> FAILED    (multipart upload aborted; sticky EIO)
      └──── abort() ─────────────> ABORTED   (mount stopped while the file was open)

While OPEN, writes fill the file's current ring slot; a full slot is sealed and queued for
upload, and the file takes another slot (waiting if the ring is full). The first sealed slot
creates the multipart upload; a file that never fills a slot is sent as one PutObject when
it is finalized. Nothing is visible in the bucket before finalize succeeds: S3 shows a
multipart object only once CompleteMultipartUpload returns, and a failed upload is aborted.

Writes must be sequential with three exceptions a filesystem user expects: a write past the end
zero-fills the gap (sparse copies, ``truncate``), a write back into the slot still being filled
simply lands there, and so does a write into the file's first slice or its latest full slice
while the ring retains them (header patches: see ring.py; the first is sent last, as part 1).
A write into bytes that have
already been sealed for upload cannot be honoured: it fails with EINVAL and the upload is
aborted, so no object that differs from what the writer wrote can ever appear.

The xxh3-128 of the file is computed as slices are sealed, in file order, so the retained
first slice is hashed as it stands when the second is sealed. A patch into it after that makes
the running hash wrong; such a file is hashed again at close by reading the finished object
back from the store (logged), since the slices after the first have left the ring.

Errors are sticky: once the upload failed, every later write, fsync and finalize of the file
raises :class:`UploadFailed` (EIO), so ``cp`` learns of it at its next write or at close.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from typing import TYPE_CHECKING, Any, NoReturn

import trio
import xxhash

from . import leftovers
from .checksums import (
    HASH_TAG,
    body_headers_off_loop,
    complete_part_fields,
    create_headers,
    multipart_etag,
)
from .errors import (
    BackwardWrite,
    ChuteError,
    FileTooLarge,
    ObjectExists,
    StoreError,
    UploadFailed,
    UploadSessionLost,
)
from .retry import answer_may_be_lost
from .sizes import MAX_PARTS, format_size

if TYPE_CHECKING:
    from .ring import Slot
    from .uploader import Uploader

log = logging.getLogger(__name__)

_ZEROS = bytes(1024 * 1024)

ABORT_BUDGET = 10.0
"""Seconds to abort a failed file's upload (at most the retry budget) while its writer waits
for the EIO: briefly, since an abort that fails is retried by the janitor every few seconds
until the store answers, and by the next mount if it never does."""


class UploadState(enum.Enum):
    OPEN = "open"
    FINALIZING = "finalizing"
    DONE = "done"
    FAILED = "failed"
    ABORTED = "aborted"


class FileUpload:
    """The upload of one file opened for writing through the mount."""

    def __init__(self, uploader: Uploader, key: str, path: str,
                 metadata: dict[str, str] | None = None, *, no_clobber: bool = False) -> None:
        self._uploader = uploader
        self.key = key
        self.path = path
        self.no_clobber = no_clobber
        """Make the object only if the key does not exist then (If-None-Match: *): EEXIST."""
        self.metadata = dict(metadata or {})
        """x-amz-meta-* for the object; read when Create/Put is sent, so it may change until."""
        self.metadata_sent: dict[str, str] = {}
        """The metadata the object was actually created with (once Create/Put was sent)."""
        self.state = UploadState.OPEN
        self.size = 0
        """Bytes received from the writer (the file's current length)."""
        self.bytes_acked = 0
        """Bytes the store has acknowledged."""
        self.parts_in_flight = 0
        self.retries = 0
        self.started = trio.current_time()
        self.finished: float | None = None
        self.upload_id: str | None = None
        self.etag = ""
        self.xxh3_128 = ""
        self.error: BaseException | None = None
        self._commit_unconfirmed = False
        """An attempt of PutObject/Complete lost its connection after it went out: the store
        may have made the object although the request finally failed."""
        self._current: Slot | None = None
        self._head: Slot | None = None
        """The first slice while the ring retains it (part 1, sent last; still writable)."""
        self._prev: Slot | None = None
        """The latest full slice while the ring retains it (sealed when the next one is full)."""
        self._head_hashed = False
        self._rehash = False
        """The retained first slice changed after it was hashed: hash the object at close."""
        self._enqueued = 0
        """Slots handed to the upload workers; none means a small file, sent by PutObject."""
        self._next_part = 1
        self._sealed_end = 0
        """Bytes of the file already handed to the upload path; writes below it are refused."""
        self._parts: dict[int, tuple[str, dict[str, str]]] = {}
        self._hasher = xxhash.xxh3_128()
        self._lock = trio.Lock()
        self._create_lock = trio.Lock()
        self._idle = trio.Event()
        self._idle.set()

    # -- writer side ------------------------------------------------------------------

    async def write(self, offset: int, data: bytes | memoryview) -> int:
        """Accept ``data`` at ``offset``; may wait for a ring slot (backpressure)."""
        async with self._lock:
            await self._check_writable()
            try:
                if offset < self.size:
                    return self._patch(offset, data)
                if offset > self.size:
                    await self._append_zeros(offset - self.size)
                await self._append(memoryview(data))
            except ChuteError as exc:
                await self._fail(exc)
                raise
            except Exception as exc:
                await self._fail(exc)
                raise UploadFailed(str(exc)) from exc
            return len(data)

    async def _check_writable(self) -> None:
        """Raise UploadFailed if the upload failed (aborting it, once) or is no longer OPEN."""
        if self.error is not None:
            if self.state in (UploadState.OPEN, UploadState.FINALIZING):
                await self._fail(self.error)
            raise UploadFailed(f"upload of {self.path} failed: {self.error}")
        if self.state is not UploadState.OPEN:
            raise UploadFailed(f"{self.path} is already {self.state.value}; no more writes")

    def _patch(self, offset: int, data: bytes | memoryview) -> int:
        """A write below the current end: allowed only inside the slot still being filled or
        the retained first slice, each taken whole (a patch spanning two slots is refused)."""
        end = offset + len(data)
        slot = next((s for s in (self._current, self._prev, self._head)
                     if s is not None and s.offset <= offset
                     and end <= s.offset + len(s.view)), None)
        if slot is None:
            log.error(
                "%s: write at offset %d..%d goes back into bytes already sent to the store "
                "(sent up to %d; only the first and the latest full slice are kept, while the "
                "ring has room); chute streams files and cannot rewrite them: EINVAL, upload "
                "aborted", self.path, offset, end, self._sealed_end,
            )
            raise BackwardWrite(f"backward write at {offset} into sent data of {self.path}")
        start = offset - slot.offset
        slot.view[start : start + len(data)] = data
        slot.length = max(slot.length, start + len(data))
        self.size = max(self.size, end)
        self._uploader.ring.touch(slot)
        if slot is self._head and self._head_hashed:
            self._rehash = True
        return len(data)

    async def _append_zeros(self, count: int) -> None:
        while count:
            n = min(count, len(_ZEROS))
            await self._append(memoryview(_ZEROS)[:n])
            count -= n

    async def _append(self, data: memoryview) -> None:
        ring = self._uploader.ring
        pos = 0
        while pos < len(data):
            slot = self._current
            if slot is None:
                slot = await self._take_slot()
            n = min(len(data) - pos, len(slot.view) - slot.length)
            slot.view[slot.length : slot.length + n] = data[pos : pos + n]
            slot.length += n
            pos += n
            self.size += n
            self._uploader.stats.bytes_written += n
            ring.touch(slot)
            if slot.length == len(slot.view):
                self._retain(slot)

    async def _take_slot(self) -> Slot:
        if self._next_part > MAX_PARTS:
            slice_size = self._uploader.config.slice_size
            log.error(
                "%s: file exceeds %s = 10,000 parts of --slice-size %s (S3's part limit); "
                "remount with a larger --slice-size to write bigger files: EFBIG",
                self.path, format_size(MAX_PARTS * slice_size), format_size(slice_size),
            )
            raise FileTooLarge(f"{self.path} exceeds 10,000 parts of --slice-size")
        slot = await self._uploader.ring.acquire(self)
        slot.offset = self.size
        slot.part_number = self._next_part
        self._next_part += 1
        self._current = slot
        return slot

    def _retain(self, slot: Slot) -> None:
        """A full slice stays in the ring, writable: the first until close, a later one until
        the next is full (header patches; see ring.py)."""
        if slot.part_number != 1 and self._prev is not None:
            self._seal(self._prev)
        self._uploader.ring.retain(slot)
        if slot.part_number == 1:
            self._head = slot
        else:
            self._prev = slot
        self._current = None

    def release_retained(self, slot: Slot) -> None:
        """The ring needs room (see ring.py): a retained slice is uploaded now."""
        assert slot is self._head or slot is self._prev
        self._seal(slot)

    def _hash_head(self) -> None:
        """Hash the first slice before any later one: the hash is in file order."""
        if not self._head_hashed and self._head is not None:
            self._hasher.update(self._head.data)
            self._head_hashed = True

    def _seal(self, slot: Slot) -> None:
        """Hand a slot to the upload workers; its bytes are final from here on."""
        self._hash_head()
        if slot is self._head:
            self._head = None
        else:
            self._hasher.update(slot.data)
        self._uploader.ring.seal(slot)
        if slot is self._prev:
            self._prev = None
        if slot is self._current:
            self._current = None
        self._sealed_end = max(self._sealed_end, slot.offset + slot.length)
        self.parts_in_flight += 1
        self._enqueued += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._uploader.enqueue(self, slot)

    # -- upload worker side -----------------------------------------------------------

    async def _ensure_upload_id(self) -> str:
        async with self._create_lock:
            if self.upload_id is None:
                if self.error is not None:
                    # The Create another part waited for failed for good. Trying again once
                    # per queued part, one after the other, would keep the writer from its
                    # EIO for a retry budget per part instead of one.
                    raise self.error
                headers = {**self._metadata_headers(),
                           **create_headers(self._uploader.config.checksum)}
                answer_lost = False

                def retried(reason: str) -> None:
                    nonlocal answer_lost
                    self._count_retry(reason)
                    answer_lost |= answer_may_be_lost(reason)

                began = trio.current_time()
                self.upload_id = await self._uploader.client.create_multipart_upload(
                    self.key, headers, on_retry=retried
                )
                await self._uploader.track_multipart(self)
                if self.state in (UploadState.FAILED, UploadState.ABORTED):
                    # The file failed while the Create was on its way, and its discard found
                    # no upload to abort: this one must not stay behind.
                    await self._abort_multipart()
                    raise UploadFailed(f"upload of {self.path} is {self.state.value}")
                if answer_lost:
                    # An attempt whose answer was lost may have created an upload we never
                    # heard of: invisible, billed, and without a marker for a later mount.
                    await leftovers.abort_lost_creates(
                        self._uploader.client, self.key, self.upload_id,
                        trio.current_time() - began,
                    )
            return self.upload_id

    async def upload_part(self, slot: Slot) -> None:
        """Send one sealed slot as a part; always releases the slot (run by a worker)."""
        ring = self._uploader.ring
        try:
            if self.error is not None or self.state in (UploadState.FAILED,
                                                        UploadState.ABORTED):
                return
            ring.start_upload(slot)
            upload_id = await self._ensure_upload_id()
            body = slot.data
            headers = await body_headers_off_loop(self._uploader.config.checksum, body)
            etag = await self._uploader.client.upload_part(
                self.key, upload_id, slot.part_number, body, headers,
                on_retry=self._count_retry,
            )
            self._parts[slot.part_number] = (etag, complete_part_fields(headers))
            self.bytes_acked += slot.length
            self._uploader.stats.bytes_uploaded += slot.length
            self._uploader.stats.parts += 1
        except StoreError as exc:
            # Once the file has failed, chute aborts the upload while parts may still be in
            # flight; their NoSuchUpload is that abort, not the store losing the upload.
            if exc.code == "NoSuchUpload" and self.error is None:
                log.error(
                    "%s: the store no longer knows multipart upload %s (NoSuchUpload on part "
                    "%d): the parts already sent are gone and the ring no longer holds them, "
                    "so this file cannot be completed; the writer gets EIO",
                    self.path, self.upload_id, slot.part_number,
                )
                self._record_failure(UploadSessionLost(str(exc)))
            else:
                self._record_failure(exc)
        except Exception as exc:
            self._record_failure(exc)
        finally:
            ring.release(slot)
            self.parts_in_flight -= 1
            if self.parts_in_flight == 0:
                self._idle.set()

    def _count_retry(self, reason: str) -> None:
        self.retries += 1

    def _count_commit_retry(self, reason: str) -> None:
        self._count_retry(reason)
        self._commit_unconfirmed |= answer_may_be_lost(reason)

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
            await self._check_writable()
            self.state = UploadState.FINALIZING
            try:
                current = self._current is not None and self._current.length > 0
                if self._enqueued == 0 and self._prev is None and not (
                    self._head is not None and current
                ):
                    await self._put_whole()
                else:
                    await self._complete()
            except Exception as exc:
                if isinstance(exc, ObjectExists):
                    await self._fail(exc)
                    raise
                if self._commit_unconfirmed:
                    # Nobody can tell: the store went away with the answer. Deleting the
                    # object later could delete a successful second copy, so say it instead.
                    log.error(
                        "%s: an attempt to make the object lost its connection after it was "
                        "sent, and the store could not be asked again: the object may have "
                        "landed although the writer gets EIO; check %s or copy again",
                        self.path, self.key,
                    )
                await self._fail(exc)
                raise UploadFailed(f"upload of {self.path} failed: {exc}") from exc
            self.state = UploadState.DONE
            self.finished = trio.current_time()
            self._uploader.finished(self)

    async def _put_whole(self) -> None:
        """The file fits one slice (in the slot filling, or the retained first slice)."""
        ring = self._uploader.ring
        if self._head is not None:
            if self._current is not None:
                ring.release(self._current)
            slot, self._current, self._head = self._head, None, None
            ring.claim(slot)
        else:
            slot, self._current = self._current, None
        body: memoryview | bytes = slot.data if slot is not None else b""
        try:
            self._hasher.update(body)
            self.xxh3_128 = self._hasher.hexdigest()
            headers = {
                **self._metadata_headers(),
                **await body_headers_off_loop(self._uploader.config.checksum, body),
                "x-amz-tagging": f"{HASH_TAG}={self.xxh3_128}",
            }
            if self.no_clobber:
                headers["If-None-Match"] = "*"
            try:
                self.etag = await self._uploader.client.put_object(
                    self.key, body, headers, on_retry=self._count_commit_retry
                )
            except StoreError as exc:
                # Our own first attempt may have made the object before its answer was lost.
                if exc.code != "PreconditionFailed" or not await self._is_ours(None):
                    self._raise_refused(exc)
        finally:
            if slot is not None:
                self._uploader.ring.release(slot)
        self.bytes_acked = self.size
        self._uploader.stats.bytes_uploaded += self.size

    async def _complete(self) -> None:
        if self._prev is not None:
            self._seal(self._prev)
        if self._current is not None:
            if self._current.length:
                self._seal(self._current)
            else:
                self._uploader.ring.release(self._current)
                self._current = None
        if self._head is not None:
            self._seal(self._head)
        await self._idle.wait()
        if self.error is not None:
            raise self.error
        self.xxh3_128 = self._hasher.hexdigest()
        assert self.upload_id is not None
        parts = [(n, *self._parts[n]) for n in sorted(self._parts)]
        expected = multipart_etag([etag for _, etag, _ in parts])
        client = self._uploader.client
        try:
            self.etag = await client.complete_multipart_upload(
                self.key, self.upload_id, parts, on_retry=self._count_commit_retry,
                if_none_match=self.no_clobber,
            )
        except StoreError as exc:
            # A retry after a lost answer finds the upload already completed (NoSuchUpload,
            # or with --no-overwrite a key that now exists). Accept only if the object is
            # exactly ours (same size, same multipart ETag).
            if exc.code not in ("NoSuchUpload", "PreconditionFailed"):
                raise
            if not await self._is_ours(expected):
                self._raise_refused(exc)
        await self._uploader.untrack_multipart(self)
        try:
            if self._rehash:
                log.info("%s: its first slice was patched after it was hashed; reading the "
                         "object back to record its xxh3-128", self.path)
                self.xxh3_128 = await self._uploader.hash_object(self.key, self.size)
            await client.put_tags(self.key, {HASH_TAG: self.xxh3_128})
        except Exception as exc:
            log.warning("%s: object complete, but storing its xxh3-128 tag failed: %s",
                        self.path, exc)

    async def _is_ours(self, multipart_etag: str | None) -> bool:
        """Whether the object now at the key is exactly this upload, made by an attempt whose
        answer was lost: same size and multipart ETag, or for a PutObject (whose ETag chute
        does not compute) same size and the xxh3-128 tag sent with it. Asked whatever the
        retries said: a gateway's 502/504 may also come after the store acted."""
        client = self._uploader.client
        info = await client.head_object(self.key)
        ours = info is not None and info.size == self.size and (
            info.etag == multipart_etag if multipart_etag is not None
            else (await client.get_tags(self.key)).get(HASH_TAG) == self.xxh3_128
        )
        if not ours:
            self._commit_unconfirmed = False  # we looked: the object is not ours
            return False
        assert info is not None
        log.info("%s: the answer to making the object was lost but the object is ours; ok",
                 self.path)
        self.etag = info.etag
        return True

    def _raise_refused(self, exc: StoreError) -> NoReturn:
        """Raise what a commit the store refused with ``exc`` reports to the writer."""
        if exc.code == "PreconditionFailed" and self.no_clobber:
            log.error("%s: %s exists and the mount has --no-overwrite: EEXIST; the new "
                      "upload was dropped and the existing object is untouched",
                      self.path, self.key)
            raise ObjectExists(f"{self.key} exists (--no-overwrite)") from exc
        raise exc

    def _metadata_headers(self) -> dict[str, str]:
        """Headers for Create/Put; remembers what was sent, since the owner may change
        ``metadata`` later (chmod while writing) and must then fix the object up."""
        self.metadata_sent = dict(self.metadata)
        return {f"x-amz-meta-{k}": v for k, v in self.metadata_sent.items()}

    # -- failure ----------------------------------------------------------------------

    async def _fail(self, exc: BaseException) -> None:
        """Make the failure sticky, free this file's slots, abort the multipart upload."""
        self._record_failure(exc)
        self.state = UploadState.FAILED
        self._uploader.stats.failures += 1
        await self._discard("failed")

    async def abort(self, why: str) -> None:
        """The mount is stopping with this file still open: drop it, leave nothing behind."""
        if self.state in (UploadState.DONE, UploadState.FAILED, UploadState.ABORTED):
            return
        log.warning("%s: abandoning upload (%s): %d bytes received, %d acknowledged; "
                    "nothing is left in the bucket", self.path, why, self.size, self.bytes_acked)
        self.state = UploadState.ABORTED
        if self.error is None:
            self.error = UploadFailed(f"upload abandoned: {why}")
        await self._discard("aborted")

    async def _discard(self, why: str) -> None:
        for slot in (self._current, self._prev, self._head):
            if slot is not None:
                self._uploader.ring.release(slot)
        self._current = self._prev = self._head = None
        if self.upload_id is not None:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self._uploader.config.stall_timeout):
                    await self._idle.wait()
                await self._abort_multipart()
        self._uploader.finished(self)

    async def _abort_multipart(self) -> None:
        """Abort now if the store answers within ABORT_BUDGET's few seconds, else leave it to
        the janitor: the writer waiting for its EIO must not wait another retry budget."""
        assert self.upload_id is not None
        with trio.CancelScope(shield=True):
            try:
                client = self._uploader.client
                await client.abort_multipart_upload(
                    self.key, self.upload_id, policy=dataclasses.replace(
                        client.policy, budget=min(ABORT_BUDGET, client.policy.budget),
                        max_delay=2.0,
                    ),
                )
            except Exception as exc:
                log.error("%s: could not abort multipart upload %s (%s); will keep trying",
                          self.path, self.upload_id, exc)
                self._uploader.defer_abort(self.key, self.upload_id)
            else:
                await self._uploader.untrack_multipart(self)

    # -- status -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        now = self.finished or trio.current_time()
        elapsed = max(now - self.started, 1e-9)
        return {
            "path": self.path,
            "key": self.key,
            "state": self.state.value,
            "bytes_received": self.size,
            "bytes_acknowledged": self.bytes_acked,
            "parts_in_flight": self.parts_in_flight,
            "retries": self.retries,
            "seconds": round(elapsed, 3),
            "throughput_bps": round(self.bytes_acked / elapsed),
            "error": str(self.error) if self.error else None,
        }
