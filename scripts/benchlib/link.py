"""A network link in front of the store, for ``bench.py --link``: a relay on 127.0.0.1 that
gives every byte between a client and the store a fixed one-way delay and a shared bandwidth
cap, as a real path would, and counts the S3 requests that cross it by operation.

The model, per direction (client to store, store to client), shared by every connection:

- **a transmitter** at ``rate`` bytes/s: a byte leaves after every byte offered before it
  (FIFO across connections), so N connections share the rate; ``rate=None``: no cap;
- **propagation**: each byte arrives ``rtt / 2`` seconds after it left;
- **a bottleneck buffer** of one round trip at the rate (the usual rule of thumb, at least
  64 KiB): a sender whose bytes would wait longer than that in the queue waits for room
  instead (backpressure where a real router would drop and TCP back off);

and per connection and direction, TCP's windows without losses:

- at most ``window`` bytes unacknowledged (default 4 MiB, Linux's default ``tcp_wmem``
  maximum), an acknowledgement coming back ``rtt / 2`` after its byte was delivered (so a
  receiver slower than the link, such as a busy store, holds the window shut as TCP's
  receive window would);
- **slow start**: the congestion window opens at 10 segments and grows by every byte
  acknowledged (doubling per round trip) up to ``window``, and falls back to 10 segments
  after an idle spell longer than the retransmission timeout (``rtt`` + 200 ms), as Linux
  does by default (``tcp_slow_start_after_idle``);
- **the handshake**: a new connection's first byte leaves one round trip after ``connect``.

So one connection moves at most ``window / rtt`` bytes/s, a request and its answer take at
least one round trip, and a client needs about the bandwidth-delay product in flight, over
enough connections, to fill the link. Losses, reordering and jitter are not modelled.

Requests are framed with the fault proxy's HTTP/1.1 reader and classified with its
``classify`` (``tests.support.faultproxy``, which scripts may use); bytes are relayed
unchanged, so SigV4 signatures hold. The relay runs ``trio.run`` in a background thread.
"""

from __future__ import annotations

import collections
import contextlib
import math
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import _repo  # noqa: F401  (first: the repo root on sys.path, for tests.support)
import trio

from tests.support.faultproxy.kinds import classify
from tests.support.faultproxy.wire import (
    PIECE,
    Head,
    ProtocolError,
    Reader,
    copy_body,
    request_framing,
)

LOOPBACK = "127.0.0.1"
MSS = 1448
INITIAL_SEGMENTS = 10
MIN_RTO = 0.2
MIN_BUFFER = 64 * 1024


@dataclass(frozen=True)
class LinkModel:
    """A path's round-trip time (seconds), its rate (bytes/s; None: no cap), the largest
    window one TCP connection may have in flight, and whether windows start small."""

    rtt: float
    rate: float | None = None
    window: int = 4 << 20
    slow_start: bool = True

    @property
    def label(self) -> str:
        rate = "no cap" if self.rate is None else f"{self.rate * 8 / 1e6:g} Mbit/s"
        return f"{self.rtt * 1000:g} ms / {rate}"

    def floor_seconds(self, files: int, nbytes: int, dirs: int = 0) -> float:
        """The one-round-trip floor of ``files`` files of ``nbytes`` in all, sent one after
        the other: a round trip each plus every byte at the rate; with ``dirs``, a round
        trip for each of that many directories too (a durable mkdir is one PUT)."""
        return (files + dirs) * self.rtt + (nbytes / self.rate if self.rate else 0.0)


class Direction:
    """One direction of the link, shared by every connection: a FIFO transmitter at ``rate``
    and a propagation delay of ``delay``."""

    def __init__(self, rate: float | None, delay: float, buffer_seconds: float) -> None:
        self.rate, self.delay, self.buffer_seconds = rate, delay, buffer_seconds
        self.free_at = 0.0

    async def send(self, nbytes: int) -> float:
        """Queue ``nbytes`` on the link (waiting for room in its buffer); when they arrive."""
        if self.rate is None:
            return trio.current_time() + self.delay
        # Room in the buffer (a sender woken with others may overshoot it by a piece).
        await trio.sleep_until(self.free_at - self.buffer_seconds)
        start = max(trio.current_time(), self.free_at)
        self.free_at = start + nbytes / self.rate
        return self.free_at + self.delay


class Window:
    """One connection's send window in one direction: bytes in flight until acknowledged
    (``acked``: a byte was delivered, its acknowledgement due at ``at``), a congestion
    window that opens as acknowledgements come (slow start), up to ``limit``."""

    def __init__(self, model: LinkModel) -> None:
        self.limit = model.window
        self.initial = min(model.window, INITIAL_SEGMENTS * MSS)
        self.cwnd = self.initial if model.slow_start else model.window
        self.slow_start = model.slow_start
        self.rto = model.rtt + MIN_RTO
        self.acks: collections.deque[tuple[float, int]] = collections.deque()
        self.in_flight = 0
        self.last_sent = -math.inf
        self._acked = trio.Event()

    def _collect(self, now: float) -> None:
        while self.acks and self.acks[0][0] <= now:
            _, n = self.acks.popleft()
            self.in_flight -= n
            self.cwnd = min(self.limit, self.cwnd + n)

    async def room(self) -> int:
        """Bytes that may leave now (at least 1): waits for acknowledgements if none."""
        while True:
            now = trio.current_time()
            self._collect(now)
            if self.slow_start and not self.in_flight and now - self.last_sent > self.rto:
                self.cwnd = min(self.cwnd, self.initial)
            if self.cwnd > self.in_flight:
                return self.cwnd - self.in_flight
            if self.acks:
                await trio.sleep_until(self.acks[0][0])
            else:  # nothing delivered yet: wait for the first delivery
                self._acked = trio.Event()
                await self._acked.wait()

    def sent(self, nbytes: int) -> None:
        self.in_flight += nbytes
        self.last_sent = trio.current_time()

    def acked(self, nbytes: int, at: float) -> None:
        self.acks.append((at, nbytes))
        self._acked.set()


class Sender:
    """One direction of one connection: what is written here reaches ``stream`` as the link
    and the window allow, in order; ``close()`` ends it with EOF after the last byte."""

    def __init__(self, stream: trio.SocketStream, direction: Direction, model: LinkModel
                 ) -> None:
        self.stream, self.direction = stream, direction
        self.window = Window(model)
        self._send, self._receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            room = await self.window.room()
            piece, view = bytes(view[:room]), view[room:]
            arrival = await self.direction.send(len(piece))
            self.window.sent(len(piece))
            self._send.send_nowait((arrival, piece))

    def close(self) -> None:
        self._send.close()

    async def deliver(self) -> None:
        async with self._receive:
            async for arrival, piece in self._receive:
                await trio.sleep_until(arrival)
                await self.stream.send_all(piece)
                self.window.acked(len(piece), trio.current_time() + self.direction.delay)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await self.stream.send_eof()


class LinkProxy:
    """A relay from ``url`` (127.0.0.1) to ``upstream_url`` through a ``LinkModel`` (set
    with ``set_model``, between runs: each connection keeps the model it opened with).

    ``counts()`` are the requests seen per S3 operation since ``reset_counts()``, and
    ``connections`` the connections accepted; both safe from any thread. Stands in for the
    store where one is expected (``endpoint_url``, ``access_key``, ``secret_key``,
    ``region`` and the store process, taken from ``store``).
    """

    def __init__(self, store: object, model: LinkModel) -> None:
        self._store = store
        parts = urlsplit(store.endpoint_url)  # type: ignore[attr-defined]
        if parts.hostname not in (LOOPBACK, "localhost") or parts.port is None:
            raise ValueError(f"the store must be on 127.0.0.1:PORT, not {parts.netloc}")
        self.upstream_port = parts.port
        self.port = 0
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}
        """The first request line seen of each kind (which listing "Other" was, say)."""
        self._connections = 0
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self.set_model(model)

    def __getattr__(self, name: str) -> object:  # access_key, secret_key, region, _process
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._store, name)

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def set_model(self, model: LinkModel) -> None:
        buffer_seconds = max(model.rtt, MIN_BUFFER / model.rate if model.rate else 0.0)
        with self._lock:
            self.model = model
            self._up = Direction(model.rate, model.rtt / 2, buffer_seconds)
            self._down = Direction(model.rate, model.rtt / 2, buffer_seconds)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()
            self._connections = 0

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._thread_main, name="link", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"link proxy did not start: {self._error!r}")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        token, thread = self._token, self._thread
        if token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._stop.set)  # type: ignore[union-attr]
        if thread is not None:
            thread.join(10)

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by __enter__ if it happens at the start
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await listener.bind((LOOPBACK, 0))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._accept, listener, nursery)
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            listener.close()

    async def _accept(self, listener: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            sock, _ = await listener.accept()
            with self._lock:
                self._connections += 1
                model, up, down = self.model, self._up, self._down
            nursery.start_soon(self._serve, trio.SocketStream(sock), model, up, down)

    def _count(self, head: bytes) -> None:
        request = Head.parse(head)
        kind = classify(request.first[0], request.first[1] if len(request.first) > 1 else "",
                        request.headers)
        with self._lock:
            self._counts[kind.value] += 1
            self.examples.setdefault(kind.value, " ".join(request.first[:2])[:200])

    async def _serve(self, client: trio.SocketStream, model: LinkModel, up: Direction,
                     down: Direction) -> None:
        upstream: trio.SocketStream | None = None
        try:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                     OSError, ProtocolError):
                await trio.sleep(model.rtt)  # SYN, SYN-ACK: the first byte leaves after this
                upstream = await trio.open_tcp_stream(LOOPBACK, self.upstream_port)
                to_store = Sender(upstream, up, model)
                to_client = Sender(client, down, model)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(to_store.deliver)
                    nursery.start_soon(to_client.deliver)
                    nursery.start_soon(_requests, Reader(client), to_store, self._count)
                    nursery.start_soon(_answers, upstream, to_client)
        finally:
            for stream in (client, upstream):
                if stream is not None:
                    stream.socket.close()


async def _requests(reader: Reader, sender: Sender, count: Callable[[bytes], None]) -> None:
    """Client to store: each request head counted, then it and its body sent on the link."""
    try:
        while (head := await reader.read_head()) is not None:
            count(head)
            await sender.write(head)
            await copy_body(reader, request_framing(Head.parse(head)), sender.write)
    finally:
        sender.close()


async def _answers(upstream: trio.SocketStream, sender: Sender) -> None:
    """Store to client: the bytes as they come."""
    try:
        while data := await upstream.receive_some(PIECE):
            await sender.write(data)
    finally:
        sender.close()
