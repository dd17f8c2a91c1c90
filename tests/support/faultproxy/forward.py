"""Forwarding one request: the client connection and its upstream connection, the request
relayed upstream through a shaper while the answer is relayed back, and the faults that act
on the way (reset after the upstream acted, stalls, throttling)."""

from __future__ import annotations

from collections.abc import Callable

import trio

from .faults import Fault, ResetAfter, StallRequest, StallResponse, Throttle
from .wire import (
    IO_ERRORS,
    Framing,
    Head,
    ProtocolError,
    Reader,
    Reset,
    Shaper,
    copy_body,
    discard,
    response_framing,
    reusable,
    set_linger0,
)

LOOPBACK = "127.0.0.1"
PUMP_GRACE = 1.0
"""After relaying a response, how long the request body may still take to finish arriving."""


class Conn:
    """One client connection and the upstream connection serving it."""

    def __init__(self, client: trio.SocketStream) -> None:
        self.client = client
        self.reader = Reader(client)
        self.upstream: trio.SocketStream | None = None
        self.up_reader: Reader | None = None
        self.scope = trio.CancelScope()
        self.rst = False

    def drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.socket.close()
        self.upstream = self.up_reader = None

    def close(self) -> None:
        self.drop_upstream()
        if self.rst:
            set_linger0(self.client.socket)
        self.client.socket.close()


async def forward(conn: Conn, request: Head, method: str, fault: Fault | None,
                  framing: Framing, keep: bool, upstream_port: int,
                  count_forwarded: Callable[[], None]) -> bool:
    """Relay one request upstream and its answer back, applying ``fault`` if it acts on the
    way (ResetAfter, StallRequest, StallResponse, Throttle); whether the client connection
    may serve another request."""
    if conn.upstream is not None:
        assert conn.up_reader is not None
        if not reusable(conn.upstream, conn.up_reader):
            conn.drop_upstream()
    if conn.upstream is None:
        conn.upstream = await trio.open_tcp_stream(LOOPBACK, upstream_port)
        conn.up_reader = Reader(conn.upstream)
    upstream, up_reader = conn.upstream, conn.up_reader
    assert up_reader is not None
    count_forwarded()

    # The request stream (head and body) goes through a shaper.
    rate = stall_at = None
    stall_for, then = 0.0, "continue"
    if isinstance(fault, Throttle) and fault.direction in ("request", "both"):
        rate = fault.bytes_per_second
    if isinstance(fault, StallRequest):
        length = framing if isinstance(framing, int) else 0
        if fault.at_bytes is not None:
            stall_at = len(request.raw) + (
                min(fault.at_bytes, length - 1) if length else fault.at_bytes)
        else:
            stall_at = len(request.raw) + length // 2 if length else 0
        stall_for, then = fault.seconds, fault.then
    upstream_broken = False

    async def send_up(data: bytes) -> None:
        nonlocal upstream_broken
        if upstream_broken:
            return
        try:
            await upstream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            upstream_broken = True  # keep draining the client; the response tells

    shaper = Shaper(send_up, rate=rate, stall_at=stall_at, stall_for=stall_for,
                     then=then)  # type: ignore[arg-type]
    body_done = trio.Event()
    failure: BaseException | None = None

    async def pump() -> None:
        nonlocal failure
        try:
            await shaper.write(request.raw)
            await copy_body(conn.reader, framing, shaper.write)
            await shaper.finish()
            body_done.set()
        except (Reset, *IO_ERRORS) as exc:
            failure = exc
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump)
        try:
            keep = await relay_response(conn, up_reader, method, fault, body_done, keep)
        except (Reset, *IO_ERRORS) as exc:
            failure = failure or exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if upstream_broken:
        conn.drop_upstream()
    return keep

async def relay_response(conn: Conn, up_reader: Reader, method: str, fault: Fault | None,
                         body_done: trio.Event, keep: bool) -> bool:
    """Relay the upstream's answer (after any 1xx) to the client, shaped as ``fault`` says;
    whether both connections may serve another request."""
    while True:
        raw = await up_reader.read_head()
        if raw is None:
            raise ProtocolError("upstream closed the connection without a response")
        response = Head.parse(raw)
        try:
            status = int(response.first[1])
        except ValueError as exc:
            raise ProtocolError(f"bad status line {response.first!r}") from exc
        if status == 101:
            raise ProtocolError("upgrades are not supported")
        if 100 <= status < 200:
            await conn.client.send_all(raw)  # 100 Continue: the client may send its body
            continue
        break
    framing = response_framing(method, status, response)
    upstream_keeps = response.first[0] == "HTTP/1.1" and framing != "close" and \
        "close" not in response.tokens("connection")

    if isinstance(fault, ResetAfter):
        await copy_body(up_reader, framing, discard)
        with trio.move_on_after(PUMP_GRACE):
            await body_done.wait()
        raise Reset

    rate = stall_at = None
    stall_for, then = 0.0, "continue"
    if isinstance(fault, Throttle) and fault.direction in ("response", "both"):
        rate = fault.bytes_per_second
    if isinstance(fault, StallResponse):
        total = len(raw) + framing if isinstance(framing, int) else None
        if fault.at_bytes is not None:
            stall_at = fault.at_bytes if total is None else min(fault.at_bytes, total - 1)
        else:
            stall_at = len(raw) if total is None else total // 2
        stall_for, then = fault.seconds, fault.then
    shaper = Shaper(conn.client.send_all, rate=rate, stall_at=stall_at,
                     stall_for=stall_for, then=then)  # type: ignore[arg-type]
    await shaper.write(raw)
    await copy_body(up_reader, framing, shaper.write)
    await shaper.finish()

    if not body_done.is_set():
        # Answered before the whole request body arrived (an early error, or a client
        # still waiting for 100 Continue): give it a moment, else give up the connection.
        with trio.move_on_after(PUMP_GRACE):
            await body_done.wait()
    if not body_done.is_set():
        conn.drop_upstream()
        return False
    if not upstream_keeps:
        conn.drop_upstream()
    return keep and upstream_keeps
