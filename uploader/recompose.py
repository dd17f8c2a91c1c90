"""Recomposition: an upload made at a temporary key T becomes the object at its key K.

An upload in temp-key mode (late_patches.py) is created at a hidden temporary key::

    <prefix>.chute-temp/<32 hex digits>

(inside the mount's prefix, hidden from its listing by fs/namespace.py, treated as chute's
own object by object_options.py: no storage class, lock or tags, but SSE-C like user data).
At close :meth:`Recomposer.recompose` completes it at T, then makes K a second multipart
upload composed from T, one part per run of whole slices (the parts of T were slices, so every
part but the last is at least one slice, >= 5 MiB: sizes.py):

- a run no patch touches: UploadPartCopy of T's range (server-side; at most COPY_PART_BYTES);
- a slice a patch touches: one ranged GET of T's bytes into a ring slot (one GET at a time
  per mount, under the read-back semaphore, so the memory beside the ring is one slice), the
  patches applied (LatePatches.apply), the slot uploaded as the part;
- a file of at most one slice: that one slot sent by PutObject, its hash computed from it.

Every read of T is pinned to T's ETag. Then T is deleted. K is created with exactly the
metadata T was created with (so what the file upload reports as sent stays true).

Invariants:

- The old object at K stays visible and untouched until K's Complete (or PutObject); any
  failure aborts K's upload, deletes T and re-raises (the writer gets EIO; EEXIST for
  ``--no-overwrite``).
- A crash leaves no temporary behind for long: T's upload marker (leftovers.py) is not
  deleted at T's Complete (``MultipartSession.keep_marker``) but only once T is deleted, so
  the next mount's janitor deletes the T of a dead owner (and keeps a live owner's); a delete
  that fails here is the AbortJanitor's (janitor.py), retried until the store answers.
- The retry policy is the client's (retry.py); nothing here retries on its own.

Cost: :class:`Recomposed` says the bytes copied server-side, re-read (ranged GETs of T, and
the read-back of K that hashes it when the streaming hash does not hold) and sent.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial

import trio
import xxhash

from . import leftovers
from .bounded import each_bounded
from .copy import COPY_PART_BYTES, COPY_PARTS_IN_FLIGHT
from .hash_tag import tag_object
from .late_patches import LatePatches
from .multipart import ABORT_BUDGET, MultipartSession
from .object_options import TEMP_KEY_DIR
from .ring import Ring
from .s3 import S3Client
from .sizes import format_size

log = logging.getLogger(__name__)


def temp_key(client: S3Client) -> str:
    """A new temporary key inside the mount's prefix (see the module docstring)."""
    return client.bucket.key(f"{TEMP_KEY_DIR}/{uuid.uuid4().hex}")


@dataclass(frozen=True)
class Recomposed:
    """What :meth:`Recomposer.recompose` made, and what it cost."""

    etag: str
    """K's ETag."""
    xxh3_128: str
    """The file's hash (given, computed from the one slot, or read back from K)."""
    bytes_copied: int
    """Copied server-side (UploadPartCopy of T's ranges)."""
    bytes_fetched: int
    """Re-read from the store: ranged GETs of T, plus the read-back of K if it was hashed."""
    bytes_sent: int
    """Uploaded from this machine (the patched slices)."""
    parts: int


@dataclass(frozen=True)
class _Part:
    number: int
    first: int
    end: int
    patched: bool


class _Owner:
    """The ring owner of the slots a recomposition takes (never retained)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def release_retained(self, slot: object) -> None:  # pragma: no cover - never retained
        raise AssertionError("a recomposition never retains a slot")


class Recomposer:
    """One per mount (the Uploader's): makes uploads at T, and K from T at close."""

    def __init__(self, client: S3Client, ring: Ring, *, slice_size: int,
                 defer: Callable[[str, str], None],
                 read_back: trio.Semaphore | None = None) -> None:
        """``defer(key, upload_id)``: the janitor's (janitor.py), for a T whose removal
        failed; ``read_back``: the mount's one-at-a-time semaphore for reading objects back."""
        self.client = client
        self.ring = ring
        self.slice_size = slice_size
        self._defer = defer
        self._read_back = read_back or trio.Semaphore(1)

    # -- at the first Create ------------------------------------------------------------

    def prepare(self, session: MultipartSession, patches: LatePatches) -> None:
        """Call before every ``session.create()`` of a file upload (synchronous, idempotent):
        at the first, decides temp-key mode and, if so, points the session at a new T."""
        if session.upload_id is not None or patches.temp_key is not None:
            return
        if patches.decide():
            patches.temp_key = session.key = temp_key(self.client)
            log.debug("%s: its upload is made at the temporary key %s", session.name,
                      session.key)

    # -- at close -----------------------------------------------------------------------

    async def recompose(self, temp: MultipartSession, patches: LatePatches, *, key: str,
                        size: int, xxh3_128: str | None = None,
                        numbers: Collection[int] | None = None) -> Recomposed:
        """Complete ``temp`` (created at T by :meth:`prepare`, every part acknowledged; only
        the parts ``numbers`` if given, as ``MultipartSession.complete`` takes them), make the
        object at ``key`` of ``size`` bytes from it with ``patches`` applied, delete T; the
        result. ``xxh3_128``: the file's hash if the streaming hash holds (no late patch, no
        rehash), else None (then K is read back to hash it). Raises what failed, after
        aborting K's upload and deleting T; releases ``patches`` either way."""
        assert temp.upload_id is not None and temp.key != key, "not an upload at T"
        final = MultipartSession(self.client, key, checksum="md5", no_clobber=temp.no_clobber,
                                 name=temp.name, defer_abort=self._defer,
                                 read_back=self._read_back)
        if patches.pending:
            xxh3_128 = None  # the stream hashed T's bytes, not the patched ones
        job = _Job(self, temp, final, patches, size, numbers)
        try:
            temp.keep_marker = True
            return await job.run(xxh3_128)
        except BaseException:
            with trio.CancelScope(shield=True):
                await final.abort()
                await self._drop_temp(temp)
            raise
        finally:
            patches.release()

    async def _drop_temp(self, temp: MultipartSession, *, pending: bool = True) -> None:
        """T goes: its upload aborted (if it may be ``pending``), the object deleted, then
        its marker; within ABORT_BUDGET, else the janitor does it (the marker stays until
        then). Never raises: once K is made, a T left over is the janitor's, not an error."""
        assert temp.upload_id is not None
        with trio.CancelScope(shield=True), trio.move_on_after(ABORT_BUDGET) as scope:
            try:
                if pending:
                    await self.client.abort_multipart_upload(temp.key, temp.upload_id)
                await self.client.delete_object(temp.key)
                await leftovers.forget(self.client, temp.upload_id)
                return
            except Exception as exc:
                log.warning("%s: could not delete the temporary object %s yet (%s); will "
                            "keep trying", temp.name, temp.key, exc)
        if scope.cancelled_caught:
            log.warning("%s: deleting the temporary object %s takes long; will keep trying",
                        temp.name, temp.key)
        self._defer(temp.key, temp.upload_id)


class _Job:
    """One recomposition (state for :meth:`Recomposer.recompose`)."""

    def __init__(self, owner: Recomposer, temp: MultipartSession, final: MultipartSession,
                 patches: LatePatches, size: int, numbers: Collection[int] | None) -> None:
        self.r = owner
        self.numbers = numbers
        self.temp = temp
        self.final = final
        self.patches = patches
        self.size = size
        self.temp_etag = ""
        self.temp_size = 0
        self.copied = self.fetched = self.sent = 0
        self.xxh3_128 = ""

    async def run(self, xxh3_128: str | None) -> Recomposed:
        temp, final, size = self.temp, self.final, self.size
        # (the lost-answer check of T's Complete knows T's size only when it is the file's)
        if self.numbers is None:
            await temp.complete(size)
        else:
            await temp.complete(size, self.numbers)
        info = await self.r.client.head_object(temp.key)
        if info is None:
            raise FileNotFoundError(f"the temporary object {temp.key} vanished")
        self.temp_etag, self.temp_size = info.etag, info.size
        metadata = temp.metadata_sent
        if size <= self.r.slice_size:
            parts = 1
            etag, xxh3_128 = await self._put_one(metadata)
        else:
            plan = self._plan()
            parts = len(plan)
            await final.create(metadata)
            await self._send(plan)
            etag = await final.complete(size, alongside=partial(self._tag, xxh3_128))
            xxh3_128 = self.xxh3_128
        await self.r._drop_temp(temp, pending=False)
        log.info("%s: composed from its temporary object: %d parts, %s copied server-side, "
                 "%s re-read, %s sent", temp.name, parts, format_size(self.copied),
                 format_size(self.fetched), format_size(self.sent))
        return Recomposed(etag, xxh3_128, self.copied, self.fetched, self.sent, parts)

    def _plan(self) -> list[_Part]:
        """Runs of whole slices: untouched ones grouped into copies of at most
        COPY_PART_BYTES, each touched slice (or one past T's end) its own part."""
        step, size = self.r.slice_size, self.size
        group = max(1, COPY_PART_BYTES // step)
        plan: list[_Part] = []
        run_first: int | None = None
        run_slices = 0

        def close_run(end: int) -> None:
            nonlocal run_first, run_slices
            if run_first is not None:
                plan.append(_Part(len(plan) + 1, run_first, end, False))
            run_first, run_slices = None, 0

        for first in range(0, size, step):
            end = min(first + step, size)
            if self.patches.touches(first, end) or end > self.temp_size:
                close_run(first)
                plan.append(_Part(len(plan) + 1, first, end, True))
                continue
            if run_first is None:
                run_first = first
            run_slices += 1
            if run_slices == group:
                close_run(end)
        close_run(size)
        return plan

    async def _send(self, plan: list[_Part]) -> None:
        """Every part, COPY_PARTS_IN_FLIGHT at a time; the first failure cancels the rest."""

        async def one(part: _Part) -> None:
            if part.patched:
                await self._send_patched(part)
            else:
                await self.final.copy_part(part.number, self.temp.key, part.first,
                                           part.end - 1, self.temp_etag)
                self.copied += part.end - part.first

        await each_bounded(plan, one, COPY_PARTS_IN_FLIGHT)

    async def _fill(self, view: memoryview, first: int) -> None:
        """``view`` := the file's bytes ``[first, first + len(view))``: T's, zeros past T's
        end, the patches over them."""
        end = min(first + len(view), self.temp_size)
        got = 0
        if end > first:
            async with self.r._read_back:
                data = await self.r.client.get_range(self.temp.key, first, end - 1,
                                                     if_match=self.temp_etag)
                view[: len(data)] = data
                got = len(data)
                del data
            self.fetched += got
        view[got:] = bytes(len(view) - got)
        self.patches.apply(first, view)

    async def _send_patched(self, part: _Part) -> None:
        ring = self.r.ring
        slot = await ring.acquire(_Owner(self.temp.name))
        ring.seal(slot)  # in flight from here: it frees on its own (ring.py's progress rule)
        ring.start_upload(slot)
        try:
            slot.length = part.end - part.first
            await self._fill(slot.data, part.first)
            await self.final.upload_part(part.number, slot.data)
            self.sent += slot.length
        finally:
            ring.release(slot)

    async def _put_one(self, metadata: dict[str, str]) -> tuple[str, str]:
        """A file of at most one slice: one slot, one PutObject, its hash from the slot."""
        ring = self.r.ring
        slot = await ring.acquire(_Owner(self.temp.name))
        ring.seal(slot)
        ring.start_upload(slot)
        try:
            slot.length = self.size
            await self._fill(slot.data, 0)
            xxh3_128 = await trio.to_thread.run_sync(xxhash.xxh3_128_hexdigest, slot.data)
            etag = await self.final.put(slot.data, metadata, xxh3_128)
            self.sent += slot.length
        finally:
            ring.release(slot)
        return etag, xxh3_128

    async def _tag(self, xxh3_128: str | None) -> None:
        """Tag K with the file's hash, reading K back for it if not given (hash_tag.py:
        a failure only logs); the hash goes to ``self.xxh3_128``."""
        self.xxh3_128, fetched = await tag_object(
            self.final, self.temp.name, xxh3_128, size=self.size, chunk=self.r.slice_size,
            why="it was composed server-side with its late patches")
        self.fetched += fetched
