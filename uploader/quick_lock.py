"""A trio lock that does not yield to the scheduler when it is free.

``trio.Lock``'s acquire is a full checkpoint: even uncontended it yields, and each yield is
one more pass of trio's run loop (an ``epoll_wait`` and the scheduler's bookkeeping). A
file upload takes its lock at every write and at its close, on the critical path of each
small file, where it is almost always free: two of the ~21 scheduler passes a small file
cost the mount (docs/performance.md, "Small files").

:class:`QuickLock` takes a free lock at once (``acquire_nowait``, :func:`take`; the connection
pool takes its semaphore the same way) and waits like ``trio.Lock`` only when another task
holds it; mutual exclusion and trio's fairness (a released lock is handed to the task waiting
longest, so a newcomer cannot take it past a waiter) are ``trio.Lock``'s own. What is given
up is the checkpoint of an uncontended acquire: cancellation is noticed at the next real wait
instead, and every path under this lock reaches one (a ring slot, a request to the store) or
returns quickly.
"""

from __future__ import annotations

import trio


async def take(primitive: trio.Lock | trio.Semaphore) -> None:
    """Acquire ``primitive``: at once if it is free (no scheduler pass), else by waiting as
    its own ``acquire`` does (in turn behind earlier waiters)."""
    try:
        primitive.acquire_nowait()
    except trio.WouldBlock:
        await primitive.acquire()


class QuickLock:
    """``async with`` mutual exclusion; free: taken without a scheduler pass."""

    def __init__(self) -> None:
        self._lock = trio.Lock()

    def locked(self) -> bool:
        return self._lock.locked()

    async def __aenter__(self) -> None:
        await take(self._lock)

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()
