"""The retry policy: which failures are worth another attempt, and how long to keep trying.

One policy serves every request chute sends. It retries with exponential backoff and full
jitter (``sleep = uniform(0, min(max_delay, base_delay * 2**(attempt - 1)))``) until either the
per-operation attempt cap or the total time budget is spent, whichever comes first. The
budget is what bounds how long a writer can be kept waiting by a store that has gone away:
with the defaults a writer hears about a dead store within about three minutes.

Retryable: HTTP 5xx, 429 and ``SlowDown``, ``RequestTimeout``, connection failures and resets,
stalls (no progress for ``stall_timeout``), and credential errors (``ExpiredToken``,
``InvalidAccessKeyId`` ...), which are retried a few times only, seconds apart, after the
credentials have been re-read. Everything else (other 4xx) is final at once.

A retry is only possible because the request body is still addressable: a part's bytes stay in
their ring slot until the store acknowledges them (see ring.py).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import trio

from .errors import StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")

CREDENTIAL_ERRORS = frozenset(
    {"ExpiredToken", "TokenRefreshRequired", "InvalidAccessKeyId", "InvalidToken",
     "SignatureDoesNotMatch", "RequestExpired"}
)
"""Codes after which re-reading the credentials may help (they rotated under us)."""

_RETRYABLE_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "InternalError",
     "ServiceUnavailable", "Throttling", "ThrottlingException", "OperationAborted"}
)


_NEVER_DELIVERED = ("(ConnectError", "(ConnectTimeout", "(WriteError", "(WriteTimeout")
"""Transport failures before the whole request was out: the store cannot have acted."""


def answer_may_be_lost(reason: str) -> bool:
    """Whether a retry ``reason`` (from :meth:`RetryPolicy.classify`) means the request may
    have reached the store whole and been acted on, only its answer lost: a connection that
    broke or stalled while waiting for the answer, unlike an error answer, a connection never
    made, or a body never sent in full."""
    return (reason.startswith(("connection error", "timeout", "stalled"))
            and not any(marker in reason for marker in _NEVER_DELIVERED))


DEFAULT_BUDGET = 120.0
"""The default ``--retry-budget``. With the default --stall-timeout of 30 s, the last attempt
against a store that went away starts at 120 s and ends by 150 s, the abort takes at most
10 s more (upload.py), so a writer hears of it within three minutes, however the store went
(measured by scripts/store_gone.py)."""


class Stalled(Exception):
    """A transfer made no progress for the stall timeout; it is cancelled and retried."""


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

    def classify(self, exc: BaseException) -> str | None:
        """A short reason if ``exc`` is worth retrying, else ``None``."""
        if isinstance(exc, Stalled):
            return f"stalled: {exc}"
        if isinstance(exc, httpx.TimeoutException):
            return f"timeout ({type(exc).__name__})"
        if isinstance(exc, httpx.TransportError):
            return f"connection error ({type(exc).__name__}: {exc})"
        if isinstance(exc, StoreError):
            if exc.code in CREDENTIAL_ERRORS:
                return f"credentials: {exc.code}"
            if exc.status >= 500 or exc.status == 429 or exc.code in _RETRYABLE_CODES:
                return f"HTTP {exc.status} {exc.code}"
        return None

    def backoff(self, attempt: int) -> float:
        """Full-jitter delay before attempt number ``attempt + 1`` (attempt counts from 1)."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))

    async def run(
        self,
        operation: str,
        attempt_once: Callable[[], Awaitable[T]],
        *,
        on_retry: Callable[[str], object] | None = None,
        on_credential_error: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """Call ``attempt_once`` until it succeeds, fails for good, or the budget is spent.

        ``on_retry(reason)`` is told about every retry (for counters); credential errors call
        ``on_credential_error()`` (which re-reads the credentials) before the next attempt.
        The last exception is re-raised unchanged when giving up.
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
                credential = isinstance(exc, StoreError) and exc.code in CREDENTIAL_ERRORS
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
                            "%s failed after %d attempts: %s", operation, attempt, reason)
                    raise
                # The last attempt is made when the budget ends, not skipped because its
                # jittered delay would have ended later: an outage shorter than the budget
                # is always ridden out.
                delay = min(delay, deadline - trio.current_time())
                log.warning(
                    "retrying %s in %.1fs (attempt %d failed: %s)", operation, delay, attempt,
                    reason,
                )
                if on_retry is not None:
                    on_retry(reason)
                if credential and on_credential_error is not None:
                    await on_credential_error()
                    if trio.current_time() >= deadline:
                        log.error("%s failed: out of time after refreshing credentials: %s",
                                  operation, reason)
                        raise
                    delay = min(delay, deadline - trio.current_time())
                await trio.sleep(delay)
