"""HTTP/1.1 on the wire, as a relay needs it: message heads, body framing (Content-Length,
chunked, until close), buffered reads, copying a body raw, and a shaper that throttles or
stalls a byte stream. Bytes are relayed as they came (no re-encoding), so signatures hold."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import trio

from .faults import Then

MAX_HEAD = 64 * 1024
PIECE = 64 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

class Reset(Exception):
    """Reset the client connection."""


class ProtocolError(Exception):
    """Malformed or truncated HTTP."""


IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ProtocolError)


@dataclass
class Head:
    raw: bytes
    first: list[str]
    headers: list[tuple[str, str]]

    @classmethod
    def parse(cls, raw: bytes) -> Head:
        try:
            lines = raw.decode("latin-1").split("\r\n")
        except UnicodeDecodeError as exc:  # pragma: no cover -- latin-1 decodes anything
            raise ProtocolError(str(exc)) from exc
        first = lines[0].split(" ", 2)
        if len(first) < 2:
            raise ProtocolError(f"bad start line {lines[0]!r}")
        headers = []
        for line in lines[1:]:
            if not line:
                continue
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise ProtocolError(f"bad header line {line!r}")
            headers.append((name.lower(), value.strip()))
        return cls(raw, first, headers)

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for k, v in self.headers if k == name for t in v.split(",")}

    @property
    def chunked(self) -> bool:
        return "chunked" in self.tokens("transfer-encoding")

    @property
    def content_length(self) -> int | None:
        value = self.get("content-length")
        if value is None:
            return None
        try:
            length = int(value)
        except ValueError as exc:
            raise ProtocolError(f"bad Content-Length {value!r}") from exc
        if length < 0:
            raise ProtocolError(f"bad Content-Length {value!r}")
        return length


Framing = int | Literal["chunked", "close"]


def request_framing(head: Head) -> Framing:
    if head.chunked:
        return "chunked"
    return head.content_length or 0


def response_framing(method: str, status: int, head: Head) -> Framing:
    if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return 0
    if head.chunked:
        return "chunked"
    length = head.content_length
    return "close" if length is None else length


class Reader:
    """Buffered reads from a trio stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(PIECE)
        if not data:
            return False
        self.buf += data
        return True

    async def read_head(self) -> bytes | None:
        """The next message head through its blank line; None on EOF before any byte."""
        while True:
            while self.buf.startswith(b"\r\n"):  # stray CRLFs between messages (RFC 9112)
                del self.buf[:2]
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buf[: end + 4])
                del self.buf[: end + 4]
                return head
            if len(self.buf) > MAX_HEAD:
                raise ProtocolError("message head too large")
            if not await self._fill():
                if self.buf:
                    raise ProtocolError("connection closed inside a message head")
                return None

    async def read_line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > MAX_HEAD:
                raise ProtocolError("line too long")
            if not await self._fill():
                raise ProtocolError("connection closed inside a chunked body")
        line = bytes(self.buf[: end + 2])
        del self.buf[: end + 2]
        return line

    async def read_some(self, max_bytes: int, *, eof_ok: bool = False) -> bytes:
        if not self.buf and not await self._fill():
            if eof_ok:
                return b""
            raise ProtocolError("connection closed inside a body")
        data = bytes(self.buf[:max_bytes])
        del self.buf[:max_bytes]
        return data


Write = Callable[[bytes], Awaitable[None]]


async def discard(_data: bytes) -> None:
    return None


async def copy_exact(reader: Reader, size: int, write: Write) -> None:
    while size:
        data = await reader.read_some(min(size, PIECE))
        size -= len(data)
        await write(data)


async def copy_body(reader: Reader, framing: Framing, write: Write) -> None:
    """Relay one body, raw (chunk sizes and trailers included), as framed."""
    if framing == "close":
        while data := await reader.read_some(PIECE, eof_ok=True):
            await write(data)
    elif framing == "chunked":
        while True:
            line = await reader.read_line()
            await write(line)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise ProtocolError(f"bad chunk size line {line!r}") from exc
            if size == 0:
                while (line := await reader.read_line()) != b"\r\n":
                    await write(line)
                await write(line)
                return
            await copy_exact(reader, size + 2, write)
    else:
        await copy_exact(reader, framing, write)


class Shaper:
    """Writes a byte stream through ``send``: at most ``rate`` B/s, with at most one stall."""

    def __init__(self, send: Write, *, rate: int | None = None, stall_at: int | None = None,
                 stall_for: float = 0.0, then: Then = "continue") -> None:
        self.send = send
        self.rate = rate
        self.stall_at = stall_at
        self.stall_for = stall_for
        self.then = then
        self.sent = 0
        self.began: float | None = None

    async def _stall(self) -> None:
        self.stall_at = None
        await trio.sleep(self.stall_for)
        if self.then == "reset":
            raise Reset

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.stall_at is not None and self.sent >= self.stall_at:
                await self._stall()
                continue
            n = len(view)
            if self.stall_at is not None:
                n = min(n, self.stall_at - self.sent)
            if self.rate:
                n = min(n, max(1, self.rate // 20))
                if self.began is None:
                    self.began = trio.current_time()
            await self.send(bytes(view[:n]))
            self.sent += n
            view = view[n:]
            if self.rate:
                assert self.began is not None
                await trio.sleep_until(self.began + self.sent / self.rate)

    async def finish(self) -> None:
        """A stall not reached (its offset beyond the stream's end) happens now."""
        if self.stall_at is not None:
            await self._stall()


def set_linger0(sock: trio.socket.SocketType) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def reusable(stream: trio.SocketStream, reader: Reader) -> bool:
    """Whether an idle upstream connection is still open and has nothing unexpected to read."""
    if reader.buf:
        return False
    try:
        with socket.socket(fileno=os.dup(stream.socket.fileno())) as probe:
            probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False  # EOF, or bytes nobody asked for

