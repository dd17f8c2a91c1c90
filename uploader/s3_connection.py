"""One kept-alive connection to the store: its stream, its h11 state, its timed socket work.

Split from s3_http.py (the pool, and the answer being read) so that each has one job: this
module is what happens on one connection; s3_http.py decides which connection a request
takes, what it sends on it, and whether it goes back to the pool.

Every socket operation is timed on its own (``seconds`` of no progress: only a stall trips
it), and its failures leave here as httpx's exception types, the vocabulary
s3_wire.transport_failure reads ("may the store have acted?"). :class:`_Failures` is that
timer and translator in one object rather than two stacked generator context managers
(``contextmanager`` over ``trio.fail_after``): the same cancel scope and the same errors,
for a third less CPU on an operation a small file's PutObject makes five times.
"""

from __future__ import annotations

import ssl
from types import TracebackType

import h11
import httpx
import trio

HEAD_RECEIVE = 64 * 1024
BODY_RECEIVE = 256 * 1024
"""Bytes asked of the socket at a time while reading an answer's head, and its body."""
HEAD_MAX = 64 * 1024
"""h11's max_incomplete_event_size: an answer head (status line and headers) still incomplete
with more than this received is a protocol error (h11 checks between receives, so a head
that ends within the receive crossing it is read). S3's heads are a few KiB even with user
metadata."""

_SOCKET_FAILURES = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError)


class Connection:
    """One connection: its stream, its socket (to tell whether an idle one was closed), and
    its h11 state machine, which holds the bytes received and not yet consumed."""

    def __init__(self, key: tuple[str, int, bool], stream: trio.abc.Stream,
                 sock: trio.socket.SocketType) -> None:
        self.key = key
        self.stream = stream
        self.sock = sock
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEAD_MAX)

    def close(self) -> None:
        self.sock.close()

    def h11_send(self, *events: h11.Event) -> bytes | memoryview:
        """What ``events`` put on the wire; a lone body's bytes are the caller's, not a copy."""
        pieces: list[bytes] = []
        try:
            for event in events:
                pieces += self.h11.send_with_data_passthrough(event) or ()
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc)) from exc
        pieces = [piece for piece in pieces if piece]
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def h11_next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        try:
            return self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc

    def ready_for_next(self) -> bool:
        """Whether h11 lets this connection carry another request, nothing more received."""
        if (self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE
                or self.h11.trailing_data != (b"", False)):
            return False
        try:
            self.h11.start_next_cycle()
        except h11.LocalProtocolError:
            return False
        return True

    async def send(self, data: bytes | memoryview, stall: float) -> None:
        with failures(httpx.WriteError, httpx.WriteTimeout, stall):
            await self.stream.send_all(data)

    async def receive(self, stall: float, size: int) -> None:
        """What the socket has, handed to h11 (b"" at EOF: h11 decides what a close means)."""
        with failures(httpx.ReadError, httpx.ReadTimeout, stall):
            data = await self.stream.receive_some(size)
        if (not data and self.h11.their_state is h11.SEND_RESPONSE
                and not self.h11.trailing_data[0]):
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        self.h11.receive_data(data)


class _Failures:
    """See :func:`failures`."""

    __slots__ = ("_error", "_scope", "_seconds", "_timeout_error")

    def __init__(self, error: type[httpx.TransportError],
                 timeout_error: type[httpx.TimeoutException], seconds: float) -> None:
        self._error, self._timeout_error, self._seconds = error, timeout_error, seconds
        self._scope = trio.CancelScope(deadline=trio.current_time() + seconds)

    def __enter__(self) -> None:
        self._scope.__enter__()

    def __exit__(self, etype: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        try:
            handled = self._scope.__exit__(etype, exc, tb)  # True: its own deadline's Cancelled
        except _SOCKET_FAILURES as other:
            raise self._error(_describe(other)) from other
        if self._scope.cancelled_caught:
            raise self._timeout_error(f"no progress for {self._seconds:g} s") from None
        if not handled and isinstance(exc, _SOCKET_FAILURES):
            raise self._error(_describe(exc)) from exc
        return handled


def failures(error: type[httpx.TransportError], timeout_error: type[httpx.TimeoutException],
             seconds: float) -> _Failures:
    """``with failures(...)``: ``seconds`` for one socket operation (``timeout_error`` if it
    makes no progress that long); its socket failures raised as httpx's ``error``."""
    return _Failures(error, timeout_error, seconds)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
