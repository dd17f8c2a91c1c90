"""The read budget: one fixed number of bytes shared by every open reader of a mount.

Every byte a reader has fetched from the store and not yet handed to its caller (and every
byte of a GET in flight, counted from the moment it is sent) is charged here, so the memory
reads use is bounded by the budget whatever the number of readers or the size of the objects.
The budget is separate from the write ring: readers can never starve writers, nor writers
readers.

Two kinds of charge, so that no number of readers can deadlock it:

- **prefetch** (:meth:`ReadBudget.try_prefetch`): bytes fetched ahead of a reader, which may
  stay charged for as long as the reader keeps its file open. Never waits: it is granted at
  once or refused (the prefetcher then asks for less, or fetches only what is demanded).
  Prefetch may hold at most ``total - demand_reserve`` bytes, and is refused while anyone
  waits for demand budget.
- **demand** (:meth:`ReadBudget.demand`): the bytes a read() needs right now, at most
  ``demand_reserve`` per acquisition. It waits (first come, first served) until it fits in the
  whole budget, and is released as soon as its GET has answered and the bytes are copied out.

An idle reader (one that has not read for ``idle_after`` seconds, e.g. a file a backup tool
keeps open after reading its header) does not keep its prefetched bytes from others: when
prefetch is refused, the budget asks idle readers, longest idle first, to drop their windows.

Why that cannot deadlock: prefetch never holds more than ``total - demand_reserve``, so a
demand acquisition (at most ``demand_reserve``) only ever waits for other demand holders, and
each of those is a single GET that ends within the retry budget (success or error) and then
releases. So every read() makes progress, however many readers hold prefetched data and
however long they keep it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import trio

MiB = 1024 * 1024

DEFAULT_READ_BUDGET = 128 * MiB
"""The default ``--read-budget``: a lone sequential reader's 104 MiB window (eight 8 MiB GETs
in flight and five more of room for GETs answered ahead of it, chute.fs.reads.mount_tuning),
or 60 MiB each for two, and the demand reserve. Was 64 MiB: a 40 MiB window then held every GET in
flight, and over a 100 ms link with Linux's slow start after idle a read settled at 0.29 of
a direct download (bench --link, 100 ms / no cap)."""
MAX_DEMAND_RESERVE = 8 * MiB
MIN_DEMAND_RESERVE = 128 * 1024
"""The kernel's default FUSE read size: the smallest reserve that serves a read in one GET."""


DEFAULT_IDLE_AFTER = 2.0
"""Seconds without a read after which a reader's prefetched bytes may go to others. A reader
reading at all reads far more often (the kernel asks 128 KiB at a time)."""


class Reclaimable(Protocol):
    """A reader whose prefetched bytes the budget may take back while it is idle."""

    @property
    def last_read(self) -> float:
        """trio time of its last read (of its opening, before the first)."""

    def idle_since(self) -> float | None:
        """trio time of its last read if it holds prefetched bytes and no read is under
        way, else None."""

    def reclaim(self) -> int:
        """Drop its prefetched bytes (it fetches again when it reads); the bytes released."""


def default_demand_reserve(total: int) -> int:
    """An eighth of the budget, between 128 KiB and 8 MiB, never more than the budget: with
    64 MiB, 8 MiB serve 64 kernel-sized (128 KiB) demanded reads at once while 56 MiB prefetch."""
    return min(total, max(MIN_DEMAND_RESERVE, min(MAX_DEMAND_RESERVE, total // 8)))


@dataclass(frozen=True)
class ReadStatistics:
    """A snapshot of a :class:`ReadBudget` (for ``chute status`` and tests)."""

    budget: int
    """Total bytes readers may hold."""
    demand_reserve: int
    """Part of ``budget`` prefetch may never hold: demanded reads always fit in it."""
    in_use: int
    """Bytes charged now: fetched and not yet consumed, or in flight."""
    peak_in_use: int
    """The most ever charged at once (never above ``budget``)."""
    readers: int
    """Open readers sharing the budget."""
    waiters: int
    """Demanded reads waiting for budget now."""
    bytes_fetched: int
    """Bytes that arrived from the store."""
    bytes_served: int
    """Bytes handed to callers of read()."""
    bytes_discarded: int
    """Prefetched bytes dropped unread (a seek, a close, a failed read)."""
    requests: int
    """GETs sent (not counting retries, which the S3 client makes)."""
    bytes_reclaimed: int
    """Prefetched bytes (fetched or in flight) taken back from idle readers."""


class ReadBudget:
    """The byte budget shared by all readers of a mount; see the module docstring."""

    def __init__(self, total: int = DEFAULT_READ_BUDGET, *,
                 demand_reserve: int | None = None,
                 idle_after: float = DEFAULT_IDLE_AFTER) -> None:
        if total <= 0:
            raise ValueError(f"read budget must be positive, not {total}")
        reserve = default_demand_reserve(total) if demand_reserve is None else demand_reserve
        if not 0 < reserve <= total:
            raise ValueError(f"demand reserve {reserve} must be in 1..{total}")
        self.total = total
        self.demand_reserve = reserve
        self._in_use = 0
        self._peak = 0
        self.idle_after = idle_after
        self._readers: set[Reclaimable] = set()
        self._waiters: deque[tuple[int, trio.Event]] = deque()
        self._fetched = 0
        self._served = 0
        self._discarded = 0
        self._requests = 0
        self._reclaimed = 0

    # -- shares ---------------------------------------------------------------------------

    @property
    def prefetch_capacity(self) -> int:
        """The most prefetch may hold, all readers together."""
        return self.total - self.demand_reserve

    def fair_share(self) -> int:
        """The prefetch window one reader may aim for: an equal part of the capacity among
        the readers that read within ``idle_after`` (idle ones' windows are reclaimable)."""
        now = trio.current_time()
        active = sum(1 for reader in self._readers if now - reader.last_read < self.idle_after)
        return self.prefetch_capacity // max(1, active)

    def register(self, reader: Reclaimable) -> None:
        """A reader opened (it counts towards :meth:`fair_share`)."""
        self._readers.add(reader)

    def unregister(self, reader: Reclaimable) -> None:
        self._readers.discard(reader)

    # -- charges --------------------------------------------------------------------------

    def try_prefetch(self, size: int) -> bool:
        """Charge ``size`` bytes of prefetch if they fit now; never waits."""
        if size <= 0:
            return size == 0
        if self._waiters:
            return False
        if self._in_use + size > self.prefetch_capacity and not self._reclaim_idle(size):
            return False
        self._charge(size)
        return True

    def _reclaim_idle(self, size: int) -> bool:
        """Take prefetched bytes back from idle readers until ``size`` fits; whether it does."""
        now = trio.current_time()
        idle = []
        for reader in self._readers:
            since = reader.idle_since()
            if since is not None and now - since >= self.idle_after:
                idle.append((since, id(reader), reader))
        for _, _, reader in sorted(idle):
            self._reclaimed += reader.reclaim()
            if self._in_use + size <= self.prefetch_capacity:
                return True
        return False

    @asynccontextmanager
    async def demand(self, size: int) -> AsyncIterator[None]:
        """Hold ``size`` bytes (at most ``demand_reserve``) for a demanded GET, waiting FIFO."""
        await self.acquire_demand(size)
        try:
            yield
        finally:
            self.release(size)

    async def acquire_demand(self, size: int) -> None:
        """Charge ``size`` bytes for a demanded read, waiting until they fit (FIFO).

        Always checkpoints, so a reader whose demand fits at once still lets others run."""
        if not 0 < size <= self.demand_reserve:
            raise ValueError(f"a demanded charge must be in 1..{self.demand_reserve}, not {size}")
        if not self._waiters and self._in_use + size <= self.total:
            self._charge(size)
            await trio.lowlevel.checkpoint()
            return
        granted = trio.Event()
        entry = (size, granted)
        self._waiters.append(entry)
        try:
            await granted.wait()
        except BaseException:
            if granted.is_set():  # granted, then cancelled before we could use it
                self.release(size)
            else:
                self._waiters.remove(entry)
                self._wake()
            raise

    def release(self, size: int) -> None:
        """Return ``size`` charged bytes (prefetch or demand) and wake waiters that now fit."""
        if size > self._in_use:
            raise AssertionError(f"releasing {size} bytes, only {self._in_use} charged")
        self._in_use -= size
        self._wake()

    def _charge(self, size: int) -> None:
        self._in_use += size
        self._peak = max(self._peak, self._in_use)
        assert self._in_use <= self.total, "read budget exceeded"

    def _wake(self) -> None:
        while self._waiters and self._in_use + self._waiters[0][0] <= self.total:
            size, granted = self._waiters.popleft()
            self._charge(size)
            granted.set()

    # -- counters -------------------------------------------------------------------------

    def note_request(self) -> None:
        self._requests += 1

    def note_fetched(self, size: int) -> None:
        self._fetched += size

    def note_served(self, size: int) -> None:
        self._served += size

    def note_discarded(self, size: int) -> None:
        self._discarded += size

    @property
    def in_use(self) -> int:
        return self._in_use

    def statistics(self) -> ReadStatistics:
        return ReadStatistics(
            budget=self.total, demand_reserve=self.demand_reserve, in_use=self._in_use,
            peak_in_use=self._peak, readers=len(self._readers), waiters=len(self._waiters),
            bytes_fetched=self._fetched, bytes_served=self._served,
            bytes_discarded=self._discarded, requests=self._requests,
            bytes_reclaimed=self._reclaimed,
        )
