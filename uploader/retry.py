"""The retry policy: which failures are worth another attempt, and how long to keep trying.

One policy serves every request chute sends. It retries with exponential backoff and full
jitter (``sleep = uniform(0, min(max_delay, base_delay * 2**(attempt - 1)))``) until either the
per-operation attempt cap or the total time budget is spent, whichever comes first. The
budget is what bounds how long a writer can be kept waiting by a store that has gone away:
with the defaults a writer hears about a dead store within about three minutes.

Retryable: HTTP 5xx, 429 and ``SlowDown``, ``RequestTimeout``, connection failures and resets,
stalls (no progress for ``stall_timeout``), and credential errors (``ExpiredToken``,
``InvalidAccessKeyId`` ...), which are retried a few times only, after the credentials have
been re-read. Everything else (other 4xx) is final at once.

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


class Stalled(Exception):
    """A transfer made no progress for the stall timeout; it is cancelled and retried."""


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff and limits; one instance per mount, shared by every request."""

    base_delay: float = 0.25
    max_delay: float = 20.0
    max_attempts: int = 15
    budget: float = 150.0
    """Seconds from the first attempt after which no new attempt starts."""
    max_credential_attempts: int = 4

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
                if (
                    attempt >= self.max_attempts
                    or credential_attempts >= self.max_credential_attempts
                    or trio.current_time() + delay >= deadline
                ):
                    log.error("%s failed after %d attempts: %s", operation, attempt, reason)
                    raise
                log.warning(
                    "retrying %s in %.1fs (attempt %d failed: %s)", operation, delay, attempt,
                    reason,
                )
                if on_retry is not None:
                    on_retry(reason)
                if credential and on_credential_error is not None:
                    await on_credential_error()
                    if trio.current_time() + delay >= deadline:
                        log.error("%s failed: out of time after refreshing credentials: %s",
                                  operation, reason)
                        raise
                await trio.sleep(delay)
