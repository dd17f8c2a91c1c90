"""What fs/ itself refuses, as chute errors carrying their errno (no pyfuse3 here).

The modules under the FUSE adapter (namespace, lookups, handles, objects) decide errnos by
raising these; errnos.py turns them, like every other failure, into the errno the caller
sees, through ``chute.uploader.errors.errno_for`` (which reads ``ChuteError.errno``).
"""

from __future__ import annotations

import errno

from chute.uploader.errors import ChuteError


def errname(code: int) -> str:
    return errno.errorcode.get(code, str(code))


class Refused(ChuteError):
    """The file system refuses an operation with ``errno``. With a message (``%`` format
    and its arguments) it is logged once, as ``message (ENAME)``; without, it is an
    ordinary answer (ENOENT of a lookup) and is not logged."""

    def __init__(self, err: int, message: str = "", *args: object) -> None:
        self.errno = err
        self.message = message % args if message else ""
        super().__init__(self.message or errname(err))


class NoAnswer(ChuteError):
    """A metadata request got no answer within its deadline (EIO)."""
