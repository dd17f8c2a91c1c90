"""Reading one stored object through ranged GETs: a prefetcher per open file handle.

An :class:`ObjectReader` serves ``read(offset, size)`` for one object pinned at open by its
key, size and ETag: every GET carries ``If-Match``, and a version replaced or deleted since
fails the read with :class:`ObjectChanged` (ESTALE, read_pin.py), never a mix of two
versions; the failure is sticky (every later read of the handle fails the same way).

The prefetch policy follows mountpoint-s3's prefetcher (``mountpoint-s3-fs/src/prefetch.rs``):
start small, make requests larger while the reads stay sequential, start small again after a
jump.

- The reader keeps a *window*: consecutive chunks covering ``[window start, window end)``,
  each one ranged GET, done or in flight. A read inside the window is served from it, waiting
  for the chunks it needs; a small step back (``keep_behind``, for the kernel's readahead
  arriving out of order) is served from chunks kept behind the reader.
- A read that continues the previous one (within ``sequential_slack`` of it) is sequential:
  the reader covers it with a request of the current size, then sends one more request
  ahead of it if the window has room. Each request sent while sequential doubles the next
  one's size, from ``initial_request`` up to ``max_request``. With ``align``, they never
  cross a multiple of it: a mount's GETs fall on the store's own block boundaries.
- Once a sequential run is ``max_request`` long (``stream_from_start`` for a run from the
  object's first byte: a whole-file reader) the reader *streams*: its requests are
  ``max_request`` from then on, every read fills the
  window, and so does every GET of it that answers, at once, so the connection that answered
  goes on to the next GET instead of idling until the reader catches up (an idle spell over
  TCP's retransmission timeout costs a long link's connection its slow start again). The
  window is capped by ``max_window`` and by the reader's fair share of the budget; at most
  ``max_in_flight`` of its GETs are in flight (0: no cap of their own), so the rest of the
  window is room for GETs that answer before the one the reader waits for.
- A read outside the window is a seek: the window is dropped (its GETs cancelled, its budget
  returned) and the read is fetched as asked plus ``random_extra``, with the next sequential
  request back at ``initial_request``.
- Budget (:mod:`read_budget`): prefetched chunks are charged as prefetch, which is granted or
  refused at once; a refused request is retried at half the size, and a read the window cannot
  cover is fetched on demand (exactly what is asked, from the demand reserve, released when
  copied out), so a read always progresses, however many readers share the budget.

Retries, stall detection and credential reloads are the S3 client's (one policy per mount).
All GETs run as tasks in a nursery the reader's owner provides; each chunk has its own cancel
scope, and :meth:`ObjectReader.aclose` cancels them all and returns every byte of budget.

Copies: given a :class:`BufferPool`, a prefetched GET reads its body into a reused buffer and
:meth:`ObjectReader.read_view` returns a view of it (read_buffers.py says for how long it
holds); :meth:`~ObjectReader.read` returns a copy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .errors import ChuteError, ObjectChanged
from .read_budget import ReadBudget
from .read_buffers import BufferPool, Lending
from .read_chunk import Chunk
from .read_pin import demand_range, pinned_error
from .read_tuning import DEFAULT_TUNING, RangeSource, ReadTuning

__all__ = ["DEFAULT_TUNING", "ObjectReader", "RangeSource", "ReadTuning", "open_reader"]


class ObjectReader:
    """Reads of one pinned object version for one open file handle; see the module docstring.

    ``read()`` calls on one reader are served one at a time (a FIFO lock), so concurrent
    reads of the same handle each get exactly the bytes they asked for.
    """

    def __init__(self, source: RangeSource, budget: ReadBudget, *, key: str, size: int,
                 etag: str, nursery: trio.Nursery, tuning: ReadTuning = DEFAULT_TUNING,
                 buffers: BufferPool | None = None) -> None:
        self.key = key
        self.size = size
        self.etag = etag
        self._source = source
        self._budget = budget
        self._nursery = nursery
        self._tuning = tuning
        self._chunks: deque[Chunk] = deque()
        self._buffers = buffers
        """Where prefetched GETs take their receive buffers (None: each body is new bytes)."""
        self._lending = Lending(buffers)
        self._window_end = 0
        """Where the next request starts; the chunks cover [_window_start, _window_end)."""
        self._position: int | None = None
        """End of the last read served, or None before the first (and after a failure)."""
        self._next_request = tuning.initial_request
        self._in_flight = 0
        """GETs sent and not answered (a dropped one until its task has ended)."""
        self._streaming = False
        """Whether the reader streams (a sequential run of at least ``max_request``, its
        last read covered): its window refills as its GETs complete."""
        self._run_start = 0
        """Where the current sequential run began (the last reset)."""
        self._lock = trio.Lock()
        self._closed = False
        self._stale: ObjectChanged | None = None
        self.last_read = trio.current_time()
        """trio time of the last read served (for the budget's idle rule)."""
        budget.register(self)

    async def __aenter__(self) -> ObjectReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def _window_start(self) -> int:
        return self._chunks[0].start if self._chunks else self._window_end

    # -- reading ------------------------------------------------------------------------

    async def read(self, offset: int, size: int) -> bytes:
        """The object's bytes ``[offset, offset + size)``; short or empty past its end.

        Raises ObjectChanged (ESTALE) if the object was replaced since the reader was opened,
        the S3 client's error (EIO) if the store failed past the retry budget."""
        return bytes(await self.read_view(offset, size))

    async def read_view(self, offset: int, size: int) -> bytes | memoryview:
        """As :meth:`read`, but maybe a view of the reader's buffer, valid until its next
        read, :meth:`aclose` or reclaim (a FUSE reply is written from it at once)."""
        if offset < 0 or size < 0:
            raise ValueError(f"read({offset}, {size})")
        self._check_open()
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        async with self._lock:
            self._check_open()
            self._lending.release()
            try:
                data = await self._read(offset, end)
                self.last_read = trio.current_time()
            except ObjectChanged as exc:
                self._stale = exc
                self._reset(offset)
                raise
            except Exception:
                self._reset(offset)
                self._position = None
                raise
        self._budget.note_served(len(data))
        return data

    def _reading(self) -> bool:
        """Open and read within the budget's idle time (an idle reader's window is the
        budget's to reclaim, not to refill)."""
        return not self._closed and trio.current_time() - self.last_read < self._budget.idle_after

    def _check_open(self) -> None:  # before and after waiting for the lock
        if self._stale is not None:
            raise ObjectChanged(str(self._stale))
        if self._closed:
            raise ChuteError(f"read of {self.key} after its reader was closed")

    async def _read(self, offset: int, end: int) -> bytes | memoryview:
        sequential = self._classify(offset)
        self._trim(offset)
        covered = self._cover(end, sequential)
        if sequential and covered >= end:
            # A long enough run is a streaming reader: its window fills up; before that, one
            # request ahead per read (a probe of a header, a piece of a pack costs little).
            streaming = end - self._run_start >= self._stream_after()
            if streaming and not self._streaming:
                self._next_request = self._tuning.max_request  # no more growing by halves
            self._streaming = streaming
            self._fill(once=not self._streaming)
        else:
            self._streaming = False
        parts = []
        if offset < covered:
            parts.append(await self._serve(offset, min(end, covered)))
        if covered < end:
            # Not covered (budget): the rest on demand, not kept; the window restarts here.
            parts.append(await demand_range(self._source, self._budget, key=self.key,
                                            etag=self.etag, offset=max(offset, covered),
                                            end=end))
            self._drop_all()
            self._window_end = end
        self._position = end
        self._trim(end)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _stream_after(self) -> int:
        """How long the current run must be to stream: shorter for one from the start."""
        tuning = self._tuning
        return (tuning.stream_from_start or tuning.max_request) if self._run_start == 0 \
            else tuning.max_request

    def _classify(self, offset: int) -> bool:
        """Whether a read at ``offset`` is sequential; a read outside the window resets it."""
        position = self._position
        if position is None:
            self._reset(offset)
            return offset == 0
        if self._window_start <= offset <= self._window_end:
            return (position - self._tuning.keep_behind <= offset
                    <= position + self._tuning.sequential_slack)
        self._reset(offset)
        return False

    def _cover(self, end: int, sequential: bool) -> int:
        """Send requests until the window reaches ``end`` or the budget refuses; its end."""
        tuning = self._tuning
        while self._window_end < end:
            need = min(end - self._window_end, tuning.max_request)
            want = self._next_request if sequential else need + tuning.random_extra
            want = min(max(need, min(want, tuning.max_request)), self.size - self._window_end)
            size = self._aligned(want) if sequential else want
            sent = self._send(size, least=min(need, size))
            if not sent:
                break
            if sequential and size == want:
                self._grow(sent)
        return self._window_end

    def _fill(self, *, once: bool = False) -> None:
        """Send requests ahead of a sequential reader until its window is full or
        ``max_in_flight`` are in flight (``once``: at most one; see the module docstring)."""
        limit = min(self._tuning.max_window, self._budget.fair_share())
        most = self._tuning.max_in_flight or limit
        while self._window_end < self.size and self._in_flight < most:
            want = min(self._next_request, limit, self.size - self._window_end)
            if want <= 0 or self._window_end - self._window_start + want > limit:
                return
            size = self._aligned(want)
            sent = self._send(size, least=min(size, self._tuning.min_request))
            if not sent:
                return
            if size == want:
                self._grow(sent)
            if once:
                return

    def _aligned(self, size: int) -> int:
        """A sequential request of ``size`` cut short where it would cross a multiple of
        ``align``; such a filler does not grow the next request."""
        align = self._tuning.align
        if align <= 0:
            return size
        start = self._window_end
        return min(size, (start // align + 1) * align - start)

    def _grow(self, sent: int) -> None:
        self._next_request = min(self._tuning.max_request, 2 * sent)

    def _send(self, size: int, *, least: int) -> int:
        """Start a GET of ``size`` bytes at the window's end if the budget grants it, halving
        down to ``least`` when refused; the bytes requested (0 if none)."""
        while not self._budget.try_prefetch(size):
            if size <= least:
                return 0
            size = max(least, size // 2)
        chunk = Chunk(self._window_end, self._window_end + size, charged=size)
        self._in_flight += 1
        self._chunks.append(chunk)
        self._window_end = chunk.end
        self._nursery.start_soon(self._fetch, chunk)
        return size

    async def _fetch(self, chunk: Chunk) -> None:
        """The task of one chunk: its GET, with errors kept for the read that needs them."""
        buffer = self._buffers.take(chunk.end - chunk.start) if self._buffers else None
        try:
            with chunk.scope:
                self._budget.note_request()
                into = {} if buffer is None else {"into": memoryview(buffer)}
                data = await self._source.get_range(self.key, chunk.start, chunk.end - 1,
                                                    if_match=self.etag, **into)
                self._budget.note_fetched(len(data))
                if not chunk.dropped:
                    chunk.data, chunk.buffer, buffer = data, buffer, None
        except Exception as exc:
            chunk.error = exc
        finally:
            if buffer is not None and self._buffers is not None:
                self._buffers.give(buffer)  # no GET writes into it any more, none read it
            self._in_flight -= 1
            chunk.done.set()
        if chunk.data is not None and self._streaming and self._reading():
            self._fill()

    async def _serve(self, offset: int, end: int) -> bytes | memoryview:
        """Bytes ``[offset, end)`` from the window's chunks, waiting for those in flight."""
        parts = []
        for chunk in list(self._chunks):
            if chunk.end <= offset:
                continue
            if chunk.start >= end:
                break
            await chunk.done.wait()
            if chunk.data is None:
                if chunk.error is not None:
                    raise pinned_error(chunk.error, self.key, self.etag) from chunk.error
                raise ChuteError(f"read of {self.key} after its reader was closed")
            first = max(offset, chunk.start) - chunk.start
            last = min(end, chunk.end) - chunk.start
            parts.append((memoryview(chunk.data)[first:last], chunk.buffer))
            chunk.served_to = max(chunk.served_to, chunk.start + last)
        if len(parts) == 1:
            return self._lending.lend(*parts[0])
        return b"".join(view for view, _ in parts)

    # -- the window ---------------------------------------------------------------------

    def idle_since(self) -> float | None:
        """For the budget: when this reader last read, if it holds a window and no read is
        under way (a read under way is never robbed of the chunks it waits for)."""
        if not self._chunks or self._lock.locked():
            return None
        return self.last_read

    def reclaim(self) -> int:
        """For the budget: drop the window; a read continuing where the last one ended is
        still sequential (the window restarts there, empty). The bytes released."""
        charged = sum(chunk.charged for chunk in self._chunks)
        self._lending.release()  # idle: its last read's reply was written long ago
        self._drop_all()
        if self._position is not None:
            self._window_end = self._position
        return charged

    def _reset(self, offset: int) -> None:
        """Drop the window (cancel its GETs, return its budget); the next request is small."""
        self._drop_all()
        self._streaming = False
        self._run_start = self._window_end = offset
        self._next_request = self._tuning.initial_request

    def _trim(self, position: int) -> None:
        """Drop what a reader at ``position`` is done with; keep ``keep_behind`` bytes of it.

        A chunk the reader has passed is cut down to its tail once (one copy of at most
        ``keep_behind`` bytes), so the window holds the tail, the chunk being read, and what
        is ahead, and no more than ``max_window`` of it."""
        keep_from = position - self._tuning.keep_behind
        while self._chunks and self._chunks[0].end <= keep_from:
            self._drop(self._chunks.popleft())
        for chunk in self._chunks:
            if chunk.end > position:
                break
            if chunk.cut or chunk.start >= keep_from or chunk.data is None:
                continue
            cut, buffer = chunk.cut_before(keep_from)
            self._lending.recycle(buffer)
            self._budget.release(cut)

    def _drop_all(self) -> None:
        while self._chunks:
            self._drop(self._chunks.popleft())

    def _drop(self, chunk: Chunk) -> None:
        chunk.scope.cancel()
        chunk.dropped = True  # a GET still under way gives its buffer back itself
        if chunk.charged:
            self._budget.release(chunk.charged)
            chunk.charged = 0
        if chunk.data is not None:
            self._budget.note_discarded(chunk.end - chunk.served_to)
            chunk.data = None
            self._lending.recycle(chunk.buffer)
            chunk.buffer = None

    async def aclose(self) -> None:
        """Cancel every GET in flight and return all budget; reads after this fail."""
        if self._closed:
            return
        self._closed = True
        self._drop_all()
        self._lending.release()
        self._budget.unregister(self)
        await trio.lowlevel.checkpoint()


@asynccontextmanager
async def open_reader(source: RangeSource, budget: ReadBudget, *, key: str, size: int,
                      etag: str, tuning: ReadTuning = DEFAULT_TUNING,
                      buffers: BufferPool | None = None) -> AsyncIterator[ObjectReader]:
    """An ObjectReader with a nursery of its own, closed on exit (scripts, tests; a mount
    passes its own nursery: a handle outlives any one call)."""
    async with trio.open_nursery() as nursery:
        reader = ObjectReader(source, budget, key=key, size=size, etag=etag, nursery=nursery,
                              tuning=tuning, buffers=buffers)
        try:
            yield reader
        finally:
            await reader.aclose()
