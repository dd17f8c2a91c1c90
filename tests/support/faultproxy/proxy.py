"""The proxy itself: a trio loop in a background thread that accepts connections on
127.0.0.1, decides per request which fault applies (if any), answers, resets or forwards it,
and plays outages (refusing or resetting connections for a while). Its public methods are
safe from any thread."""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import trio

from .answers import error_response
from .faults import ExpiredTokenFor, Fault, Outage, ResetBefore, Scenario, Status
from .forward import LOOPBACK, Conn, forward
from .kinds import Kind, classify
from .state import Counts, Injection, ScenarioState, Seen
from .wire import (
    CONTINUE,
    IO_ERRORS,
    PIECE,
    Head,
    ProtocolError,
    Reset,
    copy_body,
    discard,
    request_framing,
    set_linger0,
)

log = logging.getLogger(__package__)

RECEIVE_BUFFER = 64 * 1024
"""SO_RCVBUF of the proxy's client connections (the kernel doubles it for its bookkeeping)."""


class FaultProxy:
    """A fault-injecting reverse proxy from ``url`` (127.0.0.1) to ``upstream_url``.

    ``start()``/``stop()`` or use as a context manager. ``set_scenario()``, ``stats``,
    ``log``, ``connections`` and ``reset_stats()`` may be used from any thread.

    ``FaultProxy.for_store(store)`` also carries the store's ``access_key``, ``secret_key``
    and ``region`` and has ``endpoint_url`` (= ``url``), so it can stand in for the store
    where one is expected, e.g. ``mount_factory(server=proxy)``.
    """

    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: str | None = None

    @classmethod
    def for_store(cls, store: object, *, port: int = 0) -> FaultProxy:
        """A proxy in front of ``store`` (anything with endpoint_url and the S3 keys)."""
        proxy = cls(store.endpoint_url, port=port)  # type: ignore[attr-defined]
        proxy.access_key = store.access_key  # type: ignore[attr-defined]
        proxy.secret_key = store.secret_key  # type: ignore[attr-defined]
        proxy.region = getattr(store, "region", cls.region)
        return proxy

    def __init__(self, upstream_url: str, *, port: int = 0) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or parts.hostname not in (LOOPBACK, "localhost"):
            raise ValueError(f"upstream must be http://127.0.0.1:PORT, not {upstream_url!r}")
        if parts.port is None:
            raise ValueError(f"upstream {upstream_url!r} has no port")
        self.upstream_url = upstream_url
        self.upstream_port: int = parts.port
        self.port: int = port
        self._lock = threading.Lock()
        self._state: ScenarioState | None = None
        self._stats = {kind: Counts() for kind in Kind}
        self._log: list[Injection] = []
        self._requests: list[Seen] = []
        self._connections = 0
        self._request_ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        # trio-side state (touched only in the proxy's thread)
        self._conns: set[Conn] = set()
        self._wake: trio.Event | None = None
        self._accept_scope: trio.CancelScope | None = None
        self._stop_event: trio.Event | None = None
        self._listener: trio.socket.SocketType | None = None

    # -- public, any thread ------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("FaultProxy has no port before start()")
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def endpoint_url(self) -> str:
        return self.url

    def start(self, timeout: float = 10) -> None:
        if self._thread is not None:
            return
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._thread_main, name="faultproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("FaultProxy did not start")
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError(f"FaultProxy failed to start: {self._error!r}") from self._error

    def stop(self, timeout: float = 10) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        token = self._token
        if token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._request_stop)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("FaultProxy did not stop")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def set_scenario(self, scenario: Scenario | Fault | Iterable[Fault] | None) -> None:
        """Replace the scenario (its clock and counters start now); None: forward everything.

        Replacing the scenario also ends an outage in progress.
        """
        if scenario is not None and not isinstance(scenario, Scenario):
            scenario = Scenario((scenario,) if isinstance(scenario, Fault) else tuple(scenario))
        with self._lock:
            self._state = None if scenario is None else ScenarioState(scenario, time.monotonic())
        self._poke_threadsafe()

    @property
    def scenario(self) -> Scenario | None:
        with self._lock:
            return None if self._state is None else self._state.scenario

    @property
    def stats(self) -> dict[Kind, Counts]:
        """A snapshot: every ``Kind`` (also as its string value) to its ``Counts``."""
        with self._lock:
            return {kind: Counts(c.seen, c.forwarded, c.injected)
                    for kind, c in self._stats.items()}

    @property
    def log(self) -> list[Injection]:
        """A snapshot of every fault injected so far, in order."""
        with self._lock:
            return list(self._log)

    @property
    def requests(self) -> list[Seen]:
        """A snapshot of every request seen so far (kind, method, target, headers with
        lower-cased names), in order: what a client really sent."""
        with self._lock:
            return list(self._requests)

    @property
    def connections(self) -> int:
        """Client connections accepted (and served) so far."""
        with self._lock:
            return self._connections

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = {kind: Counts() for kind in Kind}
            self._log.clear()
            self._requests.clear()
            self._connections = 0

    def outage_active(self) -> bool:
        with self._lock:
            return self._state is not None and self._state.outage(time.monotonic()) is not None

    # -- thread and trio plumbing ------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by start(), or logged if it dies later
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                log.exception("FaultProxy crashed")

    def _poke_threadsafe(self) -> None:
        token = self._token
        if token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._poke)

    def _poke(self) -> None:
        """Make the listener loop re-read the scenario (trio thread)."""
        if self._wake is not None:
            self._wake.set()
            self._wake = trio.Event()
        if self._accept_scope is not None:
            self._accept_scope.cancel()

    def _request_stop(self) -> None:
        if self._stop_event is not None:
            self._stop_event.set()

    async def _bind(self, *, listen: bool) -> trio.socket.SocketType:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # A fixed, small receive buffer (inherited by accepted connections): a throttled
        # request then backs up into the client's socket as it does on a slow link, instead of
        # vanishing into a receive buffer the kernel grows to MiBs (autotuning), where the
        # client cannot see it still crawling and may take the wait for the answer for a
        # stall (measured: 1 to 3 of 3 runs of the 100 KiB/s row, by the buffer's growth).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        try:
            await sock.bind((LOOPBACK, self.port))
            if listen:
                sock.listen(128)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._wake = trio.Event()
        self._stop_event = trio.Event()
        self._listener = await self._bind(listen=True)
        self.port = self._listener.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._listen_loop, nursery)
                self._ready.set()
                await self._stop_event.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._listener.close()
            for conn in list(self._conns):
                conn.close()
            self._token = None

    def _current_outage(self) -> tuple[tuple[Outage, float] | None, float | None]:
        with self._lock:
            if self._state is None:
                return None, None
            now = time.monotonic()
            return self._state.outage(now), self._state.next_outage(now)

    async def _listen_loop(self, nursery: trio.Nursery) -> None:
        assert self._listener is not None and self._wake is not None
        while True:
            outage, next_start = self._current_outage()
            if outage is not None:
                await self._outage(nursery, *outage)
                continue
            with trio.CancelScope() as scope:
                if next_start is not None:
                    scope.deadline = trio.current_time() + max(0.0, next_start - time.monotonic())
                self._accept_scope = scope
                while True:
                    sock, _ = await self._listener.accept()
                    with self._lock:
                        self._connections += 1
                    nursery.start_soon(self._handle, trio.SocketStream(sock))
            self._accept_scope = None

    async def _outage(self, nursery: trio.Nursery, fault: Outage, end: float) -> None:
        log.info("faultproxy: outage (%s) for %.1f s", fault.mode, end - time.monotonic())
        self._kill_all()
        if fault.mode == "refuse":
            # Nothing listens, but the port stays bound (a bound socket that does not listen
            # answers SYN with RST), so no other program can take it meanwhile.
            assert self._listener is not None
            self._listener.close()
            self._listener = await self._bind_retrying(listen=False)
        with trio.move_on_at(trio.current_time() + max(0.0, end - time.monotonic())):
            assert self._wake is not None
            if fault.mode == "refuse":
                await self._wake.wait()
            else:
                with trio.CancelScope() as scope:
                    self._accept_scope = scope
                    while True:
                        assert self._listener is not None
                        sock, _ = await self._listener.accept()
                        set_linger0(sock)
                        sock.close()
                self._accept_scope = None
        if fault.mode == "refuse":
            assert self._listener is not None
            self._listener.listen(128)
        log.info("faultproxy: outage over")

    async def _bind_retrying(self, *, listen: bool) -> trio.socket.SocketType:
        for _ in range(200):
            with contextlib.suppress(OSError):
                return await self._bind(listen=listen)
            await trio.sleep(0.05)
        return await self._bind(listen=listen)

    def _kill_all(self) -> None:
        for conn in list(self._conns):
            conn.rst = True
            conn.scope.cancel()

    # -- one client connection ---------------------------------------------------------

    async def _handle(self, client: trio.SocketStream) -> None:
        conn = Conn(client)
        self._conns.add(conn)
        try:
            with conn.scope:
                try:
                    await self._serve(conn)
                except Reset:
                    conn.rst = True
                except IO_ERRORS as exc:
                    log.debug("faultproxy: connection dropped: %r", exc)
                    conn.rst = True
                except Exception:  # a bug here must not take the whole proxy down
                    log.exception("faultproxy: error serving a connection")
                    conn.rst = True
        finally:
            self._conns.discard(conn)
            conn.close()

    def _decide(self, kind: Kind, method: str, path: str, headers: dict[str, str]
                ) -> Fault | None:
        with self._lock:
            self._stats[kind].seen += 1
            self._requests.append(Seen(kind, method, path, headers))
            fault = None if self._state is None else self._state.match(kind, time.monotonic())
            if fault is not None:
                self._stats[kind].injected += 1
                self._log.append(Injection(kind, fault.name, method, path))
                log.info("faultproxy: %s on %s %s %s", fault.name, kind, method, path)
            return fault

    async def _serve(self, conn: Conn) -> None:
        while True:
            raw = await conn.reader.read_head()
            if raw is None:
                return
            request = Head.parse(raw)
            if len(request.first) != 3 or not request.first[2].startswith("HTTP/1."):
                raise ProtocolError(f"not an HTTP/1.x request: {request.first!r}")
            method, path = request.first[0].upper(), request.first[1]
            if self._current_outage()[0] is not None:
                # A connection accepted just before the outage, whose task had not yet
                # registered it when the outage reset every connection: it must not serve.
                raise Reset
            kind = classify(method, path, request.headers)
            fault = self._decide(kind, method, path,
                                 {k.lower(): v for k, v in request.headers})
            if isinstance(fault, Outage):
                self._poke()  # the listener loop starts the outage and resets every connection
                raise Reset
            if not await self._exchange(conn, request, method, path, kind, fault):
                return

    async def _exchange(self, conn: Conn, request: Head, method: str, path: str, kind: Kind,
                        fault: Fault | None) -> bool:
        """Serve one request; whether the client connection may serve another."""
        framing = request_framing(request)
        expects_continue = "100-continue" in request.tokens("expect")
        keep = request.first[2] == "HTTP/1.1" and "close" not in request.tokens("connection")

        if isinstance(fault, ResetBefore):
            if fault.after_body_bytes and framing != 0:
                if expects_continue:
                    await conn.client.send_all(CONTINUE)
                remaining = fault.after_body_bytes
                while remaining > 0:
                    remaining -= len(await conn.reader.read_some(min(remaining, PIECE)))
            raise Reset

        if isinstance(fault, Status | ExpiredTokenFor):
            if expects_continue and framing != 0:
                await conn.client.send_all(CONTINUE)
            await copy_body(conn.reader, framing, discard)
            request_id = f"FAULTPROXY{next(self._request_ids):06d}"
            await conn.client.send_all(error_response(fault.answer(), method, path, request_id))
            return keep and not (isinstance(fault, Status) and fault.close)

        return await forward(conn, request, method, fault, framing, keep, self.upstream_port,
                             lambda: self._count_forwarded(kind))

    def _count_forwarded(self, kind: Kind) -> None:
        with self._lock:
            self._stats[kind].forwarded += 1
