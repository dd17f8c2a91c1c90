"""One file's slices in the ring: where each write lands, which slices are kept, file hashing.

A file written through the mount is cut into slices of ``--slice-size`` S; slice k covers
``[kS, (k+1)S)`` and becomes part k + 1. The file's content is its *base* (the object an open
without O_TRUNC found, overlay.py; none for a new file) overlaid with the writes, cut or
zero-extended to :attr:`FileSlices.size`. Each slice is, at any moment, exactly one of:

- UNTOUCHED: no write landed in it; at close it is copied from the base, sent as zeros or
  filled from the base's end (overlay.py decides). Growth (``truncate -s``, a write far past
  the end) makes untouched slices: zeros are virtual, never streamed through the ring.
- MATERIALIZED: in a ring slot, writable. A slot is taken at the first write into the slice;
  the slice's bytes past the base are zeroed then, the base's bytes it still lacks (the
  *holes*, what no write covered) are fetched with ranged GETs pinned to the base's ETag
  when the writer moves on (or at close). Appends at the file's end fill a fresh slot
  sequentially: no zeroing, no GET (the streaming fast path).
- SENT: sealed (queued, uploading or acknowledged). A later write into it is a *late
  patch*, handed to the file's :class:`LatePatchesLike` (temp-key mode keeps it, otherwise
  :class:`BackwardWrite`, EINVAL).

Retention (as ring.py describes: header patches): ``head``, the first slice's slot, is kept
until close, and so are the latest two materialized, ``current`` (FILLING, being written)
and ``prev`` (RETAINED); materializing another seals ``prev`` (or, if ``prev`` is the file's
short last slice, which may still grow, the whole one demoted). Ring pressure may seal a
retained slot early (:meth:`release_retained`); it never has holes: no I/O to seal it.

Hashing: the xxh3-128 covers ``[0, _hashed_end)`` in file order. Sealing a slice first hashes
what lies before it (the retained head as it stands, untouched slices past the base as
zeros); bytes below ``_hashed_end`` that change afterwards, or an untouched slice of the base
in the way, make the running hash useless: :attr:`FileSlices.rehash` says so, and the object
is then hashed by reading it back once complete.

Sealing hands a slot to ``on_sealed``; from there its bytes are final, and the caller sends it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
import xxhash

from .errors import BackwardWrite, FileTooLarge
from .late_refused import LatePatchesLike, NoLatePatches
from .overlay import clipped, slice_count, without, zero_range
from .ring import Ring, Slot
from .sizes import MAX_PARTS, format_size

log = logging.getLogger(__name__)

_ZEROS = bytes(1024 * 1024)
ZERO_HASH_INLINE = 256 * 1024 * 1024
"""Most bytes of zeros (untouched slices past the base) hashed on the event loop at once."""

Fetch = Callable[[int, int], Awaitable[bytes]]
"""Bytes ``first..last`` (inclusive) of the base, pinned to its ETag."""


class FileSlices:
    """The ring slots of one file (the ring's RetainingOwner for them)."""

    def __init__(self, ring: Ring, path: str, on_sealed: Callable[[Slot], None], *,
                 base_size: int = 0, fetch: Fetch | None = None,
                 late: LatePatchesLike | None = None) -> None:
        """``base_size``/``fetch``: the object the file starts from (overlay.py) and how to
        read its bytes; ``late``: the keeper of writes into sent slices."""
        self.path = path
        """For log lines (the ring names a slot's owner by it, too)."""
        self.size = base_size
        """The file's current length."""
        self.base_end = base_size
        """The base's bytes ``[0, base_end)`` still show (a shrink lowers it: growing again
        shows zeros, not the old bytes)."""
        self.sealed = 0
        """Slots sealed so far; none means a small file, sent by PutObject."""
        self.sent: dict[int, int] = {}
        """SENT slices: index -> length sealed."""
        self.rehash = False
        """The running hash is not the file's: hash the object at close by reading it back."""
        self.bytes_fetched = 0
        """Bytes of the base read by ranged GETs."""
        self.late: LatePatchesLike = late or NoLatePatches(path)
        self._ring = ring
        self._slice = ring.slice_size
        self._on_sealed = on_sealed
        self._fetch = fetch
        self._current: Slot | None = None
        self._holes: list[tuple[int, int]] = []
        """Base bytes ``current`` still lacks (offsets in the slot), in order."""
        self._head: Slot | None = None
        self._prev: Slot | None = None
        self._hashed_end = 0
        self._hasher = xxhash.xxh3_128()

    @property
    def touched(self) -> set[int]:
        """Slices a write landed in (materialized or sent)."""
        return {s.offset // self._slice for s in self._slots()} | set(self.sent)

    def _slots(self) -> list[Slot]:
        return [s for s in (self._head, self._prev, self._current) if s is not None]

    def _slot_of(self, k: int) -> Slot | None:
        offset = k * self._slice
        for slot in (self._current, self._prev, self._head):
            if slot is not None and slot.offset == offset:
                return slot
        return None

    # -- writes -----------------------------------------------------------------------

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        """Land ``data`` at ``offset`` (may wait for a slot, fetch, hand a late patch over)."""
        cur = self._current
        n = len(data)
        if cur is not None and offset == self.size == cur.offset + cur.length \
                and cur.length + n < self._slice:  # the fast path: an append inside a slot
            cur.view[cur.length : cur.length + n] = data
            cur.length += n
            self.size += n
            self._ring.touch(cur)
            return
        end = offset + n
        self._check_size(end)
        if offset > self.size:
            self._grow(offset)
        view = memoryview(data)
        pos = 0
        while pos < n:
            at = offset + pos
            k = at // self._slice
            step = min(n - pos, (k + 1) * self._slice - at)
            await self._write_slice(k, at, view[pos : pos + step])
            pos += step

    async def _write_slice(self, k: int, at: int, data: memoryview) -> None:
        slot = self._slot_of(k)
        if slot is None:
            if k in self.sent:
                if at + len(data) > at - at % self._slice + self.sent[k]:
                    self._grow(at + len(data))  # refused: past a sent last slice
                self.late.add(at, data)
                self.rehash = True
                self.size = max(self.size, at + len(data))
                return
            if self._current is not None and at < self._current.offset:
                self.late.note_backward_write()
            slot = await self._materialize(k)
        elif slot is not self._current and k:
            # Back into the retained latest-full slice: a zip-like writer patching a member
            # header that crossed a slice boundary. A patch into slice 0 (WAV, mp4 and other
            # header patches) is served by the retained first slice and predicts nothing.
            self.late.note_backward_write()
        start = at - slot.offset
        end = start + len(data)
        assert start <= slot.length, "a slice's slot always reaches the file's end"
        slot.view[start:end] = data
        if end > slot.length:
            slot.length = end
        self.size = max(self.size, at + len(data))
        self._ring.touch(slot)
        if at < self._hashed_end:
            self.rehash = True
        if slot is self._current:
            if self._holes:
                self._holes = without(self._holes, start, end)
            if end == self._slice:  # the writer reached the slice's end: it moves on
                await self._demote()

    def _check_size(self, size: int) -> None:
        if size > (limit := MAX_PARTS * self._slice):
            log.error("%s: file exceeds %s = 10,000 parts of --slice-size %s (S3's part "
                      "limit); remount with a larger --slice-size to write bigger files: "
                      "EFBIG", self.path, format_size(limit), format_size(self._slice))
            raise FileTooLarge(f"{self.path} exceeds 10,000 parts of --slice-size")

    async def _materialize(self, k: int) -> Slot:
        """Slice ``k`` gets a ring slot (the writer moved on: ``current`` is retained)."""
        if self._current is not None:
            await self._demote()
        slot = await self._ring.acquire(self)
        low = k * self._slice
        slot.offset = low
        slot.part_number = k + 1
        length = max(0, min(self._slice, self.size - low))
        from_base = max(0, min(self._slice, self.base_end - low))
        zero_range(slot.view, from_base, length)
        slot.length = length
        self._holes, self._current = [(0, from_base)] if from_base else [], slot
        return slot

    async def _demote(self) -> None:
        """``current`` stops being written: its holes filled, it is retained (see module)."""
        slot = self._current
        assert slot is not None
        if self._holes:
            holes, self._holes = self._holes, []
            await self._fill_holes(slot, holes)
        prev = self._prev
        if slot.offset != 0 and prev is not None:
            if prev.length < self._slice and prev.offset + prev.length == self.size:
                self._seal(slot)  # ``prev`` is the file's short last slice: it may grow yet
                return  # (sent now, it could not: a part but the last must be whole)
            self._seal(prev)  # (``current`` still known: hashed as it stands if due)
        self._current = None
        self._ring.retain(slot)
        self._head, self._prev = (slot, self._prev) if slot.offset == 0 else (self._head, slot)

    async def _fill_holes(self, slot: Slot, holes: list[tuple[int, int]]) -> None:
        if len(holes) > 8:  # many small holes: one GET over them all, written holes kept
            first, last = holes[0][0], holes[-1][1]
            data = await self._get(slot, first, last)
            for start, end in holes:
                slot.view[start:end] = data[start - first : end - first]
            return
        for start, end in holes:
            slot.view[start:end] = await self._get(slot, start, end)

    async def _get(self, slot: Slot, start: int, end: int) -> bytes:
        assert self._fetch is not None  # (only a slice of the base has holes)
        data = await self._fetch(slot.offset + start, slot.offset + end - 1)
        if len(data) != end - start:
            raise OSError(f"{self.path}: the base answered {len(data)} bytes for a range "
                          f"of {end - start}")
        self.bytes_fetched += len(data)
        return data

    def release_retained(self, slot: Slot) -> None:
        """The ring needs room (ring.py): a retained slice is uploaded now."""
        assert slot is self._head or slot is self._prev
        self._seal(slot)

    # -- size changes -----------------------------------------------------------------

    def _grow(self, size: int) -> None:
        """The file grows to ``size``: the slice holding the old end is zero-extended (in
        its slot, or virtually if untouched); slices wholly past it stay untouched."""
        old = self.size
        k = old // self._slice
        if old % self._slice:
            slot = self._slot_of(k)
            new_length = min(self._slice, size - k * self._slice)
            if slot is not None:
                zero_range(slot.view, slot.length, new_length)
                slot.length = new_length
            elif k in self.sent and not (self.late.enabled and self.sent[k] >= new_length):
                # (in temp-key mode a slice cut by a shrink still holds its whole part, whose
                # bytes past the cut the late patches read as zeros)
                log.error("%s: cannot grow the file past %d: its last slice was already sent "
                          "to the store as the last part; EINVAL", self.path, old)
                raise BackwardWrite(f"growing {self.path} past a sent last slice")
        self.size = size

    async def truncate(self, size: int) -> bool:
        """Change the file's length: growth is virtual (zeros); a shrink drops the slots past
        the end, cuts the one holding it, and tells the keeper of late patches (which refuses
        a cut into a SENT slice outside temp-key mode). Whether SENT slices were dropped
        (their uploads must settle before one could be sent again)."""
        if size >= self.size:
            self._check_size(size)
            self._grow(size)
            return False
        k = size // self._slice
        cut = size - k * self._slice
        self.late.truncate(size, into_sent=bool(cut) and self.sent.get(k, 0) > cut)
        for slot in self._slots():
            if slot.offset >= size:
                self._drop(slot)
        slot = self._slot_of(k)
        if slot is not None and cut:
            slot.length = min(slot.length, cut)
            if slot is self._current:
                self._holes = clipped(self._holes, cut)
        dropped = [n for n in self.sent if n * self._slice >= size]
        for n in dropped:
            del self.sent[n]
        self.base_end = min(self.base_end, size)
        self.size = size
        if size < self._hashed_end:
            self.rehash = True
        return bool(dropped)

    def _drop(self, slot: Slot) -> None:
        self._forget(slot)
        self._ring.release(slot)

    def _forget(self, slot: Slot) -> None:
        """``slot`` is no longer one of the file's (dropped, sealed or handed over)."""
        if slot is self._current:
            self._current, self._holes = None, []
        elif slot is self._prev:
            self._prev = None
        elif slot is self._head:
            self._head = None

    # -- sealing ----------------------------------------------------------------------

    def _hash_to(self, offset: int, *, final: bool = False) -> None:
        """Extend the running hash over ``[_hashed_end, offset)`` if it can (whole slices
        only while the file is open, and then at most ZERO_HASH_INLINE bytes of zeros: a
        sparse gap of gigabytes would hold the event loop; past that the object is read
        back at close instead)."""
        zeros_left = None if final else ZERO_HASH_INLINE
        while self._hashed_end < offset and not self.rehash:
            k = self._hashed_end // self._slice
            length = min(self._slice, self.size - k * self._slice)
            if length < self._slice and not final:
                return
            slot = self._slot_of(k)
            if slot is not None and not (slot is self._current and self._holes):
                self._hasher.update(slot.data)
            elif slot is None and k not in self.sent and k * self._slice >= self.base_end:
                if zeros_left is not None:
                    if zeros_left < length:
                        self.rehash = True
                        return
                    zeros_left -= length
                for start in range(0, length, len(_ZEROS)):
                    self._hasher.update(_ZEROS[: min(len(_ZEROS), length - start)])
            else:
                self.rehash = True
                return
            self._hashed_end += length

    def _seal(self, slot: Slot) -> None:
        """Hand a slot to ``on_sealed``; its bytes are final from here on."""
        self._hash_to(slot.offset)
        if self._hashed_end == slot.offset and not self.rehash:
            self._hasher.update(slot.data)  # whole, or the file's last slice
            self._hashed_end += slot.length
        elif self._hashed_end < slot.offset:
            self.rehash = True
        self._forget(slot)
        self._ring.seal(slot)
        self.sent[slot.offset // self._slice] = slot.length
        self.sealed += 1
        self._on_sealed(slot)

    # -- the end ----------------------------------------------------------------------

    @property
    def fits_one_object(self) -> bool:
        """The file fits one slice whose part was not sent: one PutObject (parts of slices
        cut off by a shrink are dropped with their upload)."""
        return self.size <= self._slice and 0 not in self.sent

    async def take_whole(self) -> tuple[Slot | None, str]:
        """The one slot of a file that :attr:`fits_one_object` (None if the file is empty),
        taken from the file for the caller to send and release, and the file's xxh3-128.
        An untouched first slice is made now (the base's bytes, then zeros)."""
        assert self.fits_one_object
        slot = self._slot_of(0)
        if slot is None and self.size:
            slot = await self._materialize(0)
        if slot is not None:
            if slot is self._current and self._holes:
                holes, self._holes = self._holes, []
                await self._fill_holes(slot, holes)
            if slot is self._head:
                self._ring.claim(slot)  # (the FILLING slot is handed over as it is)
            self._forget(slot)
        for other in self._slots():
            self._drop(other)
        hasher = xxhash.xxh3_128(slot.data if slot is not None else b"")
        return slot, hasher.hexdigest()

    async def seal_all(self) -> str:
        """Fill and seal what is left, in file order; the file's xxh3-128 (meaningless if
        :attr:`rehash`). Untouched slices are the caller's (overlay.plan_untouched)."""
        if self._current is not None and self._holes:
            holes, self._holes = self._holes, []
            await self._fill_holes(self._current, holes)
        # in file order, but the first slice last (part 1 is sent last, as it always was:
        # the hash has taken it as it stood when the second slice was sealed)
        for slot in sorted(self._slots(), key=lambda s: (s.offset == 0, s.offset)):
            if slot.length:
                self._seal(slot)
            else:
                self._drop(slot)
        # nothing is retained now (no other task seals a slot of this file): off the loop
        await trio.to_thread.run_sync(lambda: self._hash_to(self.size, final=True))
        return self._hasher.hexdigest()

    async def seal_straddling(self, k: int) -> None:
        """Make untouched slice ``k`` now (the base's end, then zeros) and seal it."""
        slot = await self._materialize(k)
        holes, self._holes = self._holes, []
        await self._fill_holes(slot, holes)
        self.rehash = True  # made after the slices around it were hashed
        self._seal(slot)

    @property
    def count(self) -> int:  # slices of the file now
        return slice_count(self.size, self._slice)

    def release_all(self) -> None:
        """The file failed or was abandoned: its unsealed slots go back to the ring."""
        for slot in self._slots():
            self._ring.release(slot)
        self._current = self._prev = self._head = None
        self._holes = []

