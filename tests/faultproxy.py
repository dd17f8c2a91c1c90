"""A fault-injecting HTTP/1.1 reverse proxy for S3 reliability tests.

``FaultProxy`` listens on 127.0.0.1, forwards every request to one upstream S3 endpoint on
127.0.0.1 (the embedded SeaweedFS) and, when a *scenario* says so, misbehaves on chosen
requests: an S3 error instead of forwarding, a connection reset before or after the upstream
acted, a stall in the middle of the request or the response, a throttled transfer, a window
of expired-token answers, or an outage during which connections are refused.

It runs ``trio.run`` in a background thread, so synchronous tests use it as::

    with FaultProxy(store.endpoint_url) as proxy:
        proxy.set_scenario([Status(503, "SlowDown", kind=Kind.UPLOAD_PART, times=2)])
        ... point the client under test at proxy.url ...
        assert proxy.stats[Kind.UPLOAD_PART].injected == 2

Forwarding is byte-exact: the request head (request line, every header including ``Host``, in
their original order and spelling) and the body are relayed unchanged, so SigV4-signed requests
keep their signature. A client signs the host it connects to (the proxy's
``127.0.0.1:PORT``) and SeaweedFS checks the signature against the ``Host`` header it
receives, which is that same value. Responses are relayed unchanged too. Bodies framed by
Content-Length or chunked transfer coding are both relayed (responses without either are
relayed until the upstream closes); keep-alive connections are kept on both sides, one
upstream connection per client connection. ``Expect: 100-continue`` works: the upstream's
``100 Continue`` is relayed, and the proxy sends its own before draining the body of a request
it answers itself.

Faults are frozen dataclasses (data, not code). Every fault selects requests by ``kind``
(a ``Kind``, its string value, a collection of them, or ``None`` for every request) and is
bounded: ``times`` matching requests (after skipping the first ``after`` ones), only within
``start``/``duration`` seconds after the scenario was set; a fault with neither ``times`` nor
``duration`` is refused, and ``ExpiredTokenFor``/``Outage`` last ``seconds``. Faults are tried
in order and the first one that takes a request applies; each fault counts (for ``after``)
only the matching requests that no earlier fault took.

The proxy never connects anywhere but 127.0.0.1 and listens only there.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import math
import os
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from types import TracebackType
from typing import Literal, NamedTuple, Self
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

import trio

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_MAX_HEAD = 64 * 1024
_PIECE = 64 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_PUMP_GRACE = 1.0
"""After relaying a response, how long the request body may still take to finish arriving."""


# -- request kinds ---------------------------------------------------------------------------


class Kind(enum.StrEnum):
    """The S3 operation a request is, from its method, query and headers (path-style URLs)."""

    CREATE_MULTIPART_UPLOAD = "CreateMultipartUpload"
    UPLOAD_PART = "UploadPart"
    UPLOAD_PART_COPY = "UploadPartCopy"
    COMPLETE_MULTIPART_UPLOAD = "CompleteMultipartUpload"
    ABORT_MULTIPART_UPLOAD = "AbortMultipartUpload"
    LIST_MULTIPART_UPLOADS = "ListMultipartUploads"
    LIST_PARTS = "ListParts"
    PUT_OBJECT = "PutObject"
    COPY_OBJECT = "CopyObject"
    GET_OBJECT = "GetObject"
    HEAD_OBJECT = "HeadObject"
    HEAD_BUCKET = "HeadBucket"
    DELETE_OBJECT = "DeleteObject"
    DELETE_OBJECTS = "DeleteObjects"
    LIST_OBJECTS_V2 = "ListObjectsV2"
    PUT_OBJECT_TAGGING = "PutObjectTagging"
    GET_OBJECT_TAGGING = "GetObjectTagging"
    DELETE_OBJECT_TAGGING = "DeleteObjectTagging"
    OTHER = "Other"


def classify(method: str, target: str, headers: Iterable[tuple[str, str]] = ()) -> Kind:
    """The kind of an S3 REST request; ``headers`` are (name, value) pairs, any case."""
    method = method.upper()
    path, _, query = target.partition("?")
    params = {k for k, _ in parse_qsl(query, keep_blank_values=True)}
    has_key = "/" in path.lstrip("/")  # /bucket/key, not /bucket or /bucket/
    has_key = has_key and bool(path.lstrip("/").split("/", 1)[1])
    copy = any(name.lower() == "x-amz-copy-source" for name, _ in headers)
    if method == "POST":
        if "uploads" in params:
            return Kind.CREATE_MULTIPART_UPLOAD
        if "uploadId" in params:
            return Kind.COMPLETE_MULTIPART_UPLOAD
        if "delete" in params:
            return Kind.DELETE_OBJECTS
    elif method == "PUT":
        if "tagging" in params:
            return Kind.PUT_OBJECT_TAGGING
        part = "partNumber" in params and "uploadId" in params
        if copy:
            return Kind.UPLOAD_PART_COPY if part else Kind.COPY_OBJECT
        if part:
            return Kind.UPLOAD_PART
        if has_key and not params & {"acl", "retention", "legal-hold"}:
            return Kind.PUT_OBJECT
    elif method == "DELETE":
        if "uploadId" in params:
            return Kind.ABORT_MULTIPART_UPLOAD
        if "tagging" in params:
            return Kind.DELETE_OBJECT_TAGGING
        if has_key:
            return Kind.DELETE_OBJECT
    elif method == "HEAD":
        return Kind.HEAD_OBJECT if has_key else Kind.HEAD_BUCKET
    elif method == "GET":
        if "tagging" in params:
            return Kind.GET_OBJECT_TAGGING
        if "uploadId" in params:
            return Kind.LIST_PARTS
        if "uploads" in params:
            return Kind.LIST_MULTIPART_UPLOADS
        if not has_key and ("list-type", "2") in parse_qsl(query, keep_blank_values=True):
            return Kind.LIST_OBJECTS_V2
        if has_key and not params & {"acl", "attributes", "retention", "legal-hold"}:
            return Kind.GET_OBJECT
    return Kind.OTHER


KindSpec = Kind | str | Collection[Kind | str] | None


def _kinds(spec: KindSpec) -> frozenset[Kind] | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        return frozenset({Kind(spec)})
    kinds = frozenset(Kind(k) for k in spec)
    if not kinds:
        raise ValueError("an empty kind collection matches nothing; use None for every request")
    return kinds


# -- faults (declared as data) ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Fault:
    """What every fault has: which requests it takes, how many, and when.

    ``kind``: a ``Kind`` (or its value, e.g. ``"UploadPart"``), a collection of them, or
    ``None`` for every request. ``after``: let the first N matching requests through.
    ``times``: then take this many (``None``: all, bounded by ``duration``). ``start`` and
    ``duration``: only requests arriving in ``[start, start + duration)`` seconds after the
    scenario was set match (``duration=None``: no end, bounded by ``times``).
    """

    kind: KindSpec = None
    times: int | None = 1
    after: int = 0
    start: float = 0.0
    duration: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _kinds(self.kind))
        if self.times is not None and self.times < 1:
            raise ValueError(f"{self.name}: times must be >= 1 (or None), not {self.times}")
        if self.after < 0:
            raise ValueError(f"{self.name}: after must be >= 0, not {self.after}")
        _check_seconds(self.name, "start", self.start)
        if self.duration is not None:
            _check_seconds(self.name, "duration", self.duration, positive=True)
        if self.times is None and self.duration is None and not self._time_bounded:
            raise ValueError(f"{self.name}: unbounded; give times or duration")

    _time_bounded = False

    @property
    def name(self) -> str:
        """A short label, as in ``FaultProxy.log``."""
        return type(self).__name__

    def matches_kind(self, kind: Kind) -> bool:
        return self.kind is None or kind in self.kind  # type: ignore[operator]


MAX_SECONDS = 600.0
"""The longest stall, outage, window or delay a fault may declare."""


def _check_seconds(name: str, what: str, value: float, *, positive: bool = False) -> None:
    if not (math.isfinite(value) and (value > 0 if positive else value >= 0)
            and value <= MAX_SECONDS):
        raise ValueError(
            f"{name}: {what} must be a number of seconds in [0, {MAX_SECONDS:g}], not {value!r}"
        )


DEFAULT_CODES = {
    400: "RequestTimeout", 403: "AccessDenied", 404: "NoSuchUpload", 409: "OperationAborted",
    429: "TooManyRequests", 500: "InternalError", 501: "NotImplemented", 502: "BadGateway",
    503: "ServiceUnavailable", 504: "GatewayTimeout",
}
"""The S3 error code ``Status`` answers when none is given."""

MESSAGES = {
    "RequestTimeout": "Your socket connection to the server was not read from or written to "
                      "within the timeout period.",
    "AccessDenied": "Access Denied",
    "ExpiredToken": "The provided token has expired.",
    "NoSuchUpload": "The specified upload does not exist. The upload ID may be invalid, or the "
                    "upload may have been aborted or completed.",
    "NoSuchKey": "The specified key does not exist.",
    "TooManyRequests": "Too many requests, please slow down.",
    "SlowDown": "Please reduce your request rate.",
    "InternalError": "We encountered an internal error. Please try again.",
    "ServiceUnavailable": "Service is unable to handle request.",
}


@dataclass(frozen=True, kw_only=True)
class Status(Fault):
    """Answer ``status`` with an S3 XML error (``code``) instead of forwarding.

    The request body is read (after a ``100 Continue`` if the client expects one) and
    discarded, so the connection stays usable unless ``close`` is set. ``retry_after`` adds
    a Retry-After header (seconds).
    """

    status: int = field(kw_only=False)
    code: str | None = field(default=None, kw_only=False)
    message: str | None = None
    retry_after: float | None = None
    close: bool = False

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 599:
            raise ValueError(f"Status: {self.status} is not an HTTP error status")
        if self.code is None:
            object.__setattr__(self, "code", DEFAULT_CODES.get(self.status, "InternalError"))
        super().__post_init__()

    @property
    def name(self) -> str:
        return f"status:{self.status}:{self.code}"


@dataclass(frozen=True, kw_only=True)
class ResetBefore(Fault):
    """Reset the client connection (RST) without forwarding: the upstream never sees it.

    ``after_body_bytes``: read (and drop) this many bytes of the request body first, so the
    reset comes in the middle of an upload rather than right after the request head.
    """

    after_body_bytes: int = 0

    @property
    def name(self) -> str:
        return "reset_before"


@dataclass(frozen=True, kw_only=True)
class ResetAfter(Fault):
    """Forward the request, read the upstream's whole response, then reset the client.

    The client sees a connection error, but the upstream has acted: a lost response.
    """

    @property
    def name(self) -> str:
        return "reset_after"


Then = Literal["continue", "reset"]


@dataclass(frozen=True, kw_only=True)
class StallRequest(Fault):
    """Stop reading the client's request for ``seconds`` in the middle of its body.

    ``at_bytes``: how many body bytes to forward first (default: half the Content-Length;
    for an empty or chunked body, the stall comes before the request head is forwarded). At
    most Content-Length - 1, so the upstream never has the whole request before the stall
    ends. Then ``"continue"`` relaying or
    ``"reset"`` the client (the upstream connection is closed, the request unfinished).
    """

    seconds: float = field(kw_only=False)
    at_bytes: int | None = None
    then: Then = "continue"

    def __post_init__(self) -> None:
        _check_seconds("StallRequest", "seconds", self.seconds)
        if self.then not in ("continue", "reset"):
            raise ValueError(f"StallRequest: then must be 'continue' or 'reset', not {self.then!r}")
        super().__post_init__()

    @property
    def name(self) -> str:
        return "stall_request"


@dataclass(frozen=True, kw_only=True)
class StallResponse(Fault):
    """Forward the request; send part of the response, stall ``seconds``, then go on or reset.

    ``at_bytes`` counts bytes of the response as sent (status line and headers included);
    default: half of it when its length is known (always before its last byte), else right
    after the head. A stall in the head is what a client with a read timeout fears most.
    """

    seconds: float = field(kw_only=False)
    at_bytes: int | None = None
    then: Then = "continue"

    def __post_init__(self) -> None:
        _check_seconds("StallResponse", "seconds", self.seconds)
        if self.then not in ("continue", "reset"):
            raise ValueError(
                f"StallResponse: then must be 'continue' or 'reset', not {self.then!r}"
            )
        super().__post_init__()

    @property
    def name(self) -> str:
        return "stall_response"


@dataclass(frozen=True, kw_only=True)
class Throttle(Fault):
    """Relay the request (``direction="request"``), the response, or ``"both"`` at a rate."""

    bytes_per_second: int = field(kw_only=False)
    direction: Literal["request", "response", "both"] = "request"

    def __post_init__(self) -> None:
        if self.bytes_per_second < 1:
            raise ValueError("Throttle: bytes_per_second must be >= 1")
        if self.direction not in ("request", "response", "both"):
            raise ValueError(f"Throttle: bad direction {self.direction!r}")
        super().__post_init__()

    @property
    def name(self) -> str:
        return "throttle"


@dataclass(frozen=True, kw_only=True)
class ExpiredTokenFor(Fault):
    """Answer 403 ExpiredToken to every matching request for ``seconds``, then forward.

    The window opens at the first matching request (past ``after``, within
    ``start``/``duration``), which is answered 403 too. ``times`` defaults to None (every
    request in the window); a number caps the 403s.
    """

    seconds: float = field(kw_only=False)
    times: int | None = None
    _time_bounded = True

    def __post_init__(self) -> None:
        _check_seconds("ExpiredTokenFor", "seconds", self.seconds, positive=True)
        super().__post_init__()

    @property
    def name(self) -> str:
        return "expired_token"


@dataclass(frozen=True, kw_only=True)
class Outage(Fault):
    """For ``seconds``, the server is gone: open connections are reset, new ones refused.

    ``mode="refuse"``: nothing listens (connect() fails with ECONNREFUSED; the port stays
    reserved); ``"reset"``: connections are accepted and reset at once.
    With ``kind=None`` and ``after=0`` the outage begins ``start`` seconds after the scenario
    is set; otherwise at the first matching request (past ``after``), which is reset.
    One outage per fault.
    """

    seconds: float = field(kw_only=False)
    mode: Literal["refuse", "reset"] = "refuse"
    times: int | None = 1
    _time_bounded = True

    def __post_init__(self) -> None:
        _check_seconds("Outage", "seconds", self.seconds, positive=True)
        if self.mode not in ("refuse", "reset"):
            raise ValueError(f"Outage: mode must be 'refuse' or 'reset', not {self.mode!r}")
        if self.times != 1:
            raise ValueError("Outage: one outage per fault (times=1)")
        super().__post_init__()

    @property
    def immediate(self) -> bool:
        return self.kind is None and self.after == 0

    @property
    def name(self) -> str:
        return "outage"


@dataclass(frozen=True)
class Scenario:
    """An ordered list of faults; the first fault that takes a request applies to it."""

    faults: tuple[Fault, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        faults = tuple(self.faults)
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"not a Fault: {fault!r}")
        object.__setattr__(self, "faults", faults)


def status_fault(status: int, code: str | None = None, **kwargs: object) -> Status:
    return Status(status, code, **kwargs)  # type: ignore[arg-type]


def internal_error(**kwargs: object) -> Status:
    return status_fault(500, "InternalError", **kwargs)


def service_unavailable(**kwargs: object) -> Status:
    return status_fault(503, "ServiceUnavailable", **kwargs)


def slow_down(status: int = 503, **kwargs: object) -> Status:
    return status_fault(status, "SlowDown", **kwargs)


def too_many_requests(**kwargs: object) -> Status:
    return status_fault(429, "TooManyRequests", **kwargs)


def request_timeout(**kwargs: object) -> Status:
    return status_fault(400, "RequestTimeout", **kwargs)


def expired_token(**kwargs: object) -> Status:
    return status_fault(403, "ExpiredToken", **kwargs)


def access_denied(**kwargs: object) -> Status:
    return status_fault(403, "AccessDenied", **kwargs)


def no_such_upload(**kwargs: object) -> Status:
    return status_fault(404, "NoSuchUpload", **kwargs)


# -- bookkeeping -----------------------------------------------------------------------------


@dataclass
class Counts:
    """Per kind: requests seen, forwarded upstream (faulted or not), and faults injected."""

    seen: int = 0
    forwarded: int = 0
    injected: int = 0


class Injection(NamedTuple):
    """One injected fault: request kind, fault name, method, and path (with its query)."""

    kind: Kind
    fault: str
    method: str
    path: str


class _Armed:
    """A fault's progress within the current scenario."""

    def __init__(self, fault: Fault, set_at: float) -> None:
        self.fault = fault
        self.seen = 0
        self.hits = 0
        self.opened_at: float | None = None  # ExpiredTokenFor / Outage windows
        if isinstance(fault, Outage) and fault.immediate:
            self.opened_at = set_at + fault.start
            self.hits = 1


class _State:
    def __init__(self, scenario: Scenario, set_at: float) -> None:
        self.scenario = scenario
        self.set_at = set_at
        self.armed = [_Armed(f, set_at) for f in scenario.faults]

    def match(self, kind: Kind, now: float) -> Fault | None:
        elapsed = now - self.set_at
        for armed in self.armed:
            fault = armed.fault
            if not fault.matches_kind(kind):
                continue
            if isinstance(fault, ExpiredTokenFor) and armed.opened_at is not None:
                if now < armed.opened_at + fault.seconds and (
                    fault.times is None or armed.hits < fault.times
                ):
                    armed.hits += 1
                    return fault
                continue
            if isinstance(fault, Outage) and armed.opened_at is not None:
                continue
            if elapsed < fault.start:
                continue
            if fault.duration is not None and elapsed >= fault.start + fault.duration:
                continue
            if fault.times is not None and armed.hits >= fault.times:
                continue
            armed.seen += 1
            if armed.seen <= fault.after:
                continue
            armed.hits += 1
            if isinstance(fault, ExpiredTokenFor | Outage):
                armed.opened_at = now
            return fault
        return None

    def outage(self, now: float) -> tuple[Outage, float] | None:
        """The outage in effect now, and when it ends."""
        for armed in self.armed:
            fault = armed.fault
            if isinstance(fault, Outage) and armed.opened_at is not None:
                end = armed.opened_at + fault.seconds
                if armed.opened_at <= now < end:
                    return fault, end
        return None

    def next_outage(self, now: float) -> float | None:
        starts = [a.opened_at for a in self.armed
                  if isinstance(a.fault, Outage) and a.opened_at is not None and a.opened_at > now]
        return min(starts, default=None)


# -- HTTP plumbing ---------------------------------------------------------------------------


class _Reset(Exception):
    """Reset the client connection."""


class ProtocolError(Exception):
    """Malformed or truncated HTTP."""


_IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ProtocolError)


@dataclass
class _Head:
    raw: bytes
    first: list[str]
    headers: list[tuple[str, str]]

    @classmethod
    def parse(cls, raw: bytes) -> _Head:
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


def _request_framing(head: _Head) -> Framing:
    if head.chunked:
        return "chunked"
    return head.content_length or 0


def _response_framing(method: str, status: int, head: _Head) -> Framing:
    if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return 0
    if head.chunked:
        return "chunked"
    length = head.content_length
    return "close" if length is None else length


class _Reader:
    """Buffered reads from a trio stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(_PIECE)
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
            if len(self.buf) > _MAX_HEAD:
                raise ProtocolError("message head too large")
            if not await self._fill():
                if self.buf:
                    raise ProtocolError("connection closed inside a message head")
                return None

    async def read_line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > _MAX_HEAD:
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


async def _discard(_data: bytes) -> None:
    return None


async def _copy_exact(reader: _Reader, size: int, write: Write) -> None:
    while size:
        data = await reader.read_some(min(size, _PIECE))
        size -= len(data)
        await write(data)


async def _copy_body(reader: _Reader, framing: Framing, write: Write) -> None:
    """Relay one body, raw (chunk sizes and trailers included), as framed."""
    if framing == "close":
        while data := await reader.read_some(_PIECE, eof_ok=True):
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
            await _copy_exact(reader, size + 2, write)
    else:
        await _copy_exact(reader, framing, write)


class _Shaper:
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
            raise _Reset

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


def _set_linger0(sock: trio.socket.SocketType) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _reusable(stream: trio.SocketStream, reader: _Reader) -> bool:
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


def _error_response(fault: Status | ExpiredTokenFor, method: str, path: str,
                    request_id: str) -> bytes:
    if isinstance(fault, Status):
        status, code = fault.status, fault.code or "InternalError"
        message = fault.message or MESSAGES.get(code, code)
    else:
        status, code, message = 403, "ExpiredToken", MESSAGES["ExpiredToken"]
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(path)}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()
    body = b"" if method == "HEAD" else xml
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/xml",
        f"Content-Length: {len(body)}",
        f"Date: {formatdate(usegmt=True)}",
        f"x-amz-request-id: {request_id}",
        "Server: faultproxy",
    ]
    if isinstance(fault, Status) and fault.retry_after is not None:
        lines.append(f"Retry-After: {fault.retry_after:g}")
    if isinstance(fault, Status) and fault.close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Conn:
    """One client connection and the upstream connection serving it."""

    def __init__(self, client: trio.SocketStream) -> None:
        self.client = client
        self.reader = _Reader(client)
        self.upstream: trio.SocketStream | None = None
        self.up_reader: _Reader | None = None
        self.scope = trio.CancelScope()
        self.rst = False

    def drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.socket.close()
        self.upstream = self.up_reader = None

    def close(self) -> None:
        self.drop_upstream()
        if self.rst:
            _set_linger0(self.client.socket)
        self.client.socket.close()


# -- the proxy -------------------------------------------------------------------------------


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
        self._state: _State | None = None
        self._stats = {kind: Counts() for kind in Kind}
        self._log: list[Injection] = []
        self._connections = 0
        self._request_ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        # trio-side state (touched only in the proxy's thread)
        self._conns: set[_Conn] = set()
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
            self._state = None if scenario is None else _State(scenario, time.monotonic())
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
    def connections(self) -> int:
        """Client connections accepted (and served) so far."""
        with self._lock:
            return self._connections

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = {kind: Counts() for kind in Kind}
            self._log.clear()
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
                        _set_linger0(sock)
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
        conn = _Conn(client)
        self._conns.add(conn)
        try:
            with conn.scope:
                try:
                    await self._serve(conn)
                except _Reset:
                    conn.rst = True
                except _IO_ERRORS as exc:
                    log.debug("faultproxy: connection dropped: %r", exc)
                    conn.rst = True
                except Exception:  # a bug here must not take the whole proxy down
                    log.exception("faultproxy: error serving a connection")
                    conn.rst = True
        finally:
            self._conns.discard(conn)
            conn.close()

    def _decide(self, kind: Kind, method: str, path: str) -> Fault | None:
        with self._lock:
            self._stats[kind].seen += 1
            fault = None if self._state is None else self._state.match(kind, time.monotonic())
            if fault is not None:
                self._stats[kind].injected += 1
                self._log.append(Injection(kind, fault.name, method, path))
                log.info("faultproxy: %s on %s %s %s", fault.name, kind, method, path)
            return fault

    async def _serve(self, conn: _Conn) -> None:
        while True:
            raw = await conn.reader.read_head()
            if raw is None:
                return
            request = _Head.parse(raw)
            if len(request.first) != 3 or not request.first[2].startswith("HTTP/1."):
                raise ProtocolError(f"not an HTTP/1.x request: {request.first!r}")
            method, path = request.first[0].upper(), request.first[1]
            if self._current_outage()[0] is not None:
                # A connection accepted just before the outage, whose task had not yet
                # registered it when the outage reset every connection: it must not serve.
                raise _Reset
            kind = classify(method, path, request.headers)
            fault = self._decide(kind, method, path)
            if isinstance(fault, Outage):
                self._poke()  # the listener loop starts the outage and resets every connection
                raise _Reset
            if not await self._exchange(conn, request, method, path, kind, fault):
                return

    async def _exchange(self, conn: _Conn, request: _Head, method: str, path: str, kind: Kind,
                        fault: Fault | None) -> bool:
        """Serve one request; whether the client connection may serve another."""
        framing = _request_framing(request)
        expects_continue = "100-continue" in request.tokens("expect")
        keep = request.first[2] == "HTTP/1.1" and "close" not in request.tokens("connection")

        if isinstance(fault, ResetBefore):
            if fault.after_body_bytes and framing != 0:
                if expects_continue:
                    await conn.client.send_all(_CONTINUE)
                remaining = fault.after_body_bytes
                while remaining > 0:
                    remaining -= len(await conn.reader.read_some(min(remaining, _PIECE)))
            raise _Reset

        if isinstance(fault, Status | ExpiredTokenFor):
            if expects_continue and framing != 0:
                await conn.client.send_all(_CONTINUE)
            await _copy_body(conn.reader, framing, _discard)
            request_id = f"FAULTPROXY{next(self._request_ids):06d}"
            await conn.client.send_all(_error_response(fault, method, path, request_id))
            return keep and not (isinstance(fault, Status) and fault.close)

        return await self._forward(conn, request, method, kind, fault, framing, keep)

    async def _forward(self, conn: _Conn, request: _Head, method: str, kind: Kind,
                       fault: Fault | None, framing: Framing, keep: bool) -> bool:
        if conn.upstream is not None:
            assert conn.up_reader is not None
            if not _reusable(conn.upstream, conn.up_reader):
                conn.drop_upstream()
        if conn.upstream is None:
            conn.upstream = await trio.open_tcp_stream(LOOPBACK, self.upstream_port)
            conn.up_reader = _Reader(conn.upstream)
        upstream, up_reader = conn.upstream, conn.up_reader
        assert up_reader is not None
        with self._lock:
            self._stats[kind].forwarded += 1

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

        shaper = _Shaper(send_up, rate=rate, stall_at=stall_at, stall_for=stall_for,
                         then=then)  # type: ignore[arg-type]
        body_done = trio.Event()
        failure: BaseException | None = None

        async def pump() -> None:
            nonlocal failure
            try:
                await shaper.write(request.raw)
                await _copy_body(conn.reader, framing, shaper.write)
                await shaper.finish()
                body_done.set()
            except (_Reset, *_IO_ERRORS) as exc:
                failure = exc
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            try:
                keep = await self._relay_response(conn, up_reader, method, fault, body_done, keep)
            except (_Reset, *_IO_ERRORS) as exc:
                failure = failure or exc
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if upstream_broken:
            conn.drop_upstream()
        return keep

    async def _relay_response(self, conn: _Conn, up_reader: _Reader, method: str,
                              fault: Fault | None, body_done: trio.Event, keep: bool) -> bool:
        while True:
            raw = await up_reader.read_head()
            if raw is None:
                raise ProtocolError("upstream closed the connection without a response")
            response = _Head.parse(raw)
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
        framing = _response_framing(method, status, response)
        upstream_keeps = response.first[0] == "HTTP/1.1" and framing != "close" and \
            "close" not in response.tokens("connection")

        if isinstance(fault, ResetAfter):
            await _copy_body(up_reader, framing, _discard)
            with trio.move_on_after(_PUMP_GRACE):
                await body_done.wait()
            raise _Reset

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
        shaper = _Shaper(conn.client.send_all, rate=rate, stall_at=stall_at,
                         stall_for=stall_for, then=then)  # type: ignore[arg-type]
        await shaper.write(raw)
        await _copy_body(up_reader, framing, shaper.write)
        await shaper.finish()

        if not body_done.is_set():
            # Answered before the whole request body arrived (an early error, or a client
            # still waiting for 100 Continue): give it a moment, else give up the connection.
            with trio.move_on_after(_PUMP_GRACE):
                await body_done.wait()
        if not body_done.is_set():
            conn.drop_upstream()
            return False
        if not upstream_keeps:
            conn.drop_upstream()
        return keep and upstream_keeps
