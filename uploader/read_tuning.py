"""What a prefetcher (prefetch.py) is tuned by and what it reads from.

:class:`ReadTuning` holds the prefetch policy's sizes, whose meaning prefetch.py's docstring
gives; a mount's own values come from ``chute.fs.reads.mount_tuning``. :class:`RangeSource`
is the one store call a reader makes (:meth:`chute.uploader.s3.S3Client.get_range`), so tests
can put a slow or counting store in front of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class ReadTuning:
    """The prefetch policy's sizes (bytes). The defaults are the mount's."""

    initial_request: int = 512 * KiB
    """First request of a sequential run: four kernel reads (128 KiB), so a reader that stops
    early (a `file`, a header probe) costs little, and a small file is one GET."""
    max_request: int = 8 * MiB
    """Requests stop growing here: the size at which one GET reaches a store's per-connection
    throughput (mountpoint-s3 and the AWS CRT use 8 MiB parts; chute's default slice is too)."""
    min_request: int = 128 * KiB
    """A read-ahead refused by the budget is retried at half the size down to this."""
    max_window: int = 32 * MiB
    """Bytes fetched ahead of a sequential reader at most: four 8 MiB GETs in flight, and two
    readers at full speed within a 64 MiB budget (less its demand reserve)."""
    stream_from_start: int = 0
    """A sequential run from the object's first byte this long streams (0: ``max_request``);
    a run that began at a jump streams only once ``max_request`` long (see prefetch.py)."""
    max_in_flight: int = 0
    """A streaming reader's GETs in flight at most (0: as many as the window holds); the
    rest of the window is room for GETs that answer before the one the reader waits for."""
    random_extra: int = 64 * KiB
    """Fetched past a non-sequential read, for the small forward reads that often follow."""
    keep_behind: int = 256 * KiB
    """Chunks ending this far behind the reader are kept: the kernel's readahead may deliver
    reads up to 256 KiB out of order (mountpoint-s3 keeps 1 MiB for the same reason)."""
    sequential_slack: int = 1 * MiB
    """A read starting up to this far past the previous one still counts as sequential."""
    align: int = 0
    """Sequential requests never cross a multiple of this (0: no alignment), so a reader's
    GETs cover the same blocks as the store's own pieces: SeaweedFS reads every chunk a GET
    touches whole, and GETs straddling its chunks cost it a third more CPU per GiB
    (mountpoint-s3 aligns its requests to part boundaries for the same reason)."""


DEFAULT_TUNING = ReadTuning()


class RangeSource(Protocol):
    """What the reader needs from the store: :meth:`S3Client.get_range`."""

    async def get_range(self, key: str, first: int, last: int, *,
                        if_match: str | None = None,
                        into: memoryview | None = None) -> bytes | memoryview: ...
