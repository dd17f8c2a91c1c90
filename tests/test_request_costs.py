"""Unit tests for the per-request costs chute keeps small: where the wire checksum is computed
(small bodies on the event loop, large ones in a worker thread, the same header either way)
and how big a chunk of a body one socket write sends."""

from __future__ import annotations

import base64
import hashlib
import os

import crc32c
import pytest
import trio

from chute.uploader import checksums
from chute.uploader.checksums import INLINE_CHECKSUM_MAX, body_headers, body_headers_off_loop


@pytest.fixture
def thread_hops(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The body sizes sent to a worker thread."""
    hops: list[int] = []
    real = trio.to_thread.run_sync

    async def counting(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        hops.append(len(args[-1]))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(checksums.trio.to_thread, "run_sync", counting)
    return hops


@pytest.mark.parametrize("algorithm", ["crc32c", "md5"])
async def test_small_bodies_stay_on_the_loop_large_ones_hop(algorithm: str,
                                                           thread_hops: list[int]) -> None:
    limit = INLINE_CHECKSUM_MAX[algorithm]
    for size in (0, 1, limit):
        body = memoryview(os.urandom(size))
        assert await body_headers_off_loop(algorithm, body) == body_headers(algorithm, body)
    assert thread_hops == []
    large = memoryview(os.urandom(limit + 1))
    assert await body_headers_off_loop(algorithm, large) == body_headers(algorithm, large)
    assert thread_hops == [limit + 1]


def test_headers_carry_the_standard_encodings() -> None:
    body = b"chute" * 1000
    crc = crc32c.crc32c(body).to_bytes(4, "big")
    assert body_headers("crc32c", body) == {
        "x-amz-checksum-crc32c": base64.b64encode(crc).decode()}
    assert body_headers("md5", body) == {
        "Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode()}


def test_send_chunks_fit_the_stall_timeout_of_the_slowest_moving_link() -> None:
    """A chunk is one socket write under the stall timeout: a link at SLOWEST_MOVING_LINK must
    get each chunk out within it, and chunks stay between 64 KiB and 1 MiB."""
    from chute.uploader.s3 import SLOWEST_MOVING_LINK, send_chunk_size

    assert send_chunk_size(30.0) == 240 * 1024
    assert send_chunk_size(30.0) / SLOWEST_MOVING_LINK <= 30.0
    assert send_chunk_size(2.0) == 64 * 1024  # short timeouts (tests): never below 64 KiB
    assert send_chunk_size(3600.0) == 1024 * 1024
