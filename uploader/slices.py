"""One file's slices in the ring: where each write lands, which slices are kept, file hashing.

A file written through the mount is cut into slices of ``--slice-size``, one ring slot each,
each becoming one multipart part. :class:`FileSlices` keeps the file's slots:

- the slot being FILLING (``current``): appends go there; a full one is RETAINED;
- the first slice (``head``) while the ring retains it: part 1, sealed last, still writable;
- the latest full slice (``prev``) while the ring retains it: sealed once the next is full.

A file so holds at most three slots. Writes must be sequential with three exceptions a
filesystem user expects: a write past the end zero-fills the gap (:meth:`zero_fill`: sparse
copies, ``truncate``), and a write back into the filling slot or into a retained slice lands
there (:meth:`patch`: header patches, see ring.py). A write into bytes already sealed for
upload cannot be honoured: :class:`BackwardWrite` (EINVAL).

The xxh3-128 of the file is computed as slices are sealed, in file order: the retained first
slice is hashed as it stands when the second one is sealed. A patch into it after that makes
the running hash wrong, which :attr:`FileSlices.rehash` records (the object is then hashed by
reading it back once complete, since the later slices have left the ring).

Sealing hands a slot to ``on_sealed``; from there its bytes are final, and the caller sends it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import xxhash

from .errors import BackwardWrite, FileTooLarge
from .ring import Ring, Slot
from .sizes import MAX_PARTS, format_size

log = logging.getLogger(__name__)

_ZEROS = bytes(1024 * 1024)


class FileSlices:
    """The ring slots of one file (the ring's RetainingOwner for them)."""

    def __init__(self, ring: Ring, path: str, on_sealed: Callable[[Slot], None], *,
                 start: int = 0, first_part: int = 1) -> None:
        """``start``/``first_part``: a file that continues an existing object (prefix.py)
        begins at byte ``start`` with part ``first_part``; the bytes below ``start`` are
        copied server-side and cannot be written."""
        self.path = path
        """For log lines (the ring names a slot's owner by it, too)."""
        self.size = start
        """Bytes received (the file's current length)."""
        self.sealed = 0
        """Slots sealed so far; none means a small file, sent by PutObject."""
        self.rehash = False
        """The retained first slice changed after it was hashed: hash the object at close."""
        self._ring = ring
        self._on_sealed = on_sealed
        self._current: Slot | None = None
        self._head: Slot | None = None
        self._prev: Slot | None = None
        self._head_hashed = False
        self._start = start
        self._first_part = first_part
        self._next_part = first_part
        self._sealed_end = start
        """Bytes of the file already sealed; writes below it are refused."""
        self._hasher = xxhash.xxh3_128()

    @property
    def parts(self) -> int:
        """Slices taken so far (each becomes one part, or the one PutObject)."""
        return self._next_part - self._first_part

    # -- writes -----------------------------------------------------------------------

    def patch(self, offset: int, data: bytes | memoryview) -> None:
        """A write below the current end: allowed only inside the slot still being filled or
        a retained slice, each taken whole (a patch spanning two slots is refused)."""
        end = offset + len(data)
        slot = next((s for s in (self._current, self._prev, self._head)
                     if s is not None and s.offset <= offset
                     and end <= s.offset + len(s.view)), None)
        if slot is None and offset < self._start:
            log.error(
                "%s: write at offset %d..%d goes into the part of the existing object that "
                "is copied server-side (its first %d bytes); chute can continue an existing "
                "object but not rewrite its middle: EINVAL, upload aborted, the object is "
                "untouched", self.path, offset, end, self._start,
            )
            raise BackwardWrite(f"write at {offset} into the existing object {self.path}")
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
        self._ring.touch(slot)
        if slot is self._head and self._head_hashed:
            self.rehash = True

    async def zero_fill(self, count: int) -> None:
        """Append ``count`` zero bytes (a write past the end)."""
        while count:
            n = min(count, len(_ZEROS))
            await self.append(memoryview(_ZEROS)[:n])
            count -= n

    async def append(self, data: memoryview) -> None:
        """Append at the end; waits for a ring slot when the filling one is full."""
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
            self._ring.touch(slot)
            if slot.length == len(slot.view):
                self._retain(slot)

    async def _take_slot(self) -> Slot:
        if self._next_part > MAX_PARTS:  # copied parts included
            slice_size = self._ring.slice_size
            log.error(
                "%s: file exceeds %s = 10,000 parts of --slice-size %s (S3's part limit); "
                "remount with a larger --slice-size to write bigger files: EFBIG",
                self.path, format_size(MAX_PARTS * slice_size), format_size(slice_size),
            )
            raise FileTooLarge(f"{self.path} exceeds 10,000 parts of --slice-size")
        slot = await self._ring.acquire(self)
        slot.offset = self.size
        slot.part_number = self._next_part
        self._next_part += 1
        self._current = slot
        return slot

    def _retain(self, slot: Slot) -> None:
        """A full slice stays in the ring, writable: the first until close, a later one until
        the next is full (header patches; see ring.py)."""
        if slot.part_number != self._first_part and self._prev is not None:
            self._seal(self._prev)
        self._ring.retain(slot)
        if slot.part_number == self._first_part:
            self._head = slot
        else:
            self._prev = slot
        self._current = None

    def release_retained(self, slot: Slot) -> None:
        """The ring needs room (see ring.py): a retained slice is uploaded now."""
        assert slot is self._head or slot is self._prev
        self._seal(slot)

    # -- sealing ----------------------------------------------------------------------

    def _hash_head(self) -> None:
        """Hash the first slice before any later one: the hash is in file order."""
        if not self._head_hashed and self._head is not None:
            self._hasher.update(self._head.data)
            self._head_hashed = True

    def _seal(self, slot: Slot) -> None:
        """Hand a slot to ``on_sealed``; its bytes are final from here on."""
        self._hash_head()
        if slot is self._head:
            self._head = None
        else:
            self._hasher.update(slot.data)
        self._ring.seal(slot)
        if slot is self._prev:
            self._prev = None
        if slot is self._current:
            self._current = None
        self._sealed_end = max(self._sealed_end, slot.offset + slot.length)
        self.sealed += 1
        self._on_sealed(slot)

    # -- the end ----------------------------------------------------------------------

    @property
    def fits_one_object(self) -> bool:
        """Nothing sealed, and what there is fits one slice: send it by one PutObject."""
        current = self._current is not None and self._current.length > 0
        return self.sealed == 0 and self._prev is None and not (self._head is not None
                                                                and current)

    def take_whole(self) -> tuple[Slot | None, str]:
        """The one slot of a file that :attr:`fits_one_object` (None if the file is empty),
        taken from the file for the caller to send and release, and the file's xxh3-128."""
        assert self.fits_one_object
        if self._head is not None:
            if self._current is not None:
                self._ring.release(self._current)
            slot, self._current, self._head = self._head, None, None
            self._ring.claim(slot)
        else:
            slot, self._current = self._current, None
        self._hasher.update(slot.data if slot is not None else b"")
        return slot, self._hasher.hexdigest()

    def seal_all(self) -> str:
        """Seal what is left, the first slice last (it is part 1); the file's xxh3-128."""
        if self._prev is not None:
            self._seal(self._prev)
        if self._current is not None:
            if self._current.length:
                self._seal(self._current)
            else:
                self._ring.release(self._current)
                self._current = None
        if self._head is not None:
            self._seal(self._head)
        return self._hasher.hexdigest()

    def release_all(self) -> None:
        """The file failed or was abandoned: its unsealed slots go back to the ring."""
        for slot in (self._current, self._prev, self._head):
            if slot is not None:
                self._ring.release(slot)
        self._current = self._prev = self._head = None
