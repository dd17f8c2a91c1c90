"""The store's HTTP/1.1 client: kept-alive connections on trio streams, with h11 as the protocol.

Why not httpx's transport (httpcore) on this path: every request passes through httpx's
request and response models and httpcore's pool and stream layers, and goes out in two sends
(head, then body). A signed 4 KiB PutObject cost 0.60-0.75 ms of CPU that way on loopback,
0.42 ms through this module (docs/performance.md, "Small files"), and a small file is one
such request. What is written here is only the plumbing: the pool, trio streams and TLS,
one send for a head and its body. Everything the store's untrusted answer decides (status
line, headers, Content-Length and Transfer-Encoding validation, chunked coding, 1xx, answers
without a body, whether the connection may carry another request) is h11's, the state machine
httpx's own stack uses, and h11 also makes and checks each request's head (a body it framed
by Content-Length is read here, below). A hand-written parser in its place cost 0.1 ms less
per PutObject; that is not worth owning the parsing of untrusted answers.
httpx stays the client of the tests (an injected transport, tests/support/memory_s3.py) and
its exception types stay chute's vocabulary for transport failures
(s3_wire.transport_failure), so this module raises them. One connection's own work (its h11
state, each socket operation timed and its failures translated) is s3_connection.py's; this
module is the pool and the answer being read.

What it does, and the invariants that keep an answer with its request:
- A request's head goes out in one send with its body, or with the body's first chunk (a
  large body comes in chunks, each a send under the stall timeout, s3_transport.py): a
  second send cost 0.03 ms of CPU and 1.2 ms of wall time per 150 KB PutObject on loopback
  (the store reads the head and waits for the body). h11 hands a body back as given
  (send_with_data_passthrough); joining it to the head is the one copy, as before.
- Each connection has one ``h11.Connection``; an answer's head (at most HEAD_MAX) and a
  chunked body are read from its events (InformationalResponse skipped). A body h11 framed
  by Content-Length is read directly, counted: the bytes h11 got past the head, then the
  socket, each receive asking at most for what is still to come, so nothing past the body
  is read; ``read_into`` receives into the caller's buffer (``recv_into``; TLS: receive and
  copy). Through h11 each byte was copied twice more: 1.27 against 1.06 s of mount CPU per
  GiB read (docs/performance.md, "Reads"). A close before its end is RemoteProtocolError.
- A connection goes back to the pool only after its answer's end: through h11, when h11 has
  both sides DONE (nothing forbids keep-alive), no byte more received, and
  ``start_next_cycle()`` took it (a failed send marks ours failed: an early answer's
  connection never qualifies); after a direct body, only if exactly Content-Length bytes
  came and no more, the answer was HTTP/1.1 without ``Connection: close`` and our request
  went out whole. h11 never saw that body, so its cycle is abandoned: the connection gets a
  fresh ``h11.Connection``. One readable while idle (the store closed it) is dropped before
  use; any error, cancellation or unread body closes it. No answer is read as another's.
- Timeouts apply to each socket operation (connect, each send, each receive), so only a
  stall trips one; waiting for a free connection is not timed.
- Failures are httpx's exceptions, as httpcore raised them: ConnectError/ConnectTimeout
  (nothing sent), WriteError/WriteTimeout (not all sent), ReadError/ReadTimeout/
  RemoteProtocolError (sent; the answer may be lost; h11's RemoteProtocolError), and
  LocalProtocolError (h11's: a request that cannot be sent as asked).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Mapping

import h11
import httpx
import trio

from .quick_lock import take
from .s3_connection import BODY_RECEIVE, HEAD_MAX, HEAD_RECEIVE, Connection, failures

__all__ = ["HEAD_MAX", "ConnectionPool", "Response", "socket_options"]


class Response:
    """One answer being read: status, headers (names lower-cased, repeated ones joined with
    ", "), and the body as ``stream``, an async iterator of bytes-like pieces, or read whole
    into a caller's buffer with ``read_into``. ``aclose()`` must follow (it returns the
    connection to the pool only if the answer was read to its end)."""

    def __init__(self, pool: ConnectionPool, conn: Connection, method: str,
                 event: h11.Response, read_timeout: float) -> None:
        self.status_code = event.status_code
        headers: dict[str, str] = {}
        for raw_name, raw_value in event.headers:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.headers = headers
        self._pool = pool
        self._conn: Connection | None = conn
        self._read_timeout = read_timeout
        self._first: h11.Data | None = None
        self._done = False
        # A body framed by Content-Length as h11 decided (it refused conflicting or invalid
        # framing) is read here, not through h11.
        length = headers.get("content-length", "")
        self._remaining = -1  # the direct body's bytes still to come; -1: h11 reads it
        if (method != "HEAD" and self.status_code not in (204, 304)
                and "transfer-encoding" not in headers and length not in ("", "0")):
            self._remaining = int(length)
            self._received = 0
            buffered, closed = conn.h11.trailing_data
            self._pending = memoryview(buffered)
            # Reusable only if h11 allowed keep-alive, our request went out whole, and no
            # byte past the body arrived (checked as the body ends).
            self._reusable = (not closed and event.http_version == b"1.1"
                              and conn.h11.our_state is h11.DONE
                              and "close" not in headers.get("connection", "").lower())
            return
        first = conn.h11_next_event()  # no body (HEAD, 204, 304, Content-Length: 0): read
        self._done = type(first) is h11.EndOfMessage
        self._first = first if type(first) is h11.Data else None

    @property
    def stream(self) -> AsyncIterator[bytes]:
        return self._direct() if self._remaining >= 0 else self._body()

    async def read_into(self, into: memoryview) -> int | None:
        """The whole body read into ``into``, its size; None (nothing read) unless it is
        framed by a Content-Length that fits in ``into``: then read ``stream``."""
        conn = self._conn
        if conn is None or self._remaining < 0 or self._remaining > len(into):
            return None
        size = 0
        while self._remaining:
            if self._pending or not isinstance(conn.stream, trio.SocketStream):
                chunk = await self._next_piece(conn)
                into[size:size + len(chunk)] = chunk
                size += len(chunk)
                continue
            count = self._remaining
            with failures(httpx.ReadError, httpx.ReadTimeout, self._read_timeout):
                count = await conn.sock.recv_into(into[size:size + count], count)
            self._advance(count)
            size += count
        return size

    async def _direct(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while conn is not None and self._remaining:
            yield await self._next_piece(conn)

    async def _next_piece(self, conn: Connection) -> bytes | memoryview:
        """The next bytes of a direct body, at most those still to come."""
        if self._pending:
            piece = self._pending[:self._remaining]
            self._pending = self._pending[len(piece):]
            if self._pending:  # bytes past the body: never read as another answer
                self._reusable = False
        else:
            with failures(httpx.ReadError, httpx.ReadTimeout, self._read_timeout):
                piece = await conn.stream.receive_some(min(self._remaining, BODY_RECEIVE))
        self._advance(len(piece))
        return piece

    def _advance(self, count: int) -> None:
        if not count:  # the store closed the connection early
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body: received "
                f"{self._received} bytes, expected {self._received + self._remaining}")
        self._received += count
        self._remaining -= count
        self._done = not self._remaining

    async def _body(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None or self._done:
            return
        if self._first is not None:
            first, self._first = self._first, None
            yield first.data
        while True:
            event = conn.h11_next_event()
            if event is h11.NEED_DATA:
                await conn.receive(self._read_timeout, BODY_RECEIVE)
            elif type(event) is h11.Data:
                yield event.data
            elif type(event) is h11.EndOfMessage:
                self._done = True
                return
            else:
                raise httpx.RemoteProtocolError(f"unexpected {event!r} in an answer's body")

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._remaining >= 0:  # a direct body: h11 never saw it; a fresh one, if any
            reuse = self._done and self._reusable
            if reuse:
                conn.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEAD_MAX)
        else:
            reuse = self._done and conn.ready_for_next()
        if reuse:
            self._pool.put_back(conn)
        else:
            conn.close()
            self._pool.release()


class _Origin:
    """Where a URL's requests go: host, port, TLS or not, the Host header."""

    def __init__(self, url: str) -> None:
        parts = httpx.URL(url)
        if parts.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"the URL {url!r} is not http(s)")
        self.tls = parts.scheme == "https"
        self.host = parts.host
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix_length = len(url)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == (443 if self.tls else 80) else f"{host}:{self.port}"


class ConnectionPool:
    """At most ``max_connections`` connections to the store, kept alive between requests;
    a request waits (untimed) for one to be free."""

    def __init__(self, max_connections: int, *, socket_options: list[tuple[int, int, int]]
                 | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self._free = trio.Semaphore(max_connections)
        self._idle: dict[tuple[str, int, bool], list[Connection]] = {}
        self._origins: dict[str, _Origin] = {}
        self._socket_options = socket_options or []
        self._ssl = ssl_context
        """For https: httpx's default context (certifi's CAs, or SSL_CERT_FILE/SSL_CERT_DIR),
        as chute's connections had through httpx; made at the first https connection."""
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    def release(self) -> None:
        self._free.release()

    def put_back(self, conn: Connection) -> None:
        if self._closed:
            conn.close()
        else:
            self._idle.setdefault(conn.key, []).append(conn)
        self._free.release()

    async def request(self, method: str, url: str, headers: Mapping[str, str],
                      content: bytes | memoryview | AsyncIterator[memoryview], *,
                      connect_timeout: float, write_timeout: float, read_timeout: float,
                      ) -> Response:
        """Send one request and read its answer's head; the body is the answer's stream."""
        origin = self._origin(url)
        request = _request(method, url[origin.prefix_length:] or "/", headers, origin)
        await take(self._free)  # a free connection: no pass of trio's scheduler
        try:
            conn = await self._connection(origin, connect_timeout)
        except BaseException:
            self._free.release()
            raise
        try:
            try:
                if isinstance(content, (bytes, memoryview)):
                    body = (h11.Data(data=content),) if content else ()
                    await conn.send(conn.h11_send(request, *body, h11.EndOfMessage()),
                                    write_timeout)
                else:  # the head goes out with the first chunk
                    head = conn.h11_send(request)
                    async for chunk in content:
                        if not chunk:
                            continue
                        data = conn.h11_send(h11.Data(data=chunk))
                        await conn.send(head + data if head else data, write_timeout)
                        head = b""
                    end = conn.h11_send(h11.EndOfMessage())
                    if head or end:
                        await conn.send(head + end, write_timeout)
            except httpx.WriteError as unsent:
                conn.h11.send_failed()  # never reused, whatever the answer
                # A store may answer early (an error) and close before taking the whole
                # body; that answer is what to report (h11 reads it with our side still
                # sending, so the connection is never reused). Without one, the request was
                # not all sent, so the store cannot have acted on it: the WriteError stands.
                try:
                    return await self._answer(conn, method, read_timeout)
                except httpx.TransportError:
                    raise unsent from None
            return await self._answer(conn, method, read_timeout)
        except BaseException:
            conn.close()
            self._free.release()
            raise

    def _origin(self, url: str) -> _Origin:
        end = url.find("/", url.find("//") + 2)
        base = url if end < 0 else url[:end]
        origin = self._origins.get(base)
        if origin is None:
            origin = self._origins[base] = _Origin(base)
        return origin

    async def _connection(self, origin: _Origin, stall: float) -> Connection:
        key = (origin.host, origin.port, origin.tls)
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.sock.is_readable():  # readable while idle: closed, or garbage
                return conn
            conn.close()
        with failures(httpx.ConnectError, httpx.ConnectTimeout, stall):
            stream: trio.abc.Stream = await trio.open_tcp_stream(origin.host, origin.port)
            sock = stream.socket
            for option in self._socket_options:
                sock.setsockopt(*option)
            if origin.tls:
                if self._ssl is None:
                    self._ssl = httpx.create_ssl_context()
                stream = trio.SSLStream(stream, self._ssl, server_hostname=origin.host,
                                        https_compatible=True)
                try:
                    await stream.do_handshake()
                except BaseException:
                    sock.close()
                    raise
        return Connection(key, stream, sock)

    async def _answer(self, conn: Connection, method: str, stall: float) -> Response:
        """The answer's head (1xx answers skipped); its body is left to Response.stream."""
        while True:
            event = conn.h11_next_event()
            if event is h11.NEED_DATA:
                await conn.receive(stall, HEAD_RECEIVE)
            elif type(event) is h11.Response:
                return Response(self, conn, method, event, stall)
            elif type(event) is not h11.InformationalResponse:
                raise httpx.RemoteProtocolError(f"unexpected {event!r} before an answer")


def _request(method: str, target: str, headers: Mapping[str, str], origin: _Origin
             ) -> h11.Request:
    """The request's head as h11 checks it (a header it refuses: LocalProtocolError)."""
    items = list(headers.items())
    if "Host" not in headers and "host" not in headers:
        items.insert(0, ("Host", origin.host_header))
    try:
        return h11.Request(method=method, target=target, headers=items)
    except h11.LocalProtocolError as exc:
        raise httpx.LocalProtocolError(str(exc)) from exc
    except UnicodeEncodeError as exc:
        raise httpx.LocalProtocolError(f"a header is not ASCII: {exc}") from None


def socket_options(notsent_lowat: int) -> list[tuple[int, int, int]]:
    """TCP_NOTSENT_LOWAT where the platform has it (see s3_transport._NOTSENT_LOWAT)."""
    if hasattr(socket, "TCP_NOTSENT_LOWAT"):
        return [(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, notsent_lowat)]
    return []
