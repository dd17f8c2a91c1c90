"""Errors chute raises, and the one map from an error to the errno a writer sees.

Every failure that reaches a FUSE handler is turned into an errno here and nowhere else,
so that what ``cp`` prints is decided in one place::

    ChuteError                      EIO    (anything unexpected)
    ├── RingExhausted               ENOBUFS  no ring slot can ever free: --ring-size too small
    ├── FileTooLarge                EFBIG    10,000 parts of --slice-size are written
    ├── BackwardWrite               EINVAL   a write into bytes already sent to the store
    ├── PatchBudgetExhausted        ENOBUFS  late patches would exceed --patch-budget
    ├── TruncateRefused             EOPNOTSUPP  shrinking into bytes already sent (no temp key)
    ├── ObjectExists                EEXIST   --no-overwrite, and the name exists (or appeared)
    ├── ObjectChanged               ESTALE   the object a reader opened was replaced mid-read
    ├── UploadFailed                EIO      the upload of this file failed; sticky per file
    │   └── UploadSessionLost       EIO      the store forgot the multipart upload
    ├── StoreError                  EIO      the store answered with an S3 error
    │   │   (code, HTTP status, request id attached; see retry.py for which are retried)
    │   └── MalformedResponse       EIO      an answer chute cannot read (not XML, a field
    │                                        missing): code ``MalformedResponse``, not retried
    ├── StoreUnreachable            EIO      no answer: no connection, the connection broke,
    │   │                                    or (after retries) the store went away
    │   └── Stalled                 EIO      no progress for --stall-timeout
    └── ConfigError                 -        bad mount options; reported before mounting

These are the only failures the S3 client lets out (besides cancellation): it turns the HTTP
library's exceptions into StoreUnreachable/Stalled and unreadable answers into
MalformedResponse, so nothing above uploader/s3*.py knows which HTTP library is underneath.
"""

from __future__ import annotations

import errno


class ChuteError(Exception):
    """Base class; ``errno`` is what a writer sees if this reaches a FUSE handler."""

    errno: int = errno.EIO


class ConfigError(ChuteError):
    """A mount option or the environment makes mounting impossible (reported, not mounted)."""


class RingExhausted(ChuteError):
    """Every ring slot is held by a file that cannot progress: see ring.py's progress rule."""

    errno = errno.ENOBUFS


class FileTooLarge(ChuteError):
    """The file would need more than 10,000 parts of the configured slice size."""

    errno = errno.EFBIG


class BackwardWrite(ChuteError):
    """A write landed in bytes that have already left the ring for the store."""

    errno = errno.EINVAL


class PatchBudgetExhausted(ChuteError):
    """Late patches (late_patches.py) held in memory would exceed ``--patch-budget``."""

    errno = errno.ENOBUFS


class TruncateRefused(ChuteError):
    """A shrink into bytes already sent, for an upload not made at a temporary key."""

    errno = errno.EOPNOTSUPP


class ObjectExists(ChuteError):
    """``--no-overwrite``: the key exists, or was created by someone else before ours landed."""

    errno = errno.EEXIST


class ObjectChanged(ChuteError):
    """The object being read is no longer the version pinned at open (its ETag changed, the
    store answered a conditional GET with 412): the reader gets ESTALE, never a mix of two."""

    errno = errno.ESTALE


class UploadFailed(ChuteError):
    """This file's upload failed; every later write, fsync and close of it reports EIO."""

    errno = errno.EIO


class UploadSessionLost(UploadFailed):
    """The store no longer knows the multipart upload (NoSuchUpload): the parts are gone."""


class StoreError(ChuteError):
    """The S3 store answered a request with an error response."""

    def __init__(self, operation: str, status: int, code: str, message: str = "",
                 request_id: str = "") -> None:
        self.operation = operation
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        super().__init__(
            f"{operation}: HTTP {status} {code}" + (f": {message}" if message else "")
        )


class MalformedResponse(StoreError):
    """The store answered, but not in a form chute can read: not XML, or a required field
    missing. Final (not retried): a store that answers this way will answer so again."""

    CODE = "MalformedResponse"

    def __init__(self, operation: str, status: int, message: str, request_id: str = "") -> None:
        super().__init__(operation, status, self.CODE, message, request_id)


class StoreUnreachable(ChuteError):
    """A request got no answer: the connection could not be made, broke, or stalled.

    ``description`` is one line saying what happened (it names the failure, e.g.
    ``connection error (ConnectError: ...)``); ``request_sent`` says whether the whole
    request had gone out when it happened: then the store may have acted on it and only its
    answer is lost (see retry.RetryReason.answer_may_be_lost). Retried by the policy; once
    the retries are spent it reaches the writer as EIO.
    """

    errno = errno.EIO

    def __init__(self, operation: str, description: str, *, request_sent: bool = False) -> None:
        self.operation = operation
        self.description = description
        self.request_sent = request_sent
        super().__init__(f"{operation}: {description}")


class Stalled(StoreUnreachable):
    """A transfer made no progress for the stall timeout; it is cancelled and retried."""


def errno_for(exc: BaseException) -> int:
    """The errno a writer should see for ``exc``."""
    if isinstance(exc, ChuteError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO
