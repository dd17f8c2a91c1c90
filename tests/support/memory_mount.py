"""An in-memory mount for fs tests: ChuteOperations over a real Uploader over MemoryS3.

The fs test modules drive the FUSE operations directly (no kernel, no store process): this
builds the same stack a mount runs, with a 20 MiB ring of 5 MiB slices, its uploader running
in a nursery for as long as the test holds the mount. ``Mounted.store`` is the in-memory S3
(tests/support/memory_s3.py), so a test can look at what the mount asked of the store.

Invariant: leaving :func:`memory_mount` stops the uploader and closes the client; nothing of a
test's mount outlives it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pyfuse3
import pytest
import trio

from chute.fs.operations import ChuteOperations
from chute.fs.policy import MountPolicy
from chute.uploader.config import UploaderConfig
from chute.uploader.retry import RetryPolicy
from chute.uploader.uploader import Uploader

from .memory_s3 import LoggedRequest, MemoryS3, memory_client

MiB = 1 << 20
CTX = pyfuse3.RequestContext()
"""The request context handlers are called with (pid 0, uid 0)."""
WRITE = os.O_WRONLY | os.O_TRUNC
"""The flags of an open that replaces a file."""


@dataclass
class Mounted:
    """The mount's FUSE operations and the store behind them."""

    ops: ChuteOperations
    store: MemoryS3

    def requests(self, operation: str) -> list[LoggedRequest]:
        """The requests of ``operation`` (e.g. ``"PutObject"``) the store received so far."""
        return [r for r in self.store.requests if r.operation == operation]

    def ops_since(self, start: int) -> list[str]:
        """The operations the store received after the first ``start``."""
        return self.store.operations()[start:]


async def memory_mount(policy: MountPolicy | None = None, *, store: MemoryS3 | None = None,
                       prefix: str = "", retry_policy: RetryPolicy | None = None,
                       ) -> AsyncIterator[Mounted]:
    """Yield one mount of ``store`` (a fresh MemoryS3 by default) under ``prefix``; use as
    ``async for m in memory_mount(...)``. ``retry_policy`` is the client's (default: the
    mount's)."""
    store = store or MemoryS3()
    client = memory_client(store, prefix=prefix, policy=retry_policy)
    uploader = Uploader(UploaderConfig(slice_size=5 * MiB, ring_size=20 * MiB), client)
    async with trio.open_nursery() as nursery:
        await nursery.start(uploader.run)
        yield Mounted(ChuteOperations(uploader, client, "/nonexistent-mnt",
                                      policy or MountPolicy()), store)
        nursery.cancel_scope.cancel()
    await client.aclose()


async def errno_of(awaitable) -> int:  # type: ignore[no-untyped-def]
    """The errno of the FUSEError ``awaitable`` raises (failing the test if it raises none)."""
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await awaitable
    return caught.value.errno
