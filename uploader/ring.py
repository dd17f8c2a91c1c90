"""The ring: one fixed, preallocated buffer of N slots of one slice each, shared by every file.

Memory never grows with file size or with the number of open files: all data a mount holds
lives in this one buffer, allocated once at mount time. A slot holds one slice of one file,
which becomes one multipart part (or, for a file smaller than a slice, the whole PutObject).

Slot lifecycle (one state machine, every transition is a method here)::

    FREE ──acquire()──> FILLING ──seal()──> SEALED ──start_upload()──> UPLOADING ──release()──> FREE
                         │   │                  ^                                        ^
                         │   └─retain()─> RETAINED ──claim()─> UPLOADING (one PutObject) │
                         │                  │                                            │
                         └──────────────────┴──release() (file aborted / small file put)─┘

A slot returns to FREE only after its part was acknowledged by the store, or its upload was
given up for good. Until then its bytes stay put, so any retry replays them from the ring:
nothing a writer has handed over is ever lost between attempts.

Backpressure: a writer whose slice is full seals it and asks for another slot. If none is
free its ``write()`` waits in :meth:`Ring.acquire`, first come first served, until an upload
frees one. A freed slot is handed directly to the longest waiter (no stealing).

Header patches: many writers seek back before close to patch a header (zipfile, WAV/RIFF,
mp4 without faststart). So a file's first slice, once full, is not sealed but RETAINED: it
stays in the ring, still writable, until the file is closed, and is then sent last, as part 1.
So is the file's latest full slice, until the next one is full: zipfile patches each member's
header once the member is written, and a member that crossed a slice boundary has its header
in the slice before. A file so holds at most three slots while it is written (first, latest
full, filling).

Retention must never cost progress, nor starve the uploads, so it yields to pressure: when a
writer has to wait for a slot while fewer than ``min_in_flight`` (the upload concurrency, at
most half the ring) slots are SEALED or UPLOADING, one RETAINED slot (a latest-full one
before a first one, the oldest first) is handed back to its owner
(:meth:`RetainingOwner.release_retained`), which seals it for upload like any other slice;
from then on a patch into it fails with EINVAL, as a patch into any uploaded slice does. A
fast writer feeding a slow store keeps its retained slices (the uploads are busy and will free
slots), while many files written at once, whose retained slices would leave the uploads idle,
give them up one by one.

The progress rule: a waiting writer is eventually served if and only if some slot will free
without its help. SEALED and UPLOADING slots always free on their own: the upload either
succeeds or fails for good, within the retry budget, and both release the slot. A RETAINED
slot counts as one of them: a waiting writer with nothing in flight turns it into a SEALED
slot. A FILLING
slot frees only when its writer fills it or closes the file. So:

    A writer that waits while no slot is SEALED or UPLOADING, and no FILLING slot has received
    a byte for ``stall_grace`` seconds, can never be served. Its write fails with ENOBUFS
    (:class:`RingExhausted`) and a log line naming ``--ring-size``, instead of hanging.

Many concurrent ``cp`` processes always progress (each fills its own slot, seals it, and the
sealed slot frees). One process writing round-robin to more files than there are slots does
not: it blocks on file N+1 while holding files 1..N's FILLING slots, which only it could fill.
S3 forbids parts under 5 MiB, so a partly filled slot cannot be sent early to make room.
Once the rule has fired, later waiters under the same condition fail at once (the idle slots
have already been idle for the grace period), so such a writer learns within seconds.

Waiting writers and the FUSE layer: a writer waiting here holds one FUSE request (a task of
the mount's request loop, and the request's data) until it is served. If every request task
were taken by waiting writers, the writers holding FILLING slots could not have their next
write served at all: their slots would go idle and the rule above would fire against
independent writers that were all making progress (measured: 80 slow writers on a 4-slot ring
with the loop capped at 64 tasks, 33 got ENOBUFS). So the loop serves more requests at once
than ``max_waiters`` (chute.fs.mount: ``max_waiters`` plus a reserve), and a write that would
be waiter number ``max_waiters + 1`` fails with ENOBUFS at once, its log line saying that
too many writers are waiting, instead of starving the slot holders. With the default (448
waiters) that takes hundreds of threads writing at once; what it costs is memory outside the
ring: each waiting write holds its request, at most one ``max_write`` (1 MiB) received plus
the copy handed to ``write()`` (measured: about 1.8 MiB per writer waiting in a 1 MiB write;
see MAX_WAITING_WRITERS in config.py).
"""

from __future__ import annotations

import enum
import logging
import mmap
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .errors import ConfigError, RingExhausted
from .sizes import format_size

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger(__name__)


class SlotState(enum.Enum):
    FREE = "free"
    FILLING = "filling"
    SEALED = "sealed"
    UPLOADING = "uploading"
    RETAINED = "retained"


@dataclass(frozen=True)
class RingStatistics:
    """A snapshot of the ring (``ring`` in ``chute status --json``); the slot counts per
    state always sum to ``slots``."""

    slots: int
    slice_size: int
    free: int
    filling: int
    sealed: int
    uploading: int
    retained: int
    writers_waiting: int
    """Writers waiting for a slot now (backpressure)."""
    blocked_seconds: float
    """Total time writers have spent waiting for a slot since the mount started."""

    def by_state(self) -> dict[SlotState, int]:
        return {state: getattr(self, state.value) for state in SlotState}


class RetainingOwner(Protocol):
    """What the ring needs of the owner of a RETAINED slot."""

    def release_retained(self, slot: Slot) -> None:
        """Stop retaining ``slot``: seal it for upload now (the ring needs room)."""


@dataclass(eq=False)
class Slot:
    """One slice of the ring; ``view`` is the slot's whole capacity, ``length`` is filled."""

    index: int
    view: memoryview
    state: SlotState = SlotState.FREE
    owner: Any = None
    length: int = 0
    offset: int = 0
    """Where in the owner's file this slot's first byte belongs."""
    part_number: int = 0
    last_activity: float = 0.0

    @property
    def data(self) -> memoryview:
        return self.view[: self.length]


@dataclass(eq=False)
class _Waiter:
    owner: Any
    event: trio.Event = field(default_factory=trio.Event)
    slot: Slot | None = None


class Ring:
    """N slots of ``slice_size`` bytes in one anonymous mapping, allocated once."""

    CHECK_INTERVAL = 0.25

    def __init__(self, slot_count: int, slice_size: int, *, stall_grace: float = 5.0,
                 upload_concurrency: int = 1, max_waiters: int | None = None) -> None:
        if slot_count < 1:
            raise ValueError("the ring needs at least one slot")
        self.slice_size = slice_size
        self.stall_grace = stall_grace
        self.max_waiters = max_waiters
        """Writers allowed to wait at once (None: no bound); see the module docstring."""
        self.min_in_flight = max(1, min(upload_concurrency, slot_count // 2))
        """Fewer slots in flight than this, and a waiting writer takes a retained slot.

        The upload concurrency, but at most half the ring: one writer holds three slots, so
        in a small ring it could never have ``upload_concurrency`` in flight, and would lose
        its retained slices to its own backpressure. At least 1, so that a writer waiting
        with nothing in flight always frees a retained slot (the progress rule)."""
        try:
            self._buffer = mmap.mmap(-1, slot_count * slice_size)
        except (OSError, OverflowError, ValueError) as exc:  # checked before mounting too
            raise ConfigError(f"cannot allocate a ring of {format_size(slot_count * slice_size)}"
                              f": {getattr(exc, 'strerror', None) or exc}") from None
        whole = memoryview(self._buffer)
        self.slots = [
            Slot(i, whole[i * slice_size : (i + 1) * slice_size]) for i in range(slot_count)
        ]
        self._free: deque[Slot] = deque(self.slots)
        self._waiters: deque[_Waiter] = deque()
        self._retained: deque[Slot] = deque()
        """RETAINED slots, oldest first: the order in which pressure releases them."""
        self.blocked_seconds = 0.0
        """Total time writers have spent waiting for a slot (backpressure)."""

    @property
    def size(self) -> int:
        return len(self.slots) * self.slice_size

    def counts(self) -> dict[str, int]:
        """Slots per state; the values always sum to the number of slots."""
        result = {state.value: 0 for state in SlotState}
        for slot in self.slots:
            result[slot.state.value] += 1
        return result

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def statistics(self) -> RingStatistics:
        counts = self.counts()
        return RingStatistics(
            slots=len(self.slots), slice_size=self.slice_size, free=counts["free"],
            filling=counts["filling"], sealed=counts["sealed"], uploading=counts["uploading"],
            retained=counts["retained"], writers_waiting=self.waiting,
            blocked_seconds=self.blocked_seconds,
        )

    def _progress_possible(self) -> bool:
        now = trio.current_time()
        for slot in self.slots:
            if slot.state in (SlotState.SEALED, SlotState.UPLOADING, SlotState.FREE,
                              SlotState.RETAINED):
                return True
            if now - slot.last_activity < self.stall_grace:
                return True
        return False

    def _exhausted(self) -> RingExhausted:
        log.error(
            "ring exhausted: all %d slots are held by files that are not being written "
            "(one process writing to more files at once than the ring has slots?); failing "
            "the blocked write with ENOBUFS (%d writers waiting). Mount with a larger "
            "--ring-size (now %s) so every file written at once can hold a slot.",
            len(self.slots), len(self._waiters), format_size(self.size),
        )
        return RingExhausted(f"no ring slot can free (--ring-size {format_size(self.size)})")

    def _too_many_waiting(self) -> RingExhausted:
        log.error(
            "%d writers are already waiting for one of the ring's %d slots, the most this "
            "mount serves at once; failing one more with ENOBUFS. Write with fewer processes "
            "or threads at once, or mount with a larger --ring-size (now %s).",
            len(self._waiters), len(self.slots), format_size(self.size),
        )
        return RingExhausted(f"{len(self._waiters)} writers already wait for a ring slot")

    def _assign(self, slot: Slot, owner: Any) -> Slot:
        slot.state = SlotState.FILLING
        slot.owner = owner
        slot.length = 0
        slot.last_activity = trio.current_time()
        return slot

    async def acquire(self, owner: Any) -> Slot:
        """A FILLING slot for ``owner``; waits while none is free (backpressure).

        Raises :class:`RingExhausted` when the progress rule says no slot can ever free.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._free and not self._waiters:
            return self._assign(self._free.popleft(), owner)
        self._relieve()
        if not self._progress_possible():
            raise self._exhausted()
        if self.max_waiters is not None and len(self._waiters) >= self.max_waiters:
            raise self._too_many_waiting()
        waiter = _Waiter(owner)
        self._waiters.append(waiter)
        started = trio.current_time()
        try:
            while waiter.slot is None:
                with trio.move_on_after(self.CHECK_INTERVAL):
                    await waiter.event.wait()
                if waiter.slot is None:
                    self._relieve()
                if waiter.slot is None and not self._progress_possible():
                    raise self._exhausted()
        except BaseException:
            if waiter.slot is not None:
                self.release(waiter.slot)
            else:
                self._waiters.remove(waiter)
            raise
        finally:
            self.blocked_seconds += trio.current_time() - started
        return waiter.slot

    def _relieve(self) -> None:
        """A writer must wait: if the uploads are short of work, a retained slot joins them."""
        if not self._retained:
            return
        in_flight = sum(s.state in (SlotState.SEALED, SlotState.UPLOADING) for s in self.slots)
        if in_flight >= self.min_in_flight:
            return
        slot = next((s for s in self._retained if s.part_number != 1), self._retained[0])
        log.debug("ring short of slots: uploading retained part %d of %s now",
                  slot.part_number, getattr(slot.owner, "path", slot.owner))
        slot.owner.release_retained(slot)
        assert slot.state is not SlotState.RETAINED, "release_retained must seal the slot"

    def retain(self, slot: Slot) -> None:
        """Keep a full slice writable a while longer (header patches; pressure may end it)."""
        assert slot.state is SlotState.FILLING, slot.state
        slot.state = SlotState.RETAINED
        self._retained.append(slot)

    def claim(self, slot: Slot) -> None:
        """A RETAINED slot leaves the retained list to be sent by its owner directly."""
        assert slot.state is SlotState.RETAINED, slot.state
        self._retained.remove(slot)
        slot.state = SlotState.UPLOADING

    def touch(self, slot: Slot) -> None:
        """Record that the writer put bytes into ``slot`` (it is making progress)."""
        slot.last_activity = trio.current_time()

    def seal(self, slot: Slot) -> None:
        assert slot.state in (SlotState.FILLING, SlotState.RETAINED), slot.state
        if slot.state is SlotState.RETAINED:
            self._retained.remove(slot)
        slot.state = SlotState.SEALED

    def start_upload(self, slot: Slot) -> None:
        assert slot.state is SlotState.SEALED, slot.state
        slot.state = SlotState.UPLOADING

    def release(self, slot: Slot) -> None:
        """Return ``slot`` to FREE, handing it straight to the longest waiter if any."""
        assert slot.state is not SlotState.FREE, "slot released twice"
        if slot.state is SlotState.RETAINED:
            self._retained.remove(slot)
        slot.state = SlotState.FREE
        slot.owner = None
        slot.length = 0
        slot.part_number = 0
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.slot = self._assign(slot, waiter.owner)
            waiter.event.set()
        else:
            self._free.append(slot)

    def held_by(self, owner: Any) -> Iterator[Slot]:
        return (slot for slot in self.slots if slot.owner is owner)
