"""Reads without copies: GET bodies into reused buffers (uploader/read_buffers.py,
s3_wire.read_body ``into``) and the prefetcher's views of them (ObjectReader.read_view).

Virtual time where a store is slow (``autojump_clock``), on the memory S3.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from chute.uploader.errors import StoreError
from chute.uploader.prefetch import DEFAULT_TUNING, open_reader
from chute.uploader.read_budget import ReadBudget
from chute.uploader.read_buffers import BufferPool, Lending
from chute.uploader.retry import RetryPolicy
from chute.uploader.s3 import S3Client
from tests.support.memory_s3 import MemoryS3, memory_client

KiB = 1024
MiB = 1024 * KiB


def body_of(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


class SlowStore:
    """get_range of the memory S3 after ``latency`` seconds (virtual time)."""

    def __init__(self, client: S3Client, latency: float = 0.02) -> None:
        self.client = client
        self.latency = latency

    async def get_range(self, key: str, first: int, last: int, *,
                        if_match: str | None = None,
                        into: memoryview | None = None) -> bytes | memoryview:
        await trio.sleep(self.latency)
        return await self.client.get_range(key, first, last, if_match=if_match, into=into)


@pytest.fixture
def store() -> MemoryS3:
    return MemoryS3()


@pytest.fixture
def client(store: MemoryS3) -> S3Client:
    return memory_client(store, policy=RetryPolicy(budget=30.0))


# -- the pool ---------------------------------------------------------------------------------


def test_pool_reuses_by_size_and_keeps_the_newest_within_its_limit() -> None:
    pool = BufferPool(idle_limit=3 * MiB)
    small, large = pool.take(1 * MiB), pool.take(2 * MiB)
    pool.give(small)
    pool.give(large)
    assert pool.take(2 * MiB) is large and pool.reused == 1
    pool.give(large)
    other = bytearray(2 * MiB)
    pool.give(other)  # over the limit: the oldest (small) goes first, then large
    assert pool.idle_bytes == 2 * MiB
    assert pool.take(2 * MiB) is other
    assert pool.take(1 * MiB) is not small  # a new one
    pool.give(bytearray(4 * MiB))  # larger than the whole limit: not kept
    assert pool.idle_bytes == 0
    pool.give(bytearray(1 * MiB))
    pool.clear()
    assert pool.idle_bytes == 0
    with pytest.raises(ValueError):
        pool.take(0)


def test_a_lent_buffer_is_pooled_only_once_its_view_is_released() -> None:
    pool = BufferPool()
    lending = Lending(pool)
    shown, other = bytearray(b"a" * 10), bytearray(b"b" * 10)
    view = lending.lend(memoryview(shown)[2:5], shown)
    lending.recycle(shown)  # its chunk was dropped, but the caller may still read the view
    lending.recycle(other)
    assert pool.idle_bytes == 10 and bytes(view) == b"aaa"
    lending.release()
    assert pool.idle_bytes == 20
    with pytest.raises(ValueError):
        bytes(view)  # released: an error, never another GET's bytes


def test_a_view_still_exported_keeps_its_buffer_out_of_the_pool() -> None:
    pool = BufferPool()
    lending = Lending(pool)
    shown = bytearray(10)
    view = lending.lend(memoryview(shown), shown)
    lending.recycle(shown)
    held = pickle.PickleBuffer(view)  # holds a buffer of the view, as pyfuse3 briefly does
    lending.release()
    assert pool.idle_bytes == 0
    del held


# -- GET bodies into a buffer -----------------------------------------------------------------


async def test_get_range_into_a_buffer(store: MemoryS3, client: S3Client) -> None:
    body = body_of(3 * MiB)
    etag = store.put("obj", body).etag
    buffer = bytearray(1 * MiB)
    got = await client.get_range("obj", 1 * MiB, 2 * MiB - 1, if_match=etag,
                                 into=memoryview(buffer))
    assert isinstance(got, memoryview) and got.obj is buffer
    assert buffer == body[1 * MiB:2 * MiB]
    with pytest.raises(ValueError):
        await client.get_range("obj", 0, 99, into=memoryview(buffer))
    store.put("obj", b"replaced")
    with pytest.raises(StoreError) as refused:  # an error answer is not read into it
        await client.get_range("obj", 0, 7, if_match=etag, into=memoryview(buffer)[:8])
    assert refused.value.status == 412
    assert buffer == body[1 * MiB:2 * MiB]


async def test_a_body_broken_midway_is_read_again_from_the_start(
        store: MemoryS3, client: S3Client, autojump_clock: object) -> None:
    body = body_of(1 * MiB)
    etag = store.put("obj", body).etag

    async def broken() -> AsyncIterator[bytes]:
        yield b"\xff" * (256 * KiB)
        raise httpx.ReadError("connection reset mid-body")

    fault = store.fail_next("GetObject", status=200, body=broken)
    buffer = bytearray(len(body))
    got = await client.get_range("obj", 0, len(body) - 1, if_match=etag,
                                 into=memoryview(buffer))
    assert fault.hits == 1 and bytes(got) == body


async def test_a_body_longer_than_the_buffer_is_refused(
        store: MemoryS3, client: S3Client, autojump_clock: object) -> None:
    etag = store.put("obj", body_of(64 * KiB)).etag
    store.fail_next("GetObject", status=200, body=b"x" * (64 * KiB + 1), times=100)
    with pytest.raises(StoreError):
        await client.get_range("obj", 0, 64 * KiB - 1, if_match=etag,
                               into=memoryview(bytearray(64 * KiB)))


# -- the prefetcher's views -------------------------------------------------------------------


async def test_sequential_reads_reuse_buffers_and_lend_views(
        store: MemoryS3, client: S3Client, autojump_clock: object) -> None:
    body = body_of(96 * MiB + 777)
    etag = store.put("obj", body).etag
    pool = BufferPool(2 * DEFAULT_TUNING.max_request)
    budget = ReadBudget()
    parts = []
    async with open_reader(SlowStore(client), budget, key="obj", size=len(body), etag=etag,
                           buffers=pool) as reader:
        offset = 0
        while offset < len(body):
            view = await reader.read_view(offset, 1 * MiB)
            parts.append(bytes(view))  # consumed at once, as the FUSE reply is
            offset += len(view)
        last = await reader.read_view(0, 10)  # a seek back: the window restarts
        assert bytes(last) == body[:10]
        previous = await reader.read_view(5 * MiB, 10)
        with pytest.raises(ValueError):
            bytes(last)  # the next read released it
        assert bytes(previous) == body[5 * MiB:5 * MiB + 10]
    assert b"".join(parts) == body
    # New buffers only while the requests grow (5 sizes) and the first window fills.
    assert pool.taken - pool.reused <= 5 + DEFAULT_TUNING.max_window // DEFAULT_TUNING.max_request
    assert budget.statistics().in_use == 0
    assert pool.idle_bytes <= pool.idle_limit


async def test_random_reads_with_seeks_and_closes_mid_get_are_exact(
        store: MemoryS3, client: S3Client, autojump_clock: object) -> None:
    body = body_of(40 * MiB)
    etag = store.put("obj", body).etag
    pool = BufferPool(16 * MiB)
    budget = ReadBudget(16 * MiB)
    rng = random.Random(7)
    for _ in range(3):
        async with open_reader(SlowStore(client, latency=0.05), budget, key="obj",
                               size=len(body), etag=etag, buffers=pool) as reader:
            offset = rng.randrange(len(body))
            for _ in range(200):
                if rng.random() < 0.1:  # a jump: GETs in flight are cancelled
                    offset = rng.randrange(len(body))
                size = rng.choice([4 * KiB, 128 * KiB, 1 * MiB])
                view = await reader.read_view(offset, size)
                assert bytes(view) == body[offset:offset + size]
                offset += len(view)
                if offset >= len(body):
                    offset = 0
    assert budget.statistics().in_use == 0
    assert pool.reused > 0


async def test_read_returns_bytes_that_stay_valid(
        store: MemoryS3, client: S3Client, autojump_clock: object) -> None:
    body = body_of(20 * MiB)
    etag = store.put("obj", body).etag
    pool = BufferPool()
    async with open_reader(client, ReadBudget(), key="obj", size=len(body), etag=etag,
                           buffers=pool) as reader:
        held = [await reader.read(offset, 1 * MiB) for offset in range(0, len(body), MiB)]
    assert all(isinstance(part, bytes) for part in held)
    assert b"".join(held) == body
