"""The retry policy: which failures are worth another attempt, and how long to keep trying.

One policy serves every request chute sends. It retries with exponential backoff and full
jitter (``sleep = uniform(0, min(max_delay, base_delay * 2**(attempt - 1)))``) until either the
per-operation attempt cap or the total time budget is spent, whichever comes first. The
budget is what bounds how long a writer can be kept waiting by a store that has gone away:
with the defaults a writer hears about a dead store within about three minutes.

Retryable: HTTP 5xx, 429 and ``SlowDown``, ``RequestTimeout``, connection failures and resets,
stalls (no progress for ``stall_timeout``), and credential errors (``ExpiredToken``,
``InvalidAccessKeyId`` ...), which are retried a few times only, seconds apart, after the
credentials have been re-read. Everything else (other 4xx, an unreadable answer) is final at
once. The policy sees chute's own errors only (errors.py): the S3 client has already turned
the HTTP library's exceptions into StoreUnreachable/Stalled, saying whether the request had
been sent in full, and :meth:`RetryPolicy.classify` names each retryable failure with a
:class:`RetryReason`, which tells callers whether the answer may have been lost.

A retry is only possible because the request body is still addressable: a part's bytes stay in
their ring slot until the store acknowledges them (see ring.py).
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import trio

from .errors import Stalled, StoreError, StoreUnreachable

log = logging.getLogger(__name__)

T = TypeVar("T")

CREDENTIAL_ERRORS = frozenset(
    {"ExpiredToken", "TokenRefreshRequired", "InvalidAccessKeyId", "InvalidToken",
     "SignatureDoesNotMatch", "RequestExpired"}
)
"""Codes after which re-reading the credentials may help (they rotated under us)."""

THROTTLE_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests"})
"""Codes that mean: too many requests, slow down (whatever the HTTP status)."""

_TRANSIENT_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "OperationAborted", "RequestTimeTooSkewed"}
)
"""Codes worth another attempt whatever their status (besides every 5xx)."""


class RetryReason(enum.Enum):
    """Why a request is being retried; the value is a short readable name (a metrics label).

    The transport reasons form a 2 x 2: did the connection fail or stall, and had the whole
    request been sent when it did. Only after a complete send may the store have acted on a
    request whose answer never arrived (:attr:`answer_may_be_lost`).
    """

    SERVER_ERROR = "server error"
    """An error answer worth repeating: 5xx, InternalError, OperationAborted ..."""
    THROTTLED = "throttled"
    """429, SlowDown and the like: the store asks us to slow down."""
    REQUEST_TIMEOUT = "request timeout"
    """RequestTimeout: the store gave up waiting for the rest of our request."""
    CREDENTIALS = "credentials"
    """The credentials were refused (expired, rotated): re-read them, then retry."""
    CONNECTION_FAILED = "connection failed"
    """No connection, or it broke before the request was sent in full."""
    SEND_STALLED = "stalled sending"
    """No progress for the stall timeout before the request was sent in full."""
    CONNECTION_LOST = "connection lost"
    """The connection broke after the request was sent, before its answer was read."""
    STALLED = "stalled"
    """No answer for the stall timeout after the request was sent in full."""

    @property
    def answer_may_be_lost(self) -> bool:
        """Whether the request may have reached the store whole and been acted on, only its
        answer lost: unlike an error answer, a connection never made, or a body never sent
        in full. A Create or Complete retried after such a failure needs checking."""
        return self in (RetryReason.CONNECTION_LOST, RetryReason.STALLED)

    @property
    def label(self) -> str:
        return self.value


def reason_for_answer(exc: StoreError) -> RetryReason | None:
    """The reason to retry an error answer, or None if it is final."""
    if exc.code in CREDENTIAL_ERRORS:
        return RetryReason.CREDENTIALS
    if exc.code in THROTTLE_CODES or exc.status == 429:
        return RetryReason.THROTTLED
    if exc.code == "RequestTimeout":
        return RetryReason.REQUEST_TIMEOUT
    if exc.status >= 500 or exc.code in _TRANSIENT_CODES:
        return RetryReason.SERVER_ERROR
    return None


def describe(exc: BaseException) -> str:
    """One readable line about a retryable failure, for the log (``HTTP 503 SlowDown``,
    ``credentials: ExpiredToken``, ``timeout (ReadTimeout) ...``)."""
    if isinstance(exc, StoreError):
        if exc.code in CREDENTIAL_ERRORS:
            return f"credentials: {exc.code}"
        return f"HTTP {exc.status} {exc.code}"
    if isinstance(exc, StoreUnreachable):
        return exc.description
    return f"{type(exc).__name__}: {exc}"


DEFAULT_BUDGET = 120.0
"""The default ``--retry-budget``. With the default --stall-timeout of 30 s, the last attempt
against a store that went away starts at 120 s and ends by 150 s, the abort takes at most
10 s more (multipart.py), so a writer hears of it within three minutes, however the store went
(measured by scripts/store_gone.py)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff and limits; one instance per mount, shared by every request."""

    base_delay: float = 0.25
    max_delay: float = 20.0
    max_attempts: int = 100
    """A safety net only; the budget is what ends the retries of a store that went away.

    With the backoff capped at ``max_delay`` and full jitter an attempt comes every 10 s on
    average, so the default budget holds about 22. A cap of 15 ended the retries after 86 s
    on average (27 s at worst) of an outage that a budget of 150 s promised to ride out.
    """
    budget: float = DEFAULT_BUDGET
    """Seconds from the first attempt after which no new attempt starts; the last one starts
    when the budget ends at the latest (a longer backoff is cut short to make it)."""
    max_credential_attempts: int = 4
    credential_delay: float = 1.0
    """Least wait after the k-th credential error: ``credential_delay * 2**(k - 1)``.

    A rotated or refreshed key is not accepted everywhere at once (IAM is eventually
    consistent; a credential_process or the instance metadata may hand out the new key a few
    seconds late), so the few credential attempts must span seconds, not the fraction of a
    second the jittered backoff gives the first retries: with the defaults a window of about
    7 s of rejected keys is ridden out, and a revoked key still fails within that time.
    """

    def classify(self, exc: BaseException) -> RetryReason | None:
        """Why ``exc`` is worth retrying, or ``None`` if it is final.

        Only chute's errors are retried: anything else (a bug, cancellation) is final.
        """
        if isinstance(exc, StoreUnreachable):
            stalled = isinstance(exc, Stalled)
            if exc.request_sent:
                return RetryReason.STALLED if stalled else RetryReason.CONNECTION_LOST
            return RetryReason.SEND_STALLED if stalled else RetryReason.CONNECTION_FAILED
        if isinstance(exc, StoreError):
            return reason_for_answer(exc)
        return None

    def backoff(self, attempt: int) -> float:
        """Full-jitter delay before attempt number ``attempt + 1`` (attempt counts from 1)."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))

    async def run(
        self,
        operation: str,
        attempt_once: Callable[[], Awaitable[T]],
        *,
        on_retry: Callable[[RetryReason, Exception], object] | None = None,
        on_credential_error: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """Call ``attempt_once`` until it succeeds, fails for good, or the budget is spent.

        ``on_retry(reason, error)`` is told about every retry (for counters, and to note an
        answer that may be lost; ``error`` is the chute error that failed the attempt, for its
        status and code); credential errors call ``on_credential_error()`` (which re-reads
        the credentials) before the next attempt. The last exception is re-raised unchanged
        when giving up.
        """
        deadline = trio.current_time() + self.budget
        attempt = 0
        credential_attempts = 0
        while True:
            attempt += 1
            try:
                return await attempt_once()
            except Exception as exc:
                reason = self.classify(exc)
                if reason is None:
                    raise
                credential = reason is RetryReason.CREDENTIALS
                credential_attempts += credential
                delay = self.backoff(attempt)
                if credential:
                    delay = max(delay, self.credential_delay * 2 ** (credential_attempts - 1))
                if (
                    attempt >= self.max_attempts
                    or credential_attempts >= self.max_credential_attempts
                    or trio.current_time() >= deadline
                ):
                    # A single-attempt policy is a probe (the janitor's, every 2 s while the
                    # store is away): its caller decides what a failure means.
                    log.log(logging.ERROR if self.max_attempts > 1 else logging.DEBUG,
                            "%s failed after %d attempts: %s", operation, attempt, describe(exc))
                    raise
                # The last attempt is made when the budget ends, not skipped because its
                # jittered delay would have ended later: an outage shorter than the budget
                # is always ridden out.
                delay = min(delay, deadline - trio.current_time())
                log.warning(
                    "retrying %s in %.1fs (attempt %d failed: %s)", operation, delay, attempt,
                    describe(exc),
                )
                if on_retry is not None:
                    on_retry(reason, exc)
                if credential and on_credential_error is not None:
                    await on_credential_error()
                    if trio.current_time() >= deadline:
                        log.error("%s failed: out of time after refreshing credentials: %s",
                                  operation, describe(exc))
                        raise
                    delay = min(delay, deadline - trio.current_time())
                await trio.sleep(delay)
