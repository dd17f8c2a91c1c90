"""Receive buffers for ranged GETs, reused from one GET to the next.

Why: a sequential reader's GETs are all the same size (the prefetcher's largest request),
and a body assembled into fresh memory costs a page fault for every 4 KiB of it: measured
on the bench machine, copying into a freshly allocated 256 MiB runs at 1.6 GB/s, into one
already mapped at 6.5 GB/s. Joining a body's 64 KiB pieces into a new ``bytes`` per GET
took 17% of a reading mount's CPU (py-spy, 1 GiB read). A GET reads its body straight into
a buffer taken from here (:func:`chute.uploader.s3_wire.read_body` with ``into``), and the
buffer comes back once the reader is done with it.

What the pool may hold: buffers nobody uses, at most ``idle_limit`` bytes of them (the rest
are freed). Buffers in use are charged to the read budget by their reader, like any
prefetched bytes; the idle ones are the only memory reads use beyond the budget, so the
limit is small (two of the largest requests by default).

Invariant the callers keep: a buffer is given back only when nothing will write to it or
read from it again: a GET that was cancelled has ended (its task is past the GET), and no
view of it handed to a caller may still be read (the prefetcher releases its views first).
"""

from __future__ import annotations

MiB = 1024 * 1024

DEFAULT_IDLE_LIMIT = 16 * MiB
"""Idle bytes kept: two 8 MiB buffers, enough for a reader whose GETs follow one another."""


class BufferPool:
    """Reusable ``bytearray`` buffers by exact size; see the module docstring.

    The most recently given buffers are kept: the sizes of a reader's first requests (its
    window growing) give way to those of the steady state."""

    def __init__(self, idle_limit: int = DEFAULT_IDLE_LIMIT) -> None:
        if idle_limit < 0:
            raise ValueError(f"idle limit must not be negative, not {idle_limit}")
        self.idle_limit = idle_limit
        self._idle: list[bytearray] = []
        """Oldest first; a handful at most, so a scan is cheap."""
        self._idle_bytes = 0
        self.taken = 0
        """Buffers handed out (for tests and statistics)."""
        self.reused = 0
        """Of those, how many came from the pool rather than a new allocation."""

    @property
    def idle_bytes(self) -> int:
        return self._idle_bytes

    def take(self, size: int) -> bytearray:
        """A buffer of exactly ``size`` bytes (its content is whatever it held)."""
        if size <= 0:
            raise ValueError(f"buffer size must be positive, not {size}")
        self.taken += 1
        for index in range(len(self._idle) - 1, -1, -1):
            if len(self._idle[index]) == size:
                self._idle_bytes -= size
                self.reused += 1
                return self._idle.pop(index)
        return bytearray(size)

    def give(self, buffer: bytearray) -> None:
        """``buffer`` is no longer used by anyone: keep it, freeing the oldest idle ones
        beyond the idle limit."""
        size = len(buffer)
        if size == 0 or size > self.idle_limit:
            return
        self._idle.append(buffer)
        self._idle_bytes += size
        while self._idle_bytes > self.idle_limit:
            self._idle_bytes -= len(self._idle.pop(0))

    def clear(self) -> None:
        """Free every idle buffer (no reader left)."""
        self._idle.clear()
        self._idle_bytes = 0


class Lending:
    """One reader's views of pooled buffers handed to its caller, and the buffers of
    dropped chunks that such a view still shows.

    A read returns a view of a chunk's buffer; the chunk may be dropped by that same read
    (the reader passed it), but its buffer must not be reused while the caller may still read
    the view. So a dropped chunk's buffer goes to the pool at once unless a lent view shows
    it; then it waits for :meth:`release`, which the reader calls when the caller is done
    (its next read, its close, or a reclaim of an idle reader)."""

    def __init__(self, pool: BufferPool | None) -> None:
        self.pool = pool
        self._lent: list[tuple[memoryview, bytearray | None]] = []
        self._waiting: list[bytearray] = []

    def lend(self, view: memoryview, buffer: bytearray | None) -> memoryview:
        """``view`` (of ``buffer``, None if not pooled) goes to the caller."""
        self._lent.append((view, buffer))
        return view

    def recycle(self, buffer: bytearray | None) -> None:
        """A dropped chunk's buffer: to the pool, or kept until the view of it is released."""
        if buffer is None or self.pool is None:
            return
        if any(lent is buffer for _, lent in self._lent):
            self._waiting.append(buffer)
        else:
            self.pool.give(buffer)

    def release(self) -> None:
        """The views lent are done with: release them, pool the buffers they kept. A view
        still exported (something holds a buffer of it) keeps its buffer out of the pool."""
        kept: list[bytearray] = []
        for view, buffer in self._lent:
            try:
                view.release()
            except BufferError:
                if buffer is not None:
                    kept.append(buffer)
        self._lent.clear()
        waiting, self._waiting = self._waiting, []
        if self.pool is not None:
            for buffer in waiting:
                if not any(buffer is k for k in kept):
                    self.pool.give(buffer)
