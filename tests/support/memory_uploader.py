"""A running Uploader over the in-memory S3, for uploader tests that drive it directly.

:func:`run_uploader` starts the uploader's workers in a nursery, runs the test's ``body``
against it, then stops the workers and closes the client, whatever ``body`` raised. The
store is tests/support/memory_s3.py's MemoryS3.

Invariant: nothing of the uploader outlives the call (its nursery is cancelled and its client
closed before the call returns or raises).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import trio
import trio.testing

from chute.uploader.config import UploaderConfig
from chute.uploader.retry import RetryPolicy
from chute.uploader.uploader import Uploader

from .memory_s3 import MemoryS3, memory_client


async def run_uploader(store: MemoryS3, body: Callable[[Uploader], Awaitable[None]],
                       config: UploaderConfig, *, retry_budget: float,
                       count_retries: bool = False) -> Uploader:
    """Run ``body(uploader)`` against a running Uploader whose client talks to ``store`` with
    a retry budget of ``retry_budget`` seconds; ``count_retries`` feeds the client's retries
    into the uploader's statistics, as a mount does. Returns the (stopped) uploader."""
    client = memory_client(store, policy=RetryPolicy(budget=retry_budget))
    uploader = Uploader(config, client)
    if count_retries:
        client.on_retry = lambda operation, reason, error: uploader.count_retry(operation, reason)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(uploader.run)
            await body(uploader)
            # as in a mount, whose workers keep running: slots a failed upload had queued
            # are released when a worker takes them (no test may stop the workers first)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
    return uploader


SLICE = 5 * 1024 * 1024
"""The slice of the uploader unit tests: S3's smallest part, so files of a few slices are
small."""


async def run_sliced(store: MemoryS3, body: Callable[[Uploader], Awaitable[None]], *,
                     slots: int = 4, **config: object) -> Uploader:
    """:func:`run_uploader` with ``slots`` slices of :data:`SLICE` in the ring, a 60 s retry
    budget and counted retries; ``config`` adds UploaderConfig fields."""
    return await run_uploader(
        store, body, UploaderConfig(slice_size=SLICE, ring_size=slots * SLICE,
                                    **config),  # type: ignore[arg-type]
        retry_budget=60, count_retries=True)


def data_of(size: int, seed: int = 1) -> bytes:
    """``size`` reproducible random bytes."""
    return random.Random(seed).randbytes(size)
