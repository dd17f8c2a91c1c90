"""The store-side read engine (uploader/read_budget.py, uploader/prefetch.py) on the memory S3.

Virtual time throughout (``autojump_clock``): a slow store is a ``trio.sleep`` per GET.
"""

from __future__ import annotations

import errno
import random

import pytest
import trio

from chute.uploader.errors import ChuteError, ObjectChanged, errno_for
from chute.uploader.prefetch import DEFAULT_TUNING, ObjectReader, ReadTuning, open_reader
from chute.uploader.read_budget import ReadBudget
from chute.uploader.retry import RetryPolicy
from chute.uploader.s3 import S3Client
from tests.support.memory_s3 import MemoryS3, memory_client

KiB = 1024
MiB = 1024 * KiB
KERNEL_READ = 128 * KiB


def body_of(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


class SlowStore:
    """A RangeSource in front of the memory S3: each GET takes ``latency`` plus its size at
    ``rate`` bytes/s (virtual time), and the GETs in flight are counted."""

    def __init__(self, client: S3Client, *, latency: float = 0.02,
                 rate: float = 200 * MiB) -> None:
        self.client = client
        self.latency = latency
        self.rate = rate
        self.in_flight = 0
        self.peak_in_flight = 0

    async def get_range(self, key: str, first: int, last: int, *,
                        if_match: str | None = None,
                        into: memoryview | None = None) -> bytes | memoryview:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await trio.sleep(self.latency + (last - first + 1) / self.rate)
            return await self.client.get_range(key, first, last, if_match=if_match, into=into)
        finally:
            self.in_flight -= 1


@pytest.fixture
def store() -> MemoryS3:
    return MemoryS3()


@pytest.fixture
def client(store: MemoryS3) -> S3Client:
    return memory_client(store, policy=RetryPolicy(budget=30.0))


def get_ranges(store: MemoryS3, key: str = "obj") -> list[tuple[int, int]]:
    """(first, size) of every GetObject of ``key``, in order."""
    found = []
    for request in store.requests:
        if request.operation == "GetObject" and request.key == key:
            first, _, last = request.headers["range"].removeprefix("bytes=").partition("-")
            found.append((int(first), int(last) - int(first) + 1))
    return found


async def read_all(reader: ObjectReader, start: int = 0, step: int = KERNEL_READ) -> bytes:
    parts = []
    offset = start
    while True:
        data = await reader.read(offset, step)
        if not data:
            return b"".join(parts)
        parts.append(data)
        offset += len(data)


# -- the budget ---------------------------------------------------------------------------


async def test_budget_prefetch_never_takes_the_demand_reserve() -> None:
    budget = ReadBudget(4 * MiB, demand_reserve=1 * MiB)
    assert budget.try_prefetch(3 * MiB)
    assert not budget.try_prefetch(1)
    await budget.acquire_demand(1 * MiB)  # the reserve is always there for a demanded read
    assert budget.statistics().in_use == 4 * MiB
    budget.release(1 * MiB)
    budget.release(3 * MiB)
    assert budget.statistics().peak_in_use == 4 * MiB
    with pytest.raises(ValueError):
        await budget.acquire_demand(1 * MiB + 1)


async def test_budget_demand_waits_fifo_and_blocks_prefetch(autojump_clock: object) -> None:
    budget = ReadBudget(2 * MiB, demand_reserve=1 * MiB)
    assert budget.try_prefetch(1 * MiB)
    await budget.acquire_demand(1 * MiB)
    order = []

    async def demand(name: str, size: int) -> None:
        async with budget.demand(size):
            order.append(name)
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(demand, "first", 1 * MiB)
        await trio.sleep(0.1)
        nursery.start_soon(demand, "second", 512 * KiB)
        await trio.sleep(0.1)
        assert budget.statistics().waiters == 2
        assert not budget.try_prefetch(1)  # waiters come first
        budget.release(1 * MiB)  # the prefetch goes: "first" fits
        await trio.sleep(0.1)
        assert order == ["first"]
        budget.release(1 * MiB)  # our own demand: "second" fits too
    assert order == ["first", "second"]
    assert budget.statistics().in_use == 0


async def test_budget_cancelled_waiter_leaves_nothing_charged(autojump_clock: object) -> None:
    budget = ReadBudget(1 * MiB, demand_reserve=1 * MiB)
    await budget.acquire_demand(1 * MiB)
    with trio.move_on_after(1):
        await budget.acquire_demand(1 * MiB)
    stats = budget.statistics()
    assert (stats.waiters, stats.in_use) == (0, 1 * MiB)
    budget.release(1 * MiB)
    assert budget.statistics().in_use == 0


# -- sequential reads -----------------------------------------------------------------------


async def test_sequential_read_grows_requests_with_several_in_flight(
        store: MemoryS3, client: S3Client, autojump_clock: object) -> None:
    body = body_of(40 * MiB + 12345)
    etag = store.put("obj", body).etag
    slow = SlowStore(client)
    budget = ReadBudget()
    async with open_reader(slow, budget, key="obj", size=len(body), etag=etag) as reader:
        assert await read_all(reader) == body
        assert await reader.read(len(body), KERNEL_READ) == b""
        assert await reader.read(len(body) - 10, KERNEL_READ) == body[-10:]
    ranges = sorted(get_ranges(store))  # the tail's re-read came from the kept tail
    sizes = [size for _, size in ranges]
    # Contiguous, growing from the initial request by doubling up to the cap.
    assert [first for first, _ in ranges] == [sum(sizes[:i]) for i in range(len(ranges))]
    assert sum(sizes) == len(body)
    assert sizes[:5] == [512 * KiB, 1 * MiB, 2 * MiB, 4 * MiB, 8 * MiB]
    assert max(sizes) == DEFAULT_TUNING.max_request
    assert slow.peak_in_flight >= 3
    assert all(r.headers["if-match"] == f'"{etag}"' for r in store.requests)
    stats = budget.statistics()
    assert stats.in_use == 0 and stats.readers == 0
    assert stats.peak_in_use <= DEFAULT_TUNING.max_window
    assert stats.bytes_served == len(body) + 10
    assert stats.bytes_fetched == len(body) and stats.bytes_discarded == 0


async def test_small_object_is_one_get(store: MemoryS3, client: S3Client) -> None:
    body = body_of(100 * KiB)
    etag = store.put("obj", body).etag
    async with open_reader(client, ReadBudget(), key="obj", size=len(body),
                           etag=etag) as reader:
        assert await read_all(reader) == body
    assert get_ranges(store) == [(0, len(body))]


async def test_empty_object_reads_nothing(store: MemoryS3, client: S3Client) -> None:
    etag = store.put("obj", b"").etag
    async with open_reader(client, ReadBudget(), key="obj", size=0, etag=etag) as reader:
        assert await reader.read(0, KERNEL_READ) == b""
    assert get_ranges(store) == []


async def test_concurrent_reads_of_one_handle_get_their_own_bytes(
        store: MemoryS3, client: S3Client, autojump_clock: object) -> None:
    body = body_of(6 * MiB)
    etag = store.put("obj", body).etag
    results: dict[int, bytes] = {}
    async with open_reader(SlowStore(client), ReadBudget(), key="obj", size=len(body),
                           etag=etag) as reader:

        async def read(offset: int) -> None:
            results[offset] = await reader.read(offset, KERNEL_READ)

        async with trio.open_nursery() as nursery:
            for offset in range(0, len(body), KERNEL_READ):
                nursery.start_soon(read, offset)
    assert b"".join(results[o] for o in sorted(results)) == body


# -- seeks and random reads -----------------------------------------------------------------


async def test_seek_outside_the_window_starts_small_again(
        store: MemoryS3, client: S3Client, autojump_clock: object) -> None:
    body = body_of(64 * MiB)
    etag = store.put("obj", body).etag
    budget = ReadBudget()
    async with open_reader(SlowStore(client), budget, key="obj", size=len(body),
                           etag=etag) as reader:
        for offset in range(0, 4 * MiB, KERNEL_READ):
            assert await reader.read(offset, KERNEL_READ) == body[offset:offset + KERNEL_READ]
        # A small step back, and a read a little ahead: both inside the window, no new GET.
        before = budget.statistics().requests
        assert await reader.read(4 * MiB - 200 * KiB, 4096) == body[
            4 * MiB - 200 * KiB:4 * MiB - 200 * KiB + 4096]
        assert await reader.read(5 * MiB, KERNEL_READ) == body[5 * MiB:5 * MiB + KERNEL_READ]
        assert budget.statistics().requests == before
        in_use_before = budget.statistics().in_use
        assert in_use_before > 0
        far = 48 * MiB
        assert await reader.read(far, KERNEL_READ) == body[far:far + KERNEL_READ]
        first, size = max(get_ranges(store))
        assert (first, size) == (far, KERNEL_READ + DEFAULT_TUNING.random_extra)
        assert budget.statistics().in_use == size  # the old window's budget came back
        assert budget.statistics().bytes_discarded > 0
        # Reading on from there: sequential again, growing from the initial size.
        assert await read_all(reader, far + KERNEL_READ) == body[far + KERNEL_READ:]
    after = [s for f, s in sorted(get_ranges(store)) if f > far]
    assert after[:4] == [512 * KiB, 1 * MiB, 2 * MiB, 4 * MiB]
    assert budget.statistics().in_use == 0


async def test_random_reads_fetch_small_ranges(store: MemoryS3, client: S3Client) -> None:
    body = body_of(32 * MiB)
    etag = store.put("obj", body).etag
    budget = ReadBudget()
    rng = random.Random(7)
    offsets = [rng.randrange(0, len(body) - 4096) for _ in range(60)]
    async with open_reader(client, budget, key="obj", size=len(body), etag=etag) as reader:
        for offset in offsets:
            assert await reader.read(offset, 4096) == body[offset:offset + 4096]
    sizes = [size for _, size in get_ranges(store)]
    assert len(sizes) <= len(offsets)
    assert max(sizes) <= 4096 + DEFAULT_TUNING.random_extra
    assert budget.statistics().bytes_fetched <= len(offsets) * (4096 + 64 * KiB)


# -- many readers, one budget ---------------------------------------------------------------


async def test_many_readers_share_the_budget_without_deadlock(
        store: MemoryS3, client: S3Client, autojump_clock: object) -> None:
    # 24 readers of 3 MiB objects, a 4 MiB budget: far more readers than budget / request.
    budget = ReadBudget(4 * MiB)
    bodies = {f"obj{i}": body_of(3 * MiB + i * 1000, seed=i) for i in range(24)}
    etags = {key: store.put(key, body).etag for key, body in bodies.items()}
    slow = SlowStore(client)
    read_back: dict[str, bytes] = {}

    async def reader_task(key: str) -> None:
        async with open_reader(slow, budget, key=key, size=len(bodies[key]),
                               etag=etags[key]) as reader:
            read_back[key] = await read_all(reader)

    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            for key in bodies:
                nursery.start_soon(reader_task, key)
    assert read_back == bodies
    stats = budget.statistics()
    assert stats.peak_in_use <= stats.budget
    assert (stats.in_use, stats.readers, stats.waiters) == (0, 0, 0)
    assert slow.peak_in_flight > 4


async def open_idle_readers(nursery: trio.Nursery, budget: ReadBudget, client: S3Client,
                            size: int, etag: str, count: int = 6) -> list[ObjectReader]:
    """``count`` readers that each read a little, then keep their windows, open and idle."""
    idle = []
    for _ in range(count):
        reader = ObjectReader(client, budget, key="obj", size=size, etag=etag, nursery=nursery)
        for offset in range(0, 4 * KERNEL_READ, KERNEL_READ):
            await reader.read(offset, KERNEL_READ)
        idle.append(reader)
    await trio.sleep(5)
    return idle


async def test_readers_holding_all_prefetch_cannot_block_a_reader(
        store: MemoryS3, client: S3Client, autojump_clock: object) -> None:
    # Never reclaimed: the new reader must still make progress, on demand.
    budget = ReadBudget(8 * MiB, demand_reserve=1 * MiB, idle_after=float("inf"))
    body = body_of(32 * MiB)
    etag = store.put("obj", body).etag
    async with trio.open_nursery() as nursery:
        idle = await open_idle_readers(nursery, budget, client, len(body), etag)
        assert budget.statistics().in_use == budget.prefetch_capacity  # all prefetch is held
        with trio.fail_after(600):
            async with open_reader(client, budget, key="obj", size=len(body),
                                   etag=etag) as reader:
                assert await read_all(reader, 3 * MiB) == body[3 * MiB:]
        for reader in idle:
            await reader.aclose()
    stats = budget.statistics()
    assert stats.peak_in_use <= stats.budget and stats.in_use == 0
    assert stats.bytes_reclaimed == 0


async def test_idle_readers_windows_are_reclaimed(
        store: MemoryS3, client: S3Client, autojump_clock: object) -> None:
    budget = ReadBudget(8 * MiB, demand_reserve=1 * MiB)
    body = body_of(32 * MiB)
    etag = store.put("obj", body).etag
    async with trio.open_nursery() as nursery:
        idle = await open_idle_readers(nursery, budget, client, len(body), etag)
        assert budget.statistics().in_use == budget.prefetch_capacity
        gets_before = len(get_ranges(store))
        async with open_reader(client, budget, key="obj", size=len(body),
                               etag=etag) as reader:
            assert await read_all(reader) == body
        # It prefetched with growing requests, not kernel-sized demanded reads.
        assert max(size for _, size in get_ranges(store)[gets_before:]) >= 2 * MiB
        assert budget.statistics().bytes_reclaimed > 0
        # A reclaimed reader reads on as before, sequentially.
        offset = 4 * KERNEL_READ
        assert await read_all(idle[0], offset) == body[offset:]
        for reader in idle:
            await reader.aclose()
    stats = budget.statistics()
    assert stats.peak_in_use <= stats.budget and stats.in_use == 0


async def test_idle_readers_do_not_shrink_an_active_readers_window(
        store: MemoryS3, client: S3Client, autojump_clock: object) -> None:
    budget = ReadBudget()
    body = body_of(64 * MiB)
    etag = store.put("obj", body).etag
    async with trio.open_nursery() as nursery:
        idle = await open_idle_readers(nursery, budget, client, len(body), etag, count=20)
        gets_before = len(get_ranges(store))
        async with open_reader(SlowStore(client), budget, key="obj", size=len(body),
                               etag=etag) as reader:
            assert await read_all(reader) == body
        assert max(size for _, size in get_ranges(store)[gets_before:]) == 8 * MiB
        for reader in idle:
            await reader.aclose()
    stats = budget.statistics()
    assert stats.peak_in_use <= stats.budget and stats.in_use == 0


# -- failures -------------------------------------------------------------------------------


async def test_object_replaced_mid_read_is_estale_never_mixed(
        store: MemoryS3, client: S3Client, autojump_clock: object) -> None:
    old, new = body_of(24 * MiB, seed=1), body_of(24 * MiB, seed=2)
    etag = store.put("obj", old).etag
    got = bytearray()
    async with open_reader(SlowStore(client), ReadBudget(), key="obj", size=len(old),
                           etag=etag) as reader:
        with pytest.raises(ObjectChanged) as raised:
            while True:
                data = await reader.read(len(got), KERNEL_READ)
                assert data
                got += data
                if len(got) == 2 * MiB:
                    store.put("obj", new)
        assert errno_for(raised.value) == errno.ESTALE
        assert 2 * MiB <= len(got) < len(old)
        assert bytes(got) == old[:len(got)]  # every byte served is the pinned version's
        with pytest.raises(ObjectChanged):  # and it stays stale
            await reader.read(0, KERNEL_READ)


async def test_object_deleted_mid_read_is_estale(
        store: MemoryS3, client: S3Client, autojump_clock: object) -> None:
    body = body_of(20 * MiB)
    etag = store.put("obj", body).etag
    async with open_reader(client, ReadBudget(), key="obj", size=len(body),
                           etag=etag) as reader:
        assert await reader.read(0, KERNEL_READ) == body[:KERNEL_READ]
        del store.objects["obj"]
        with pytest.raises(ObjectChanged):
            await read_all(reader, KERNEL_READ)


async def test_503_mid_read_is_retried_and_bytes_are_exact(
        store: MemoryS3, client: S3Client, autojump_clock: object) -> None:
    body = body_of(20 * MiB)
    etag = store.put("obj", body).etag
    async with open_reader(client, ReadBudget(), key="obj", size=len(body),
                           etag=etag) as reader:
        head = await reader.read(0, KERNEL_READ)
        fault = store.fail_next("GetObject", status=503, times=3)
        rest = await read_all(reader, KERNEL_READ)
    assert head + rest == body
    assert fault.hits == 3


async def test_store_down_past_the_retry_budget_is_eio_then_recovers(
        store: MemoryS3, autojump_clock: object) -> None:
    client = memory_client(store, policy=RetryPolicy(budget=5.0))
    body = body_of(4 * MiB)
    etag = store.put("obj", body).etag
    budget = ReadBudget()
    async with open_reader(client, budget, key="obj", size=len(body), etag=etag) as reader:
        store.fail_next("GetObject", status=503, times=1000)
        with pytest.raises(ChuteError) as raised:
            await reader.read(0, KERNEL_READ)
        assert errno_for(raised.value) == errno.EIO
        assert budget.statistics().in_use == 0
        store.faults.clear()
        assert await read_all(reader) == body


async def test_closing_mid_prefetch_returns_all_budget(
        store: MemoryS3, client: S3Client, autojump_clock: object) -> None:
    body = body_of(64 * MiB)
    etag = store.put("obj", body).etag
    budget = ReadBudget()
    slow = SlowStore(client, latency=5.0)
    async with trio.open_nursery() as nursery:
        reader = ObjectReader(slow, budget, key="obj", size=len(body), etag=etag,
                              nursery=nursery)
        for offset in range(0, 2 * MiB, KERNEL_READ):
            await reader.read(offset, KERNEL_READ)
        assert slow.in_flight > 0 and budget.statistics().in_use > 0
        started = trio.current_time()
        await reader.aclose()
        assert budget.statistics().in_use == 0
        assert budget.statistics().readers == 0
    assert trio.current_time() - started < 1.0  # the GETs in flight were cancelled
    assert slow.in_flight == 0
    with pytest.raises(ChuteError):
        await reader.read(0, KERNEL_READ)


async def test_tuning_is_respected(store: MemoryS3, client: S3Client,
                                   autojump_clock: object) -> None:
    tuning = ReadTuning(initial_request=64 * KiB, max_request=256 * KiB, max_window=1 * MiB)
    body = body_of(5 * MiB)
    etag = store.put("obj", body).etag
    budget = ReadBudget()
    async with open_reader(SlowStore(client), budget, key="obj", size=len(body), etag=etag,
                           tuning=tuning) as reader:
        assert await read_all(reader, step=32 * KiB) == body
    sizes = [size for _, size in sorted(get_ranges(store))]
    assert sizes[:3] == [64 * KiB, 128 * KiB, 256 * KiB] and max(sizes) == 256 * KiB
    assert budget.statistics().peak_in_use <= 1 * MiB


async def test_aligned_requests_fall_on_block_boundaries(
        store: MemoryS3, client: S3Client, autojump_clock: object) -> None:
    tuning = ReadTuning(max_request=2 * MiB, max_window=8 * MiB, align=2 * MiB)
    body = body_of(21 * MiB + 5)
    etag = store.put("obj", body).etag
    async with open_reader(SlowStore(client), ReadBudget(), key="obj", size=len(body),
                           etag=etag, tuning=tuning) as reader:
        assert await read_all(reader, step=1 * MiB) == body
        assert await reader.read(7 * MiB - 100, 200) == body[7 * MiB - 100:7 * MiB + 100]
    ranges = get_ranges(store)
    sequential = sorted(ranges[:-1])
    # The growing requests stop at the first boundary; from there each GET is one block.
    assert [size for _, size in sequential[:3]] == [1 * MiB, 1 * MiB, 2 * MiB]
    assert all(first % (2 * MiB) == 0 and size == 2 * MiB for first, size in sequential[2:-1])
    assert sum(size for _, size in sequential) == len(body)
    assert ranges[-1] == (7 * MiB - 100, 200 + tuning.random_extra)  # a seek: as asked
