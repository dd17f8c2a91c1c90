"""A streaming reader's window (uploader/prefetch.py): it refills as its GETs answer, keeps at
most ``max_in_flight`` GETs in flight and the rest of the window for GETs answered ahead of
the reader, stays within its fair share of the budget, and a probe does not fill it.

Virtual time throughout (``autojump_clock``); the store is a scripted RangeSource whose GETs
take the time a test gives each offset.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import trio

from chute.uploader.prefetch import ObjectReader, ReadTuning, open_reader
from chute.uploader.read_budget import ReadBudget

KiB = 1024
MiB = 1024 * KiB
TUNING = ReadTuning(initial_request=1 * MiB, max_request=1 * MiB, align=1 * MiB,
                    max_window=8 * MiB, max_in_flight=4)
"""Small numbers for a mount's shape: 8 requests fit the window, half of them in flight."""


class ScriptedStore:
    """GETs of ``body`` taking ``seconds(first)`` each; counts what is sent and in flight."""

    def __init__(self, body: bytes, seconds: Callable[[int], float]) -> None:
        self.body = body
        self.seconds = seconds
        self.sent: list[tuple[float, int]] = []
        self.in_flight = 0
        self.peak_in_flight = 0

    async def get_range(self, key: str, first: int, last: int, *,
                        if_match: str | None = None,
                        into: memoryview | None = None) -> bytes | memoryview:
        self.sent.append((trio.current_time(), first))
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await trio.sleep(self.seconds(first))
            data = self.body[first:last + 1]
            if into is None:
                return data
            into[:len(data)] = data
            return into[:len(data)]
        finally:
            self.in_flight -= 1


def body_of(size: int) -> bytes:
    return random.Random(7).randbytes(size)


async def read_range(reader: ObjectReader, start: int, end: int, step: int = 128 * KiB
                     ) -> bytes:
    parts = []
    for offset in range(start, end, step):
        parts.append(await reader.read(offset, min(step, end - offset)))
    return b"".join(parts)


async def test_the_window_refills_as_gets_answer_while_the_reader_waits(
        autojump_clock: object) -> None:
    """The GET at 4 MiB takes 10 s, every other 0.1 s: while the reader waits for it, the
    connections whose GETs answered go on at once (no read comes to send them), until the
    window is full of answered GETs; never more than max_in_flight at a time."""
    body = body_of(32 * MiB)
    store = ScriptedStore(body, lambda first: 10.0 if first == 4 * MiB else 0.1)
    budget = ReadBudget(64 * MiB)
    async with open_reader(store, budget, key="k", size=len(body), etag="e",
                           tuning=TUNING) as reader:
        assert await read_range(reader, 0, 4 * MiB) == body[:4 * MiB]
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            async def waiting_read() -> None:
                assert await reader.read(4 * MiB, 128 * KiB) == body[4 * MiB:4 * MiB + 128 * KiB]

            nursery.start_soon(waiting_read)
            await trio.sleep(5)  # the reader waits for the slow GET; no read meanwhile
            sent_while_waiting = [first for at, first in store.sent if at > started + 0.05]
            # Refilled from the answers alone, up to the window's end: [3 MiB (kept tail
            # of the chunk read), 11 MiB), i.e. through the GET at 10 MiB.
            assert sent_while_waiting and max(sent_while_waiting) == 10 * MiB
            assert budget.statistics().in_use <= TUNING.max_window
            assert store.in_flight == 1  # only the slow one: the window is full
        assert store.peak_in_flight <= TUNING.max_in_flight
        rest = 4 * MiB + 128 * KiB
        assert await read_range(reader, rest, len(body)) == body[rest:]
    assert store.peak_in_flight == TUNING.max_in_flight
    assert budget.statistics().peak_in_use <= TUNING.max_window
    assert budget.statistics().in_use == 0


async def test_a_fair_share_caps_each_streaming_readers_window(autojump_clock: object) -> None:
    """Two readers streaming at once over a budget whose prefetch part is 8 MiB: neither
    holds more than its half, and both read everything exactly."""
    body = body_of(24 * MiB)
    store = ScriptedStore(body, lambda first: 0.2)
    budget = ReadBudget(9 * MiB, demand_reserve=1 * MiB)
    peaks = []

    async def one_reader() -> None:
        async with open_reader(store, budget, key="k", size=len(body), etag="e",
                               tuning=TUNING) as reader:
            peak = 0
            for offset in range(0, len(body), 128 * KiB):
                assert await reader.read(offset, 128 * KiB) == body[offset:offset + 128 * KiB]
                peak = max(peak, sum(chunk.charged for chunk in reader._chunks))
                await trio.sleep(0.01)
            peaks.append(peak)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one_reader)
        nursery.start_soon(one_reader)
    assert len(peaks) == 2 and all(peak <= 4 * MiB + 128 * KiB for peak in peaks)
    assert budget.statistics().in_use == 0


async def test_a_probe_does_not_fill_the_window(autojump_clock: object) -> None:
    """A reader that reads its first 256 KiB and stops (a header probe) sends one request
    ahead per read (512 KiB, 1 and 2 MiB, as before streaming existed), and nothing more as
    they answer: not the 96 MiB window."""
    body = body_of(64 * MiB)
    store = ScriptedStore(body, lambda first: 0.1)
    tuning = ReadTuning(max_request=8 * MiB, align=8 * MiB, max_window=96 * MiB,
                        max_in_flight=6)
    async with open_reader(store, ReadBudget(128 * MiB), key="k", size=len(body), etag="e",
                           tuning=tuning) as reader:
        assert await read_range(reader, 0, 256 * KiB) == body[:256 * KiB]
        await trio.sleep(1)
        assert sorted(first for _, first in store.sent) == [0, 512 * KiB, 1536 * KiB]
        assert sum(chunk.end - chunk.start for chunk in reader._chunks) == 3584 * KiB


async def test_a_streaming_reader_that_seeks_starts_small_again(autojump_clock: object) -> None:
    """After a seek the run starts over: one request ahead per read until it is
    ``max_request`` long, then the window fills again."""
    body = body_of(48 * MiB)
    store = ScriptedStore(body, lambda first: 0.1)
    tuning = ReadTuning(initial_request=512 * KiB, max_request=2 * MiB, align=2 * MiB,
                        max_window=16 * MiB, max_in_flight=4)
    async with open_reader(store, ReadBudget(64 * MiB), key="k", size=len(body), etag="e",
                           tuning=tuning) as reader:
        assert await read_range(reader, 0, 8 * MiB) == body[:8 * MiB]
        assert reader._streaming
        assert await reader.read(40 * MiB, 128 * KiB) == body[40 * MiB:40 * MiB + 128 * KiB]
        assert not reader._streaming
        before = len(store.sent)
        await trio.sleep(1)
        assert len(store.sent) == before  # not streaming: its answers send nothing
        assert await read_range(reader, 40 * MiB + 128 * KiB, 43 * MiB) == \
            body[40 * MiB + 128 * KiB:43 * MiB]
        assert reader._streaming


MOUNT_LIKE = ReadTuning(max_request=8 * MiB, align=8 * MiB, max_window=104 * MiB,
                        max_in_flight=8, stream_from_start=1 * MiB)
"""A mount's shape (fs/reads.py mount_tuning): a whole-file reader streams after 1 MiB."""


async def test_a_whole_file_reader_streams_after_its_first_mib(autojump_clock: object) -> None:
    """One 1 MiB read from the first byte (the kernel's full readahead: dd, cp, tar) fills
    the window at once, in max_request GETs on the store's 8 MiB blocks, max_in_flight of
    them, before the first has answered: the connections share their slow start."""
    body = body_of(128 * MiB)
    store = ScriptedStore(body, lambda first: 1.0)
    async with open_reader(store, ReadBudget(128 * MiB), key="k", size=len(body), etag="e",
                           tuning=MOUNT_LIKE) as reader:
        assert await reader.read(0, 1 * MiB) == body[:1 * MiB]
        assert reader._streaming
        first_answer = 1.0
        sent = sorted(first for at, first in store.sent if at < first_answer)
        assert sent == [0, 1 * MiB, *range(8 * MiB, 48 * MiB + 1, 8 * MiB)]  # 8 in flight
        assert store.peak_in_flight == 8
        assert await read_range(reader, 1 * MiB, 128 * MiB, 1 * MiB) == body[1 * MiB:]


async def test_a_run_after_a_jump_still_starts_small(autojump_clock: object) -> None:
    """The same 1 MiB read, and the next, at a jump (a piece of a pack: restic, borg) send
    one request ahead per read, growing from 512 KiB: a run that did not begin at the first
    byte streams only once max_request long."""
    body = body_of(128 * MiB)
    store = ScriptedStore(body, lambda first: 0.1)
    async with open_reader(store, ReadBudget(128 * MiB), key="k", size=len(body), etag="e",
                           tuning=MOUNT_LIKE) as reader:
        start = 40 * MiB + 4 * KiB
        assert await read_range(reader, start, start + 3 * MiB, 1 * MiB) == \
            body[start:start + 3 * MiB]
        assert not reader._streaming
        await trio.sleep(1)
        fetched = sum(chunk.end - chunk.start for chunk in reader._chunks)
        assert len(store.sent) <= 4 and fetched <= 8 * MiB, (store.sent, fetched)
        assert await read_range(reader, start + 3 * MiB, start + 9 * MiB, 1 * MiB) == \
            body[start + 3 * MiB:start + 9 * MiB]
        assert reader._streaming  # once max_request long


async def test_a_small_first_read_does_not_stream(autojump_clock: object) -> None:
    """A first read under stream_from_start (a header probe: `file`, a tool checking a
    magic number) is not a streaming reader."""
    body = body_of(64 * MiB)
    store = ScriptedStore(body, lambda first: 0.1)
    async with open_reader(store, ReadBudget(128 * MiB), key="k", size=len(body), etag="e",
                           tuning=MOUNT_LIKE) as reader:
        assert await reader.read(0, 256 * KiB) == body[:256 * KiB]
        await trio.sleep(1)
        assert not reader._streaming
        assert sorted(first for _, first in store.sent) == [0, 512 * KiB]
