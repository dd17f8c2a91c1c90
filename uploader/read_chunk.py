"""One chunk of a prefetcher's window (prefetch.py): a ranged GET of ``[start, end)`` and,
once it answered, its bytes or its error.

A record of its own so the window's bookkeeping (what a chunk holds, what cutting it down to
its tail keeps and gives back) has one home, apart from the policy that decides which GETs
to send. The invariants: ``charged`` is what the chunk holds of the read budget (its whole
range while in flight, the tail it keeps once cut); ``buffer`` is the pooled buffer ``data``
is a view of (None: ``data`` is bytes of its own); ``served_to`` never passes ``end``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio


@dataclass(eq=False)
class Chunk:
    """One ranged GET of the window; see the module docstring."""

    start: int
    end: int
    charged: int
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | memoryview | None = None
    buffer: bytearray | None = None  # the pooled buffer ``data`` shows (None: its own bytes)
    dropped: bool = False
    error: Exception | None = None
    served_to: int = 0  # the highest offset served, to count what a drop discards unread
    cut: bool = False  # cut down to its last ``keep_behind`` bytes once the reader passed it

    def __post_init__(self) -> None:
        self.served_to = max(self.served_to, self.start)

    def cut_before(self, keep_from: int) -> tuple[int, bytearray | None]:
        """Keep only the bytes from ``keep_from`` on (one copy of them, so the pooled buffer
        can be reused): the budget bytes released and the buffer to recycle."""
        cut = keep_from - self.start
        assert self.data is not None and 0 < cut < self.end - self.start
        self.data = bytes(self.data[cut:])
        buffer, self.buffer = self.buffer, None
        self.start = keep_from
        self.served_to = max(self.served_to, self.start)
        self.charged -= cut
        self.cut = True
        return cut, buffer
