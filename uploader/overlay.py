"""A file upload over an existing object: which slices are copied, zeroed or sent at close.

S3 cannot change an object in place. A file opened for writing over an existing object
without truncating it (``>>``, O_APPEND, ``rsync --inplace``, an O_RDWR reopen by qemu-img or
a database) becomes a new multipart upload to the same key whose content is the old object
(the *base*: key, size N and ETag seen at open) overlaid with the writes, cut or
zero-extended to the file's length. Slice k (part number k + 1) covers ``[kS, (k+1)S)`` of
the new file and is, at close, one of:

- *written* (slices.py): a write landed in it; it went through a ring slot, its unwritten
  bytes fetched from the base (one ranged GET) or zeros, and was sent as a part;
- *copied*: untouched and wholly inside the base (a whole slice, or the file's last one):
  UploadPartCopy, consecutive ones grouped into one part of at most ``COPY_PART_BYTES``
  (numbered by its first slice; the numbers it spans stay unused; Complete lists parts in
  ascending order, which S3 allows to be sparse);
- *zero*: untouched and wholly past the base's end (``truncate -s`` growth, a write far past
  the end): a part of zeros, sent from one ring slot zeroed once;
- *straddling*: untouched but holding the base's end in a file that grew past it: filled at
  close like a written slice (the base's bytes, then zeros).

Every request that reads the base is pinned to the ETag the open saw (``If-Match`` on the
GETs, ``x-amz-copy-source-if-match`` on the copies): if the object was replaced meanwhile they
fail (412) and so does the upload, so the new object is never made of two versions. The base
stays visible and untouched until the Complete (or PutObject) replaces it; a failure, an abort
or a dying writer leave it as it was.

This module only decides (:func:`plan_untouched`, pure); file_upload.py carries it out with
its session (multipart.py) and slices (slices.py).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection
from dataclasses import dataclass

import trio

from .checksums import body_headers_off_loop
from .copy import COPY_PART_BYTES
from .multipart import MultipartSession
from .ring import Ring, Slot

_ZEROS = bytes(1024 * 1024)


@dataclass(frozen=True)
class Base:
    """The existing object a file upload starts from: its key, length and ETag."""

    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class UntouchedPlan:
    """What to do at close with the slices no write landed in."""

    copies: tuple[tuple[int, int, int], ...] = ()
    """(part number, first byte, last byte inclusive) of each UploadPartCopy, in order."""
    zeros: tuple[tuple[int, int], ...] = ()
    """(part number, length) of each part of zeros."""
    straddling: tuple[int, ...] = ()
    """Slices filled at close from the base's end and zeros (at most one)."""

    @property
    def copied_bytes(self) -> int:
        return sum(last + 1 - first for _, first, last in self.copies)

    @property
    def part_numbers(self) -> set[int]:
        """The parts this plan makes (the straddling slices are sent as written ones)."""
        return ({n for n, _, _ in self.copies} | {n for n, _ in self.zeros}
                | {k + 1 for k in self.straddling})


def slice_count(size: int, slice_size: int) -> int:
    """Slices of a file of ``size`` bytes (an empty file has none)."""
    return -(-size // slice_size)


def plan_untouched(size: int, base_end: int, slice_size: int, touched: Collection[int]
                   ) -> UntouchedPlan:
    """The copies, zero parts and straddling slices of a file of ``size`` bytes over a base
    whose bytes ``[0, base_end)`` still show (``base_end`` is the base's size, lowered by
    any shrink since), given the slices ``touched`` (written: materialized or sent).

    A copy part is a whole number of slices, so every part but the last is at least the
    slice size (at least 5 MiB: sizes.check_slice_size)."""
    count = slice_count(size, slice_size)
    per_copy = max(1, COPY_PART_BYTES // slice_size)
    copies: list[tuple[int, int, int]] = []
    zeros: list[tuple[int, int]] = []
    straddling: list[int] = []
    run: list[int] = []  # consecutive copyable slices

    def flush() -> None:
        for i in range(0, len(run), per_copy):
            group = run[i : i + per_copy]
            first = group[0] * slice_size
            last = min((group[-1] + 1) * slice_size, size) - 1
            copies.append((group[0] + 1, first, last))
        run.clear()

    for k in range(count):
        low, high = k * slice_size, min((k + 1) * slice_size, size)
        if k in touched:
            flush()
        elif high <= base_end:
            if run and run[-1] != k - 1:
                flush()
            run.append(k)
        else:
            flush()
            if low >= base_end:
                zeros.append((k + 1, high - low))
            else:
                straddling.append(k)
    flush()
    return UntouchedPlan(tuple(copies), tuple(zeros), tuple(straddling))


async def send_untouched(plan: UntouchedPlan, base: Base | None, session: MultipartSession,
                         ring: Ring, concurrency: int, failed: Callable[[], bool]
                         ) -> tuple[int, int]:
    """The copies, then the zero parts (from one ring slot taken for the while, zeroed once)
    of ``plan`` (the session's upload created); bytes copied and bytes sent."""
    if plan.copies:
        assert base is not None
        await copy_parts(plan, base, session, failed)
    if not plan.zeros:
        return plan.copied_bytes, 0
    slot = await ring.acquire(_ZeroSender())
    try:
        sent = await send_zero_parts(plan, zeroed(slot), session, failed, concurrency)
    finally:
        ring.release(slot)
    return plan.copied_bytes, sent


class _ZeroSender:
    """The owner of the slot zero parts are sent from (never retained)."""

    path = "(zero parts)"

    def release_retained(self, slot: Slot) -> None:  # pragma: no cover - never retained
        raise AssertionError("a zero slot is never retained")


async def copy_parts(plan: UntouchedPlan, base: Base, session: MultipartSession,
                     failed: Callable[[], bool]) -> None:
    """UploadPartCopy of every copied range (the session's upload created), in order, each
    pinned to the base's ETag, stopping once ``failed()``."""
    for number, first, last in plan.copies:
        if failed():
            return
        await session.copy_part(number, base.key, first, last, base.etag)


def zero_range(view: memoryview, start: int, end: int) -> None:
    """Zero ``view[start:end]`` in 1 MiB steps (no slice-sized allocation)."""
    while start < end:
        n = min(end - start, len(_ZEROS))
        view[start : start + n] = _ZEROS[:n]
        start += n


def zeroed(slot: Slot) -> memoryview:
    """The slot's whole capacity, zeroed."""
    zero_range(slot.view, 0, len(slot.view))
    return slot.view


def without(holes: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """The ranges ``holes`` (in order, disjoint) less ``[start, end)``; changed in place, in
    O(log n) plus the shift (a slice may take thousands of small writes)."""
    first = bisect.bisect_right(holes, start, key=lambda h: h[1])  # first ending past start
    last = bisect.bisect_left(holes, end, key=lambda h: h[0])  # first starting at/after end
    if first >= last:
        return holes
    pieces = []
    if holes[first][0] < start:
        pieces.append((holes[first][0], start))
    if holes[last - 1][1] > end:
        pieces.append((end, holes[last - 1][1]))
    holes[first:last] = pieces
    return holes


def clipped(holes: list[tuple[int, int]], end: int) -> list[tuple[int, int]]:
    """The ranges ``holes`` cut at ``end``."""
    return [(a, min(b, end)) for a, b in holes if a < end]


async def send_zero_parts(plan: UntouchedPlan, zeros: memoryview, session: MultipartSession,
                          failed: Callable[[], bool], concurrency: int) -> int:
    """Upload every zero part from ``zeros`` (read only, shared by ``concurrency`` senders at
    a time); the bytes sent. The first failure ends the others and is raised."""
    pending = list(plan.zeros)
    sent = 0
    checksums: dict[int, dict[str, str]] = {}  # one per length: zeros are zeros

    async def sender() -> None:
        nonlocal sent
        while pending and not failed():
            number, length = pending.pop(0)
            if length not in checksums:
                checksums[length] = await body_headers_off_loop(session.checksum,
                                                                zeros[:length])
            await session.upload_part(number, zeros[:length], dict(checksums[length]))
            sent += length

    async with trio.open_nursery() as nursery:
        for _ in range(max(1, min(concurrency, len(pending)))):
            nursery.start_soon(sender)
    return sent
