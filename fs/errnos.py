"""Turning a failure inside a FUSE handler into the errno its caller sees, and the log line.

Errors become errnos through ``chute.uploader.errors.errno_for`` only (one map for the whole
mount). What fs/ itself refuses is a ``Refused`` carrying its errno (refused.py), so the
modules below the adapter decide errnos without importing pyfuse3. A store that cannot be
reached is one log line per failed operation (the S3 client lets out chute errors only:
StoreError, StoreUnreachable, Stalled); a traceback means a bug.

Why every handler must be wrapped: pyfuse3 catches only ``FUSEError`` around a handler (it
replies with its errno). Any other exception escapes its request loop, which ends
``pyfuse3.main()``: the mount process dies ("Software caused connection abort" for every
user of the mount) and takes the embedded store with it. So every handler runs inside
:func:`errors_as_errno` (any unexpected exception becomes EIO, its traceback logged once per
kind of failure), and ``forget``, which has no reply to carry an errno, inside
:func:`errors_logged`, which swallows it after logging.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pyfuse3
import trio

from chute.uploader.errors import ChuteError, errno_for

from .refused import NoAnswer, Refused, errname

__all__ = ["NoAnswer", "Refused", "describe", "errors_as_errno", "errors_logged"]

log = logging.getLogger("chute.fs.operations")

_MAX_KINDS = 1000
"""Distinct kinds of unexpected failure whose traceback was logged (bounds the memory)."""
_seen: dict[tuple[str, str, int], int] = {}
"""Kind of unexpected failure (exception type, file and line it came from) -> times seen."""


@asynccontextmanager
async def errors_as_errno(what: str | Callable[[], str]) -> AsyncIterator[None]:
    """Turn any failure into the errno the caller sees; log what is not already logged:
    a refusal with its message, chute's own errors and the store's failures in one line
    with the errno and the cause, anything else (a bug) with its traceback (once per kind,
    then one line). ``what`` names the operation, or is called to name it (with its path)
    only when there is something to log. No exception but FUSEError (and cancellation)
    leaves it."""
    try:
        yield
    except pyfuse3.FUSEError:
        raise
    except Refused as exc:
        if exc.message:
            log.warning("%s (%s)", exc.message, errname(exc.errno))
        raise pyfuse3.FUSEError(exc.errno) from None
    except (ChuteError, trio.TooSlowError) as exc:
        code = errno_for(exc)
        log.warning("%s: returning %s: %s", _name(what), errname(code), describe(exc))
        raise pyfuse3.FUSEError(code) from exc
    except Exception as exc:
        code = errno_for(exc)
        log_unexpected(_name(what), exc, f"returning {errname(code)}")
        raise pyfuse3.FUSEError(code) from exc


@asynccontextmanager
async def errors_logged(what: str) -> AsyncIterator[None]:
    """For a handler that has no reply to carry an errno (``forget``): log any failure like
    :func:`errors_as_errno` and swallow it, so it cannot end the request loop."""
    try:
        yield
    except Exception as exc:
        log_unexpected(what, exc, "ignored")


def log_unexpected(what: str, exc: BaseException, outcome: str) -> None:
    """A bug: its traceback the first time this kind of failure is seen (same exception
    type raised from the same line), one line with a count after that, so a failure that
    repeats on every request cannot flood the log."""
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = (frame.tb_frame.f_code.co_filename, frame.tb_lineno) if frame else ("?", 0)
    kind = (type(exc).__name__, *where)
    times = _seen.get(kind, 0) + 1
    if times == 1 and len(_seen) >= _MAX_KINDS:
        _seen.clear()
    _seen[kind] = times
    if times == 1:
        log.error("%s failed unexpectedly (%s): %s", what, outcome, describe(exc),
                  exc_info=exc)
    else:
        log.error("%s failed unexpectedly (%s): %s (seen %d times; traceback logged the "
                  "first time)", what, outcome, describe(exc), times)


def _name(what: str | Callable[[], str]) -> str:
    """The operation's name; naming it must not fail in turn (it runs on the error path)."""
    if isinstance(what, str):
        return what
    try:
        return what()
    except Exception as exc:
        return f"<operation not nameable: {describe(exc)}>"


def describe(exc: BaseException) -> str:
    """One line about a failure; some transport errors have an empty message."""
    if isinstance(exc, trio.TooSlowError):
        return "the store did not answer in time"
    if isinstance(exc, ChuteError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
