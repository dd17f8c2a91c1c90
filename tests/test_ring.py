"""Unit tests for the ring: the slot state machine, FIFO backpressure and the progress rule.

Every async test runs on a ``MockClock`` with ``autojump_threshold=0``: whenever all tasks
are blocked, virtual time jumps to the next deadline, so waits of "10 x stall_grace" cost
no wall-clock time.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Callable

import pytest
import trio
import trio.testing

from chute.uploader.errors import RingExhausted, errno_for
from chute.uploader.ring import Ring, Slot, SlotState

SLICE = 4096
GRACE = 5.0
# Float slack for virtual-time comparisons (the clock adds CHECK_INTERVAL repeatedly).
EPS = 1e-6


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def make_ring(slots: int = 4, *, grace: float = GRACE) -> Ring:
    return Ring(slots, SLICE, stall_grace=grace)


def counts_of(**states: int) -> dict[str, int]:
    """Slots per state as ``Ring.counts`` reports them, the states not named at 0."""
    return {state.value: states.get(state.value, 0) for state in SlotState}


def assert_consistent(ring: Ring) -> dict[str, int]:
    counts = ring.counts()
    assert set(counts) == {s.value for s in SlotState}
    assert sum(counts.values()) == len(ring.slots)
    stats = ring.statistics()  # the record agrees with the counts
    assert {state.value: n for state, n in stats.by_state().items()} == counts
    assert (stats.slots, stats.slice_size, stats.writers_waiting, stats.blocked_seconds) == (
        len(ring.slots), ring.slice_size, ring.waiting, ring.blocked_seconds)
    return counts


async def acquire_without_waiting(ring: Ring, owner: object) -> Slot:
    """``ring.acquire`` that must return in the same virtual instant (no backpressure)."""
    start = trio.current_time()
    with trio.fail_after(0.001):  # autojump would pass this deadline if acquire blocked
        slot = await ring.acquire(owner)
    assert trio.current_time() == start
    return slot


async def settle_until(predicate: Callable[[], bool], *, rounds: int = 1000) -> None:
    """Yield to the scheduler until ``predicate()`` holds (no virtual time passes)."""
    for _ in range(rounds):
        if predicate():
            return
        await trio.lowlevel.checkpoint()
    raise AssertionError("condition never became true")


# -- construction -------------------------------------------------------------------------


def test_new_ring_has_all_slots_free_and_distinct_views() -> None:
    ring = make_ring(5)
    assert ring.size == 5 * SLICE
    assert len(ring.slots) == 5
    assert assert_consistent(ring) == counts_of(free=5, filling=0, sealed=0, uploading=0)
    assert [s.index for s in ring.slots] == list(range(5))
    for slot in ring.slots:
        assert slot.state is SlotState.FREE
        assert slot.owner is None
        assert len(slot.view) == SLICE
        assert slot.length == 0
        assert len(slot.data) == 0
    # Slots are disjoint windows into one buffer: writing one does not touch another.
    ring.slots[0].view[:4] = b"abcd"
    ring.slots[1].view[:4] = b"wxyz"
    assert bytes(ring.slots[0].view[:4]) == b"abcd"
    assert bytes(ring.slots[1].view[:4]) == b"wxyz"
    assert ring.waiting == 0
    assert ring.blocked_seconds == 0.0


def test_ring_needs_a_slot() -> None:
    with pytest.raises(ValueError):
        Ring(0, SLICE)


# -- state machine --------------------------------------------------------------------------


async def test_full_lifecycle_transitions_and_counts(clock: trio.testing.MockClock) -> None:
    ring = make_ring(3)
    slot = await ring.acquire("file-a")
    assert isinstance(slot, Slot)
    assert slot.state is SlotState.FILLING
    assert slot.owner == "file-a"
    assert slot.length == 0
    assert assert_consistent(ring) == counts_of(free=2, filling=1, sealed=0, uploading=0)
    assert list(ring.held_by("file-a")) == [slot]

    slot.view[:5] = b"hello"
    slot.length = 5
    assert bytes(slot.data) == b"hello"

    ring.seal(slot)
    assert slot.state is SlotState.SEALED
    assert assert_consistent(ring) == counts_of(free=2, filling=0, sealed=1, uploading=0)

    ring.start_upload(slot)
    assert slot.state is SlotState.UPLOADING
    assert assert_consistent(ring) == counts_of(free=2, filling=0, sealed=0, uploading=1)
    # The bytes stay put until release (a retry replays them from the ring).
    assert bytes(slot.data) == b"hello"

    slot.part_number = 7
    ring.release(slot)
    assert slot.state is SlotState.FREE
    assert slot.owner is None
    assert slot.length == 0
    assert slot.part_number == 0
    assert list(ring.held_by("file-a")) == []
    assert assert_consistent(ring) == counts_of(free=3, filling=0, sealed=0, uploading=0)


async def test_release_straight_from_filling(clock: trio.testing.MockClock) -> None:
    """An aborted file (or a small file's PutObject) releases a FILLING slot directly."""
    ring = make_ring(2)
    slot = await ring.acquire("small")
    ring.release(slot)
    assert slot.state is SlotState.FREE
    assert assert_consistent(ring)["free"] == 2
    # And the freed slot can be acquired again.
    again = await ring.acquire("next")
    assert again.state is SlotState.FILLING
    assert again.owner == "next"


async def test_counts_always_sum_to_slot_count(clock: trio.testing.MockClock) -> None:
    ring = make_ring(4)
    slots = [await ring.acquire(i) for i in range(4)]
    assert_consistent(ring)
    ring.seal(slots[0])
    assert_consistent(ring)
    ring.seal(slots[1])
    ring.start_upload(slots[1])
    assert assert_consistent(ring) == counts_of(free=0, filling=2, sealed=1, uploading=1)
    for slot in slots:
        ring.release(slot)
        assert_consistent(ring)
    assert ring.counts()["free"] == 4


async def test_illegal_transitions_assert(clock: trio.testing.MockClock) -> None:
    ring = make_ring(2)
    free = ring.slots[1]
    with pytest.raises(AssertionError):
        ring.seal(free)
    with pytest.raises(AssertionError):
        ring.start_upload(free)
    with pytest.raises(AssertionError):
        ring.release(free)
    assert free.state is SlotState.FREE

    slot = await ring.acquire("f")
    with pytest.raises(AssertionError):
        ring.start_upload(slot)  # FILLING -> UPLOADING skips SEALED
    assert slot.state is SlotState.FILLING
    ring.seal(slot)
    with pytest.raises(AssertionError):
        ring.seal(slot)  # sealed twice
    assert slot.state is SlotState.SEALED
    ring.start_upload(slot)
    with pytest.raises(AssertionError):
        ring.seal(slot)
    with pytest.raises(AssertionError):
        ring.start_upload(slot)
    assert slot.state is SlotState.UPLOADING
    ring.release(slot)
    with pytest.raises(AssertionError, match="released twice"):
        ring.release(slot)
    # The failed double release did not put the slot into the free list twice.
    a = await ring.acquire("a")
    b = await ring.acquire("b")
    assert a is not b
    assert ring.counts()["free"] == 0


# -- backpressure and FIFO hand-off ---------------------------------------------------------


async def test_acquire_blocks_when_all_slots_taken(clock: trio.testing.MockClock) -> None:
    ring = make_ring(2)
    held = [await ring.acquire("a"), await ring.acquire("b")]
    for s in held:
        ring.seal(s)  # SEALED slots free on their own: the waiter must wait, not fail
    got: list[Slot] = []

    async def waiter() -> None:
        got.append(await ring.acquire("c"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(30)
        assert got == []
        assert ring.waiting == 1
        ring.release(held[1])
    assert got == [held[1]]
    assert got[0].owner == "c"
    assert ring.waiting == 0


async def test_fifo_hand_off_without_stealing(clock: trio.testing.MockClock) -> None:
    ring = make_ring(1)
    first = await ring.acquire("holder")
    ring.seal(first)
    ring.start_upload(first)
    order: list[str] = []

    async def writer(name: str) -> None:
        slot = await ring.acquire(name)
        assert slot.owner == name
        order.append(name)
        await trio.sleep(1)
        ring.release(slot)

    async with trio.open_nursery() as nursery:
        for i, name in enumerate(["w1", "w2", "w3"]):
            nursery.start_soon(writer, name)
            await settle_until(lambda i=i: ring.waiting == i + 1)

        # Release and, with no checkpoint in between, ask again from a new writer: the slot
        # must already belong to the longest waiter, not to the late-comer.
        ring.release(first)
        assert first.state is SlotState.FILLING
        assert first.owner == "w1"
        assert ring.counts()["free"] == 0
        nursery.start_soon(writer, "thief")
    assert order == ["w1", "w2", "w3", "thief"]
    assert ring.counts()["free"] == 1
    assert ring.waiting == 0


async def test_free_list_only_gets_slots_nobody_waits_for(
    clock: trio.testing.MockClock,
) -> None:
    ring = make_ring(2)
    a = await ring.acquire("a")
    b = await ring.acquire("b")
    ring.seal(a)
    ring.seal(b)
    got: dict[str, Slot] = {}

    async def take(name: str) -> None:
        got[name] = await ring.acquire(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "early")
        await settle_until(lambda: ring.waiting == 1)
        ring.release(a)  # handed to "early" directly
        assert a.owner == "early"
        assert ring.counts()["free"] == 0
        ring.release(b)  # nobody waits any more: onto the free list
        assert ring.counts()["free"] == 1
        got["late"] = await acquire_without_waiting(ring, "late")
    assert got == {"early": a, "late": b}
    assert ring.waiting == 0
    assert ring.blocked_seconds == 0.0  # "early" was served in the same instant


async def test_blocked_seconds_accumulates_wait_time(clock: trio.testing.MockClock) -> None:
    ring = make_ring(1)
    slot = await ring.acquire("holder")
    ring.seal(slot)
    assert ring.blocked_seconds == 0.0  # no wait on the fast path

    async def waiter(name: str) -> None:
        s = await ring.acquire(name)
        await trio.sleep(2)
        ring.release(s)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "w1")
        nursery.start_soon(waiter, "w2")
        await trio.sleep(3)
        ring.release(slot)
    # w1 waited 3 s, w2 waited 3 + 2 s.
    assert ring.blocked_seconds == pytest.approx(8.0, abs=EPS)

    before = ring.blocked_seconds
    s = await ring.acquire("fast")
    assert ring.blocked_seconds == before  # fast path adds nothing
    ring.release(s)


# -- cancellation ---------------------------------------------------------------------------


async def test_cancelled_waiter_leaves_queue_and_leaks_nothing(
    clock: trio.testing.MockClock,
) -> None:
    ring = make_ring(1)
    slot = await ring.acquire("holder")
    ring.seal(slot)
    result: list[Slot] = []

    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def waiter() -> None:
            with scope:
                result.append(await ring.acquire("cancelled"))

        nursery.start_soon(waiter)
        await settle_until(lambda: ring.waiting == 1)
        await trio.sleep(1)
        scope.cancel()
    assert scope.cancelled_caught
    assert result == []
    assert ring.waiting == 0
    assert ring.blocked_seconds == pytest.approx(1.0, abs=EPS)

    ring.release(slot)
    # Not handed to the departed waiter: it is free, and the next acquire gets it at once.
    assert slot.state is SlotState.FREE
    assert ring.counts()["free"] == 1
    again = await acquire_without_waiting(ring, "next")
    assert again is slot


async def test_cancel_then_hand_off_before_waiter_runs(clock: trio.testing.MockClock) -> None:
    """The race: the slot is handed to a waiter whose cancellation is already pending.

    The waiter must give the slot back (to the next waiter), not drop it.
    """
    ring = make_ring(1)
    slot = await ring.acquire("holder")
    ring.seal(slot)
    ring.start_upload(slot)
    got: dict[str, Slot] = {}
    scope = trio.CancelScope()

    async def victim() -> None:
        with scope:
            got["victim"] = await ring.acquire("victim")

    async def next_in_line() -> None:
        s = await ring.acquire("next")
        got["next"] = s

    async with trio.open_nursery() as nursery:
        nursery.start_soon(victim)
        await settle_until(lambda: ring.waiting == 1)
        nursery.start_soon(next_in_line)
        await settle_until(lambda: ring.waiting == 2)
        # No checkpoint between these two lines: the cancel is delivered (the victim is
        # rescheduled with Cancelled) and then the release hands it the slot anyway.
        scope.cancel()
        ring.release(slot)
        assert slot.owner == "victim"
    assert scope.cancelled_caught
    assert "victim" not in got
    assert got["next"] is slot
    assert slot.owner == "next"
    assert slot.state is SlotState.FILLING
    assert ring.waiting == 0
    assert assert_consistent(ring) == counts_of(free=0, filling=1, sealed=0, uploading=0)
    ring.release(slot)
    assert ring.counts()["free"] == 1


async def test_cancel_then_hand_off_with_no_other_waiter(clock: trio.testing.MockClock) -> None:
    ring = make_ring(2)
    a = await ring.acquire("a")
    b = await ring.acquire("b")
    ring.seal(a)
    ring.seal(b)
    scope = trio.CancelScope()
    got: list[Slot] = []

    async def victim() -> None:
        with scope:
            got.append(await ring.acquire("victim"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(victim)
        await settle_until(lambda: ring.waiting == 1)
        scope.cancel()
        ring.release(a)
    assert got == []
    assert a.state is SlotState.FREE
    assert a.owner is None
    assert ring.waiting == 0
    # The slot went back to the free list: the next acquire takes it without waiting.
    assert await acquire_without_waiting(ring, "again") is a
    ring.release(b)
    assert ring.counts() == counts_of(free=1, filling=1, sealed=0, uploading=0)


async def test_hand_off_then_cancel_keeps_slot_accounted(clock: trio.testing.MockClock) -> None:
    """Hand-off first, cancel second: the acquire has completed, so the caller owns the slot.

    Whatever the outcome, the slot must be either held by the caller or FREE again.
    """
    ring = make_ring(1)
    slot = await ring.acquire("holder")
    ring.seal(slot)
    scope = trio.CancelScope()
    got: list[Slot] = []

    async def victim() -> None:
        with scope:
            got.append(await ring.acquire("victim"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(victim)
        await settle_until(lambda: ring.waiting == 1)
        ring.release(slot)
        scope.cancel()
    assert ring.waiting == 0
    if got:
        assert got == [slot]
        assert slot.owner == "victim"
        assert slot.state is SlotState.FILLING
        ring.release(slot)
    assert slot.state is SlotState.FREE
    assert ring.counts()["free"] == 1


async def test_timeout_racing_a_release_never_leaks(clock: trio.testing.MockClock) -> None:
    """A waiter's deadline and a release falling on the same virtual instant, many times.

    Trio runs same-instant wakeups in varying order: sometimes the waiter has already left
    the queue when the slot frees, sometimes the slot is handed to a waiter whose timeout
    is already being delivered. Either way the slot must end up FREE, never stranded.
    """
    ring = make_ring(2)
    outcomes = {"got": 0, "left_before_release": 0, "handed_then_cancelled": 0}
    for _ in range(40):
        holder = await ring.acquire("holder")
        other = await ring.acquire("other")
        ring.seal(holder)
        ring.seal(other)
        got: list[Slot] = []
        handed: list[bool] = []

        async def waiter(got: list[Slot] = got) -> None:
            with trio.move_on_after(1.0):
                got.append(await ring.acquire("waiter"))

        async def releaser(holder: Slot = holder, handed: list[bool] = handed) -> None:
            await trio.sleep(1.0)
            ring.release(holder)
            handed.append(holder.owner == "waiter")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            nursery.start_soon(releaser)
        assert ring.waiting == 0
        if got:
            outcomes["got"] += 1
            assert got[0] is holder
            assert holder.owner == "waiter"
            ring.release(holder)
        else:
            outcomes["handed_then_cancelled" if handed[0] else "left_before_release"] += 1
            assert holder.state is SlotState.FREE
            assert holder.owner is None
        ring.release(other)
        assert ring.counts()["free"] == 2
        # The free list holds each slot exactly once.
        a = await acquire_without_waiting(ring, "x")
        b = await acquire_without_waiting(ring, "y")
        assert a is not b
        ring.release(a)
        ring.release(b)
    assert sum(outcomes.values()) == 40
    # The interesting interleaving (hand-off to a waiter already being cancelled) occurred.
    assert outcomes["handed_then_cancelled"] > 0, outcomes


# -- the progress rule ----------------------------------------------------------------------


async def test_exhausted_when_all_filling_and_idle(
    clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """(a) every slot FILLING and untouched: the waiter fails after about stall_grace."""
    ring = make_ring(3)
    for i in range(3):
        await ring.acquire(f"file{i}")
    start = trio.current_time()
    with (
        caplog.at_level(logging.ERROR, logger="chute.uploader.ring"),
        pytest.raises(RingExhausted) as info,
    ):
        await ring.acquire("one-too-many")
    elapsed = trio.current_time() - start
    # Not before the grace period (the slots were fresh when the wait began) ...
    assert elapsed >= GRACE - EPS
    # ... and within one check interval after it.
    assert elapsed <= GRACE + Ring.CHECK_INTERVAL + EPS
    assert info.value.errno == errno.ENOBUFS
    assert errno_for(info.value) == errno.ENOBUFS
    assert "--ring-size" in str(info.value)
    assert ring.waiting == 0
    assert ring.blocked_seconds == pytest.approx(elapsed, abs=EPS)
    assert any("--ring-size" in r.getMessage() for r in caplog.records)

    # Same condition, later acquire: fails at once, without waiting.
    start = trio.current_time()
    with pytest.raises(RingExhausted):
        await ring.acquire("again")
    assert trio.current_time() - start == 0
    assert ring.waiting == 0
    assert ring.counts() == counts_of(free=0, filling=3, sealed=0, uploading=0)


async def test_exhaustion_measured_from_last_activity(clock: trio.testing.MockClock) -> None:
    """Slots idle for 3 s already when the wait starts: it fails about 2 s later."""
    ring = make_ring(2)
    slots = [await ring.acquire(i) for i in range(2)]
    await trio.sleep(3)
    ring.touch(slots[0])  # the most recent activity decides
    await trio.sleep(1)
    start = trio.current_time()
    with pytest.raises(RingExhausted):
        await ring.acquire("late")
    elapsed = trio.current_time() - start
    assert GRACE - 1 - EPS <= elapsed <= GRACE - 1 + Ring.CHECK_INTERVAL + EPS


@pytest.mark.parametrize("state", [SlotState.SEALED, SlotState.UPLOADING])
async def test_never_exhausted_while_a_slot_is_in_flight(
    clock: trio.testing.MockClock, state: SlotState
) -> None:
    """(b) a SEALED/UPLOADING slot will free on its own: the waiter waits, however long."""
    ring = make_ring(3)
    idle = [await ring.acquire("idle0"), await ring.acquire("idle1")]
    busy = await ring.acquire("busy")
    ring.seal(busy)
    if state is SlotState.UPLOADING:
        ring.start_upload(busy)
    upload_time = 10 * GRACE
    got: list[tuple[Slot, float]] = []

    async def slow_upload() -> None:
        await trio.sleep(upload_time)
        ring.release(busy)

    async def waiter() -> None:
        slot = await ring.acquire("waiter")
        got.append((slot, trio.current_time()))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        nursery.start_soon(slow_upload)
    assert len(got) == 1
    slot, when = got[0]
    assert slot is busy
    assert slot.owner == "waiter"
    assert when - start == pytest.approx(upload_time, abs=EPS)
    assert all(s.state is SlotState.FILLING for s in idle)
    assert ring.blocked_seconds == pytest.approx(upload_time, abs=EPS)


async def test_not_exhausted_while_filling_slots_are_touched(
    clock: trio.testing.MockClock,
) -> None:
    """(c) writers that keep putting bytes into their slots will fill them eventually."""
    ring = make_ring(2)
    a = await ring.acquire("a")
    b = await ring.acquire("b")
    wait_for = 10 * GRACE
    got: list[Slot] = []

    async def slow_writer() -> None:
        deadline = trio.current_time() + wait_for
        while trio.current_time() < deadline:
            await trio.sleep(GRACE / 2)
            ring.touch(a)
        ring.seal(a)
        ring.start_upload(a)
        await trio.sleep(1)
        ring.release(a)

    async def waiter() -> None:
        got.append(await ring.acquire("waiter"))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_writer)
        nursery.start_soon(waiter)
    assert got == [a]
    assert trio.current_time() - start >= wait_for
    assert b.state is SlotState.FILLING  # b was never touched; a's activity sufficed
    assert ring.waiting == 0


async def test_twenty_writers_eight_slots_all_complete(clock: trio.testing.MockClock) -> None:
    """(d) many concurrent cp processes: each fills its own slot, so all progress."""
    ring = make_ring(8)
    writers, slices_each, uploaders = 20, 6, 4
    send, receive = trio.open_memory_channel[Slot](math.inf)
    written: dict[int, int] = {}
    uploaded: list[tuple[int, int]] = []
    max_held = 0

    def check() -> None:
        nonlocal max_held
        counts = assert_consistent(ring)
        max_held = max(max_held, len(ring.slots) - counts["free"])

    async def writer(n: int) -> None:
        for part in range(slices_each):
            slot = await ring.acquire(n)
            assert slot.owner == n
            assert slot.state is SlotState.FILLING
            slot.part_number = part + 1
            for _ in range(3):
                await trio.sleep(0.1)
                ring.touch(slot)
                check()
            ring.seal(slot)
            check()
            await send.send(slot)
            written[n] = written.get(n, 0) + 1

    async def uploader() -> None:
        async for slot in receive:
            ring.start_upload(slot)
            check()
            uploaded.append((slot.owner, slot.part_number))
            await trio.sleep(1.5)
            ring.release(slot)
            check()

    async with trio.open_nursery() as nursery:
        for _ in range(uploaders):
            nursery.start_soon(uploader)
        async with send, trio.open_nursery() as writers_nursery:
            for n in range(writers):
                writers_nursery.start_soon(writer, n)

    assert written == dict.fromkeys(range(writers), slices_each)
    assert len(uploaded) == writers * slices_each
    assert sorted(uploaded) == [
        (n, p) for n in range(writers) for p in range(1, slices_each + 1)
    ]
    assert ring.counts() == counts_of(free=8, filling=0, sealed=0, uploading=0)
    assert ring.waiting == 0
    assert max_held == 8  # backpressure really engaged ...
    assert ring.blocked_seconds > 0  # ... and writers really waited


async def test_one_writer_round_robin_exhausts_quickly(
    clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """(e) one process holding every slot's FILLING file asks for one more: ENOBUFS."""
    ring = make_ring(4)
    files = [await ring.acquire(f"file{i}") for i in range(4)]
    for _ in range(3):  # round-robin writes keep all four fresh ...
        await trio.sleep(0.5)
        for slot in files:
            ring.touch(slot)
    # ... until the writer blocks on file 5, which it alone could have made room for.
    start = trio.current_time()
    with (
        caplog.at_level(logging.DEBUG, logger="chute.uploader.ring"),
        pytest.raises(RingExhausted) as info,
    ):
        await ring.acquire("file4")
    elapsed = trio.current_time() - start
    assert elapsed <= GRACE + Ring.CHECK_INTERVAL + EPS
    assert info.value.errno == errno.ENOBUFS
    records = [r for r in caplog.records if r.name == "chute.uploader.ring"]
    assert records, "no log line about the exhausted ring"
    assert any(
        r.levelno >= logging.ERROR and "--ring-size" in r.getMessage() for r in records
    )
    assert all(s.state is SlotState.FILLING and s.owner is not None for s in files)
    assert ring.waiting == 0

    # The next file the writer opens fails at once.
    start = trio.current_time()
    with pytest.raises(RingExhausted):
        await ring.acquire("file5")
    assert trio.current_time() - start == 0


async def test_exhaustion_recovers_once_a_slot_frees(clock: trio.testing.MockClock) -> None:
    """The rule only fires while nothing can free: releasing a slot serves later acquires."""
    ring = make_ring(2)
    a = await ring.acquire("a")
    await ring.acquire("b")
    await trio.sleep(GRACE + 1)
    with pytest.raises(RingExhausted):
        await ring.acquire("c")
    ring.release(a)
    assert await acquire_without_waiting(ring, "c") is a


async def test_waiters_all_fail_together_and_queue_empties(clock: trio.testing.MockClock) -> None:
    ring = make_ring(2)
    for i in range(2):
        await ring.acquire(i)
    failures: list[float] = []

    async def waiter() -> None:
        with pytest.raises(RingExhausted):
            await ring.acquire("w")
        failures.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(waiter)
    assert len(failures) == 5
    assert all(GRACE - EPS <= t - start <= GRACE + Ring.CHECK_INTERVAL + EPS for t in failures)
    assert ring.waiting == 0
    assert ring.counts() == counts_of(free=0, filling=2, sealed=0, uploading=0)


# -- retained slices (header patches) ----------------------------------------------------------


class Retaining:
    """A file that retains slots as FileUpload does, and seals one when the ring asks."""

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self.released: list[int] = []

    async def full_slot(self, part_number: int) -> Slot:
        slot = await self.ring.acquire(self)
        slot.part_number = part_number
        self.ring.retain(slot)
        return slot

    def release_retained(self, slot: Slot) -> None:
        self.released.append(slot.part_number)
        self.ring.seal(slot)


async def test_retained_slot_lifecycle(clock: trio.testing.MockClock) -> None:
    ring = make_ring(3)
    owner = Retaining(ring)
    head = await owner.full_slot(1)
    assert head.state is SlotState.RETAINED
    assert assert_consistent(ring) == counts_of(free=2, retained=1)
    ring.seal(head)  # the file closed: its first slice goes last, as part 1
    assert assert_consistent(ring) == counts_of(free=2, sealed=1)
    ring.start_upload(head)
    ring.release(head)
    # A small file's retained slice is claimed and sent by PutObject; an aborted one freed.
    head = await owner.full_slot(1)
    ring.claim(head)
    assert assert_consistent(ring) == counts_of(free=2, uploading=1)
    ring.release(head)
    head = await owner.full_slot(1)
    ring.release(head)
    assert assert_consistent(ring) == counts_of(free=3)
    assert owner.released == []


async def test_waiter_takes_a_retained_slot_when_nothing_is_in_flight(
    clock: trio.testing.MockClock,
) -> None:
    """The progress rule with retention: retained slots are not idle FILLING slots. A writer
    that would otherwise wait forever makes one (the latest full before the first) upload."""
    ring = make_ring(3)
    owner = Retaining(ring)
    await owner.full_slot(1)
    await owner.full_slot(2)
    await ring.acquire(owner)  # FILLING, and never touched again
    got: list[Slot] = []

    async def waiter() -> None:
        got.append(await ring.acquire("other"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await settle_until(lambda: owner.released == [2])
        assert assert_consistent(ring) == counts_of(filling=1, retained=1, sealed=1)
        sealed = next(s for s in ring.slots if s.state is SlotState.SEALED)
        ring.start_upload(sealed)
        ring.release(sealed)
    assert got and got[0].owner == "other"
    assert owner.released == [2]  # the first slice is still retained
    assert assert_consistent(ring) == counts_of(filling=2, retained=1)


async def test_retained_slots_stay_while_uploads_are_busy(clock: trio.testing.MockClock) -> None:
    """A fast writer and a slow store: the waiter is served by an upload, and the retained
    slices stay writable (ordinary backpressure must not cost header patches)."""
    ring = Ring(4, SLICE, stall_grace=GRACE, upload_concurrency=2)
    owner = Retaining(ring)
    await owner.full_slot(1)
    await owner.full_slot(2)
    flying = [await ring.acquire(owner) for _ in range(2)]
    for slot in flying:
        ring.seal(slot)
        ring.start_upload(slot)
    got: list[Slot] = []

    async def waiter() -> None:
        got.append(await ring.acquire(owner))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(10 * GRACE)  # long past the grace: uploads are slow, not stuck
        assert not got
        ring.release(flying[0])
    assert got
    assert owner.released == []
    assert assert_consistent(ring) == counts_of(retained=2, uploading=1, filling=1)


async def test_retained_slots_give_way_when_uploads_starve(clock: trio.testing.MockClock) -> None:
    """Fewer slots in flight than the upload concurrency: a waiting writer takes a retained
    slot into the uploads, first the latest-full ones, then first slices, oldest first."""
    ring = Ring(4, SLICE, stall_grace=GRACE, upload_concurrency=2)
    a, b = Retaining(ring), Retaining(ring)
    await a.full_slot(1)
    await b.full_slot(1)
    await b.full_slot(3)
    flying = await ring.acquire("x")
    ring.seal(flying)
    ring.start_upload(flying)

    async def waiter() -> None:
        await ring.acquire("y")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await settle_until(lambda: b.released == [3])
        assert a.released == []
        ring.release(flying)  # the waiter is served; nothing else is released
    assert (a.released, b.released) == ([], [3])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await settle_until(lambda: a.released == [1])
        for slot in list(ring.slots):
            if slot.state is SlotState.SEALED:
                ring.start_upload(slot)
                ring.release(slot)
                break
    assert b.released == [3]
