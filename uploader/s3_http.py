"""The store's HTTP/1.1 client: kept-alive connections on trio streams, and nothing else.

Why not httpx's transport (httpcore and h11) on this path: every request passes through
httpx's request and response models, httpcore's pool, h11's state machine and header
validation, and goes out in two sends (head, then body). A signed 4 KiB PutObject costs
0.60-0.75 ms of CPU that way on loopback, 0.16-0.21 ms written here (docs/performance.md,
"Small files"), and a small file is one such request: that difference is a quarter of the
mount's CPU per file. httpx stays the client of the tests (an injected transport,
tests/support/memory_s3.py) and its exception types stay chute's vocabulary for transport
failures (s3_wire.transport_failure), so this module raises them.

What it does, and the invariants that keep an answer with its request:
- A request's head goes out in one send with its body, or with the body's first chunk (a
  large body comes in chunks, each a send under the stall timeout, s3_transport.py): a
  second send cost 0.03 ms of CPU and 1.2 ms of wall time per 150 KB PutObject on loopback
  (the store reads the head and waits for the body).
- An answer is framed by Content-Length, by chunked transfer coding, or by the connection's
  close (that connection is then never reused). HEAD answers and 1xx/204/304 have no body;
  interim 1xx answers are skipped.
- A connection goes back to the pool only once its answer has been read to the end with no
  byte more received; one that became readable while idle (the store closed it) is dropped
  before use; any error or cancellation closes it. So no answer is ever read as another
  request's.
- Timeouts apply to each socket operation (connect, each send, each receive), so only a
  stall trips one; waiting for a free connection is not timed.
- Failures are httpx's exceptions, as httpcore raised them: ConnectError/ConnectTimeout
  (nothing sent), WriteError/WriteTimeout (not all sent), ReadError/ReadTimeout/
  RemoteProtocolError (sent; the answer may be lost), LocalProtocolError (a header that
  cannot be sent).
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager

import httpx
import trio

HEAD_RECEIVE = 64 * 1024
BODY_RECEIVE = 256 * 1024
"""Bytes asked of the socket at a time while reading an answer's head, and its body."""
HEAD_MAX = 64 * 1024
"""The longest answer head (status line and headers) read; a longer one is a protocol
error (S3's heads are a few KiB even with user metadata)."""
_FORBIDDEN = re.compile(r"[\r\n\0]")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_NO_BODY_STATUS = frozenset((204, 304))


class Response:
    """One answer being read: status, headers (names lower-cased, repeated ones joined with
    ", "), and the body as ``stream``, an async iterator of bytes. ``aclose()`` must follow
    (it returns the connection to the pool only if the answer was read to its end)."""

    def __init__(self, pool: ConnectionPool, conn: _Connection, status: int,
                 headers: dict[str, str], framing: int | None, reusable: bool,
                 read_timeout: float) -> None:
        self.status_code = status
        self.headers = headers
        self._pool = pool
        self._conn: _Connection | None = conn
        self._framing = framing  # bytes left (Content-Length), -1 chunked, None until close
        self._reusable = reusable
        self._read_timeout = read_timeout
        self._done = framing == 0

    @property
    def stream(self) -> AsyncIterator[bytes]:
        return self._body()

    async def _body(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None or self._done:
            return
        if self._framing is None:
            while data := await conn.take_or_receive(self._read_timeout):
                yield data
            self._reusable = False
        elif self._framing > 0:
            left = self._framing
            while left:
                data = await conn.take_or_receive(self._read_timeout, left)
                if not data:
                    raise httpx.RemoteProtocolError(
                        f"peer closed connection without sending complete message body: "
                        f"{left} bytes missing")
                left -= len(data)
                yield data
        else:
            async for data in _chunked(conn, self._read_timeout):
                yield data
        self._done = True

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and self._reusable and not conn.buffer:
            self._pool.put_back(conn)
        else:
            conn.close()
            self._pool.release()


async def _chunked(conn: _Connection, stall: float) -> AsyncIterator[bytes]:
    """The body of a chunked answer, chunk by chunk; trailers are read and dropped."""
    while True:
        line = await conn.read_line(stall)
        size_text = line.split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_text):
            raise httpx.RemoteProtocolError(f"bad chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        if size == 0:
            while await conn.read_line(stall):
                pass  # trailers
            return
        while size:
            data = await conn.take_or_receive(stall, size)
            if not data:
                raise httpx.RemoteProtocolError("peer closed connection within a chunk")
            size -= len(data)
            yield data
        if await conn.read_line(stall):
            raise httpx.RemoteProtocolError("a chunk is not followed by CRLF")


class _Connection:
    """One connection: its stream, its socket (to tell whether an idle one was closed),
    and the bytes received and not yet consumed."""

    def __init__(self, key: tuple[str, int, bool], stream: trio.abc.Stream,
                 sock: trio.socket.SocketType) -> None:
        self.key = key
        self.stream = stream
        self.sock = sock
        self.buffer = bytearray()

    def close(self) -> None:
        self.sock.close()

    async def send(self, data: bytes | memoryview, stall: float) -> None:
        with _failures(httpx.WriteError, httpx.WriteTimeout, stall):
            await self.stream.send_all(data)

    async def receive(self, stall: float, size: int = HEAD_RECEIVE) -> bytes:
        with _failures(httpx.ReadError, httpx.ReadTimeout, stall):
            data = await self.stream.receive_some(size)
        return data if type(data) is bytes else bytes(data)

    async def take_or_receive(self, stall: float, most: int | None = None) -> bytes:
        """Buffered bytes first, else what the socket has; at most ``most``; b"" at EOF."""
        if not self.buffer:
            data = await self.receive(stall, min(most or BODY_RECEIVE, BODY_RECEIVE))
            if most is None or len(data) <= most:
                return data
            self.buffer += data
        most = len(self.buffer) if most is None else most
        data = bytes(self.buffer[:most])
        del self.buffer[:most]
        return data

    async def read_line(self, stall: float) -> bytes:
        """One CRLF-ended line (without its CRLF); a protocol error at EOF or if too long."""
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > HEAD_MAX:
                raise httpx.RemoteProtocolError("a line of the answer is too long")
            data = await self.receive(stall)
            if not data:
                raise httpx.RemoteProtocolError("peer closed connection mid-answer")
            self.buffer += data
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 2]
        return line

    async def read_head(self, stall: float) -> bytes:
        """The answer's head up to its blank line (excluded)."""
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > HEAD_MAX:
                raise httpx.RemoteProtocolError("the answer's head is too long")
            data = await self.receive(stall)
            if not data:
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response." if not self.buffer
                    else "peer closed connection mid-head")
            self.buffer += data
        head = bytes(self.buffer[:end])
        del self.buffer[:end + 4]
        return head


@contextmanager
def _failures(error: type[httpx.TransportError], timeout_error: type[httpx.TimeoutException],
              seconds: float) -> Iterator[None]:
    """``seconds`` for one socket operation; its failures as httpx's ``error`` types."""
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise timeout_error(f"no progress for {seconds:g} s") from None
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
        raise error(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    ) from exc


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


class ConnectionPool:
    """At most ``max_connections`` connections to the store, kept alive between requests;
    a request waits (untimed) for one to be free."""

    def __init__(self, max_connections: int, *, socket_options: list[tuple[int, int, int]]
                 | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self._free = trio.Semaphore(max_connections)
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}
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

    def put_back(self, conn: _Connection) -> None:
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
        head = _head(method, url[origin.prefix_length:] or "/", headers, origin)
        await self._free.acquire()
        try:
            conn = await self._connection(origin, connect_timeout)
        except BaseException:
            self._free.release()
            raise
        try:
            try:
                if isinstance(content, (bytes, memoryview)):
                    await conn.send(head + content, write_timeout)
                else:  # the head goes out with the first chunk
                    async for chunk in content:
                        await conn.send(head + chunk if head else chunk, write_timeout)
                        head = b""
                    if head:
                        await conn.send(head, write_timeout)
            except httpx.WriteError as unsent:
                # A store may answer early (an error) and close before taking the whole
                # body; that answer is what to report. Without one, the request was not
                # all sent, so the store cannot have acted on it: the WriteError stands.
                try:
                    return await self._answer(conn, method, read_timeout, reusable=False)
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

    async def _connection(self, origin: _Origin, stall: float) -> _Connection:
        key = (origin.host, origin.port, origin.tls)
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.sock.is_readable():  # readable while idle: closed, or garbage
                return conn
            conn.close()
        with _failures(httpx.ConnectError, httpx.ConnectTimeout, stall):
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
        return _Connection(key, stream, sock)

    async def _answer(self, conn: _Connection, method: str, stall: float,
                      reusable: bool = True) -> Response:
        while True:
            status, headers, version = _parse_head(await conn.read_head(stall))
            if not 100 <= status < 200:
                break
            if status == 101:
                raise httpx.RemoteProtocolError("the store switched protocols")
        connection = headers.get("connection", "").lower()
        reusable = reusable and ("close" not in connection if version == "HTTP/1.1"
                                 else "keep-alive" in connection)
        framing: int | None
        if method == "HEAD" or status in _NO_BODY_STATUS:
            framing = 0
        elif "transfer-encoding" in headers:
            framing = -1 if headers["transfer-encoding"].lower().endswith("chunked") else None
        elif "content-length" in headers:
            framing = _content_length(headers["content-length"])
        else:
            framing = None
        if framing is None:
            reusable = False
        return Response(self, conn, status, headers, framing, reusable, stall)


def _head(method: str, target: str, headers: Mapping[str, str], origin: _Origin) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    if "Host" not in headers and "host" not in headers:
        lines.append(f"Host: {_host_header(origin)}\r\n")
    for name, value in headers.items():
        if _FORBIDDEN.search(name) or _FORBIDDEN.search(value) or ":" in name:
            raise httpx.LocalProtocolError(f"the header {name!r} cannot be sent")
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    try:
        return "".join(lines).encode("ascii")
    except UnicodeEncodeError as exc:
        raise httpx.LocalProtocolError(f"a header is not ASCII: {exc}") from None


def _host_header(origin: _Origin) -> str:
    host = f"[{origin.host}]" if ":" in origin.host else origin.host
    default = 443 if origin.tls else 80
    return host if origin.port == default else f"{host}:{origin.port}"


def _parse_head(head: bytes) -> tuple[int, dict[str, str], str]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise httpx.RemoteProtocolError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise httpx.RemoteProtocolError(f"a malformed header line: {line[:60]!r}")
        name = name.lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(code), headers, version


def _content_length(value: str) -> int:
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1 or not (length := values.pop()).isdigit():
        raise httpx.RemoteProtocolError(f"a bad Content-Length {value[:40]!r}")
    return int(length)


def socket_options(notsent_lowat: int) -> list[tuple[int, int, int]]:
    """TCP_NOTSENT_LOWAT where the platform has it (see s3_transport._NOTSENT_LOWAT)."""
    if hasattr(socket, "TCP_NOTSENT_LOWAT"):
        return [(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, notsent_lowat)]
    return []
