"""Turning a failure inside a FUSE handler into the errno its caller sees, and the log line.

Errors become errnos through ``chute.uploader.errors.errno_for`` only (one map for the whole
mount). What fs/ itself refuses is a ``Refused`` carrying its errno (refused.py), so the
modules below the adapter decide errnos without importing pyfuse3. A store that cannot be
reached is one log line per failed operation (the S3 client lets out chute errors only:
StoreError, StoreUnreachable, Stalled); a traceback means a bug.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pyfuse3
import trio

from chute.uploader.errors import ChuteError, errno_for

from .refused import NoAnswer, Refused, errname

__all__ = ["NoAnswer", "Refused", "describe", "errors_as_errno"]

log = logging.getLogger("chute.fs.operations")


@asynccontextmanager
async def errors_as_errno(what: str | Callable[[], str]) -> AsyncIterator[None]:
    """Turn any failure into the errno the caller sees; log what is not already logged:
    a refusal with its message, chute's own errors and the store's failures in one line
    with the errno and the cause, anything else (a bug) with its traceback. ``what`` names
    the operation, or is called to name it (with its path) only when there is something
    to log."""
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
        log.warning("%s: returning %s: %s", what if isinstance(what, str) else what(),
                    errname(code), describe(exc))
        raise pyfuse3.FUSEError(code) from exc
    except Exception as exc:
        log.exception("%s failed unexpectedly", what if isinstance(what, str) else what())
        raise pyfuse3.FUSEError(errno_for(exc)) from exc


def describe(exc: BaseException) -> str:
    """One line about a failure; some transport errors have an empty message."""
    if isinstance(exc, trio.TooSlowError):
        return "the store did not answer in time"
    if isinstance(exc, ChuteError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
