"""Faults, declared as data: frozen dataclasses saying which requests to take (by ``Kind``,
count and time window) and what to do to them. The proxy interprets them; nothing here does
I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from .answers import DEFAULT_CODES, MESSAGES, Answer
from .kinds import Kind, KindSpec, parse_kinds


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
        object.__setattr__(self, "kind", parse_kinds(self.kind))
        if self.times is not None and self.times < 1:
            raise ValueError(f"{self.name}: times must be >= 1 (or None), not {self.times}")
        if self.after < 0:
            raise ValueError(f"{self.name}: after must be >= 0, not {self.after}")
        check_seconds(self.name, "start", self.start)
        if self.duration is not None:
            check_seconds(self.name, "duration", self.duration, positive=True)
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


def check_seconds(name: str, what: str, value: float, *, positive: bool = False) -> None:
    if not (math.isfinite(value) and (value > 0 if positive else value >= 0)
            and value <= MAX_SECONDS):
        raise ValueError(
            f"{name}: {what} must be a number of seconds in [0, {MAX_SECONDS:g}], not {value!r}"
        )


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

    def answer(self) -> Answer:
        """The error the proxy sends in place of the upstream's answer."""
        code = self.code or "InternalError"
        return Answer(self.status, code, self.message or MESSAGES.get(code, code),
                      self.retry_after, self.close)


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
        check_seconds("StallRequest", "seconds", self.seconds)
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
        check_seconds("StallResponse", "seconds", self.seconds)
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
        check_seconds("ExpiredTokenFor", "seconds", self.seconds, positive=True)
        super().__post_init__()

    @property
    def name(self) -> str:
        return "expired_token"

    def answer(self) -> Answer:
        """403 ExpiredToken, as a store answers a request signed with an expired session."""
        return Answer(403, "ExpiredToken", MESSAGES["ExpiredToken"])


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
        check_seconds("Outage", "seconds", self.seconds, positive=True)
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

