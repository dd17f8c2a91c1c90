"""Run one job per item, a bounded number at a time, the first failure stopping the rest.

Server-side copies (copy.py's parts, a directory move's objects, a recomposition's parts) all
need the same shape: many independent requests, at most N in flight, and one failure ends the
whole operation at once rather than after every other request has run its retries. The jobs
live in one nursery this call owns, so nothing outlives it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import trio

T = TypeVar("T")


async def each_bounded(items: Iterable[T], job: Callable[[T], Awaitable[object]],
                       limit: int) -> None:
    """Await ``job(item)`` for every item, at most ``limit`` at a time. The first job to raise
    cancels the others (they are not waited for past their next checkpoint), and its
    exception is raised once all have stopped."""
    errors: list[Exception] = []
    limiter = trio.CapacityLimiter(limit)

    async def one(item: T, cancel: trio.CancelScope) -> None:
        async with limiter:
            try:
                await job(item)
            except Exception as exc:
                errors.append(exc)
                cancel.cancel()

    async with trio.open_nursery() as nursery:
        for item in items:
            nursery.start_soon(one, item, nursery.cancel_scope)
    if errors:
        raise errors[0]
