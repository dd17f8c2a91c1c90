"""What the outside sees of one file's upload: its state and its statistics record.

:class:`UploadState` is the state of file_upload.py's state machine; :class:`FileUploadStatistics`
is the frozen snapshot ``FileUpload.statistics()`` answers (an entry of ``files`` in
``chute status --json``). They are what the state machine's readers share (uploader.py's
statistics, the status client in fs/control.py, which rebuilds records from JSON), so they live
apart from how the upload runs.

Invariant: a record is a snapshot (statistics.py): reading one never changes the upload, and
nothing downstream patches it. This module imports only retry.py.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from .retry import RetryReason


@dataclass
class UploadCost:
    """One file's cost record, kept while it is made (mutable, the file upload's own; its
    snapshot is in :class:`FileUploadStatistics`)."""

    sent: int = 0
    """Bytes of parts (or of the PutObject) uploaded from this machine."""
    copied: int = 0
    """Bytes copied server-side (UploadPartCopy of the object it replaces, or of its
    temporary object)."""
    fetched: int = 0
    """Bytes read back from the store (of a temporary object, or the finished object to hash
    it); the old object's bytes fetched into slices are counted by slices.py."""


class UploadState(enum.Enum):
    OPEN = "open"
    FINALIZING = "finalizing"
    DONE = "done"
    FAILED = "failed"
    ABORTED = "aborted"


@dataclass(frozen=True)
class FileUploadStatistics:
    """A snapshot of one file's upload (an entry of ``files`` in ``chute status --json``)."""

    path: str
    key: str
    state: UploadState
    bytes_received: int
    """Bytes received from the writer (the file's current length)."""
    bytes_acknowledged: int
    """Bytes the store has acknowledged."""
    parts_in_flight: int
    """Sealed slices not yet acknowledged (queued or being sent)."""
    retries: int
    """Retried requests of this file's upload, all reasons together."""
    seconds: float
    """Since the file was opened, until it was finished."""
    throughput_bps: float
    """bytes_acknowledged / seconds."""
    error: str | None
    """Why the upload failed, once it has."""
    parts_acknowledged: int
    """Multipart parts the store has acknowledged (0 for a file sent by one PutObject)."""
    retries_by_reason: Mapping[RetryReason, int]
    bytes_sent: int = 0
    """The cost record: bytes of parts (or the PutObject) uploaded from this machine."""
    bytes_copied: int = 0
    """Bytes of the object it replaces copied server-side (UploadPartCopy)."""
    bytes_fetched: int = 0
    """Bytes read from the store: the old object's bytes (ranged GETs), and the finished
    object when it had to be read back to hash it."""
