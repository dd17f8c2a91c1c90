"""The mount-wide upload counters, and the frozen record they are read out as.

Statistics are typed records, as trio's ``statistics()`` methods return them: each class that
keeps numbers answers ``statistics()`` with a frozen dataclass defined beside it
(:class:`~chute.uploader.ring.RingStatistics`,
:class:`~chute.uploader.multipart.MultipartStatistics`,
:class:`~chute.uploader.upload_status.FileUploadStatistics`,
:class:`~chute.uploader.uploader.UploaderStatistics`). A record is a snapshot: reading one
never changes the counters, and nothing downstream patches it. Turning records into JSON is
done once, generically, at the status socket (``chute.fs.control``).

This module holds only what several of those classes share: the counters every file upload
adds to (one :class:`UploadCounters` per mount) and the record of them, :class:`UploadTotals`.
It imports only retry.py (for :class:`RetryReason`), so any module may use it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from .retry import RetryReason


@dataclass(frozen=True)
class UploadTotals:
    """Counts since the mount started (``totals`` in ``chute status --json``)."""

    bytes_written: int
    """Bytes received from writers."""
    bytes_uploaded: int
    """Bytes the store has acknowledged."""
    parts: int
    """Multipart parts the store has acknowledged."""
    files_done: int
    """Files whose object is complete."""
    failures: int
    """Uploads that failed (their writer got an error)."""
    retries: Mapping[str, int]
    """Retried S3 requests per operation (``UploadPart``, ``PutObject``...)."""
    files_opened: int
    """Files opened for writing."""
    files_abandoned: int
    """Files dropped because the mount stopped while they were open."""
    files_writer_died: int
    """Files dropped because their writer died with them open (killed by a signal, or
    exited non-zero): no object was made (fs/writer_exit.py)."""
    retries_by_reason: Mapping[RetryReason, int]
    """Retried S3 requests per reason."""
    bytes_copied: int = 0
    """Bytes copied server-side from the objects files replaced (UploadPartCopy)."""
    bytes_fetched: int = 0
    """Bytes read back from the store by uploads: old bytes of objects being changed in
    place (ranged GETs), and finished objects read back to hash them. (``bytes_uploaded``
    is what was sent from this machine.)"""


@dataclass
class UploadCounters:
    """The mutable counters behind :class:`UploadTotals`; only the uploader's classes add."""

    bytes_written: int = 0
    bytes_uploaded: int = 0
    parts: int = 0
    files_done: int = 0
    failures: int = 0
    files_opened: int = 0
    files_abandoned: int = 0
    files_writer_died: int = 0
    bytes_copied: int = 0
    bytes_fetched: int = 0
    retries: Counter[tuple[str, RetryReason]] = field(default_factory=Counter)
    """Retries per (operation, reason)."""

    def count_retry(self, operation: str, reason: RetryReason) -> None:
        self.retries[operation, reason] += 1

    def totals(self) -> UploadTotals:
        by_operation: Counter[str] = Counter()
        by_reason: Counter[RetryReason] = Counter()
        for (operation, reason), n in self.retries.items():
            by_operation[operation] += n
            by_reason[reason] += n
        return UploadTotals(
            bytes_written=self.bytes_written, bytes_uploaded=self.bytes_uploaded,
            parts=self.parts, files_done=self.files_done, failures=self.failures,
            retries=dict(by_operation), files_opened=self.files_opened,
            files_abandoned=self.files_abandoned,
            files_writer_died=self.files_writer_died, retries_by_reason=dict(by_reason),
            bytes_copied=self.bytes_copied, bytes_fetched=self.bytes_fetched,
        )
