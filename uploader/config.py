"""A mount's settings, with their defaults and the checks that tie them together.

They travel as one value from the command line to the uploader. The mount's policies
(``--no-overwrite``, ``--no-delete``) are not here: they belong to the file system
(chute.fs.policy); the uploader hears of ``--no-overwrite`` per file, as ``no_clobber``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .checksums import CHECKSUM_ALGORITHMS, ChecksumAlgorithm
from .errors import ConfigError
from .late_patches import DEFAULT_PATCH_BACK, DEFAULT_PATCH_BUDGET, PATCH_BACK_MODES
from .retry import DEFAULT_BUDGET as DEFAULT_RETRY_BUDGET
from .sizes import MiB, check_slice_size, format_size

DEFAULT_SLICE_SIZE = 16 * MiB
DEFAULT_RING_SIZE = 256 * MiB
DEFAULT_UPLOAD_CONCURRENCY = 8
DEFAULT_STALL_TIMEOUT = 30.0

UPLOAD_CONCURRENCY_RANGE = (1, 256)
"""Parts in flight: each holds a ring slot and a connection (a descriptor); beyond a few
dozen no store goes faster, and 1,000,000 once left a process spinning after unmount."""
STALL_TIMEOUT_RANGE = (0.1, 3600.0)
RETRY_BUDGET_RANGE = (0.1, 86400.0)
PATCH_BUDGET_RANGE = (0, 64 * 1024**3)
MAX_WAITING_WRITERS = 448
"""Writes that may wait for a ring slot at once. The FUSE layer serves more requests than
this at once (chute.fs.mount), so writers holding slots always get theirs served: see the
progress rule in ring.py. Each waiting write keeps its data in the mount (measured: 300
writers waiting in 1 MiB writes, 611 MiB peak RSS, about 1.8 MiB each), so this bounds that
memory at about 800 MiB, reached only with 448 threads blocked in 1 MiB writes at once."""


def check_range(flag: str, value: float, bounds: tuple[float, float], unit: str = "") -> None:
    """``value`` must be a finite number within ``bounds`` (inclusive); one sentence if not."""
    low, high = bounds
    if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
        def show(x: float) -> str:
            return f"{x:g}" if isinstance(x, float) else str(x)

        raise ConfigError(f"{flag} must be between {show(low)} and {show(high)}{unit}, "
                          f"got {value!r}")


@dataclass(frozen=True)
class UploaderConfig:
    slice_size: int = DEFAULT_SLICE_SIZE
    """Bytes per ring slot = bytes per multipart part."""
    ring_size: int = DEFAULT_RING_SIZE
    """Total ring bytes: the whole data memory of the mount."""
    upload_concurrency: int = DEFAULT_UPLOAD_CONCURRENCY
    """Parts in flight at once, over all files; 1 sends each file's parts in order."""
    checksum: ChecksumAlgorithm = "crc32c"
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    """A transfer with no progress for this long is cancelled and retried."""
    retry_budget: float = DEFAULT_RETRY_BUDGET
    """Seconds a request keeps being retried before the writer gets EIO."""
    ring_stall_grace: float = 5.0
    """See the progress rule in ring.py."""
    max_waiting_writers: int = MAX_WAITING_WRITERS
    """Writes allowed to wait for a slot at once (see ring.py)."""
    patch_back: str = DEFAULT_PATCH_BACK
    """--patch-back: which uploads are made at a temporary key (late_patches.py)."""
    patch_budget: int = DEFAULT_PATCH_BUDGET
    """--patch-budget: bytes of late patches all files may hold in memory, beside the ring."""

    @property
    def slot_count(self) -> int:
        """Whole slices in ``ring_size``: a ring that is not a multiple of the slice is
        rounded down (the mount says so in its start-up line, and ``--help`` says so)."""
        return self.ring_size // self.slice_size

    def validate(self) -> None:
        try:
            check_slice_size(self.slice_size)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.slot_count < 2:
            raise ConfigError(
                f"--ring-size ({format_size(self.ring_size)}) must hold at least two slices of "
                f"--slice-size ({format_size(self.slice_size)})"
            )
        check_range("--upload-concurrency", self.upload_concurrency, UPLOAD_CONCURRENCY_RANGE)
        if self.checksum not in CHECKSUM_ALGORITHMS:
            raise ConfigError(f"--checksum must be one of {', '.join(CHECKSUM_ALGORITHMS)}")
        check_range("--stall-timeout", self.stall_timeout, STALL_TIMEOUT_RANGE, " seconds")
        check_range("--retry-budget", self.retry_budget, RETRY_BUDGET_RANGE, " seconds")
        if self.patch_back not in PATCH_BACK_MODES:
            raise ConfigError(f"--patch-back must be one of {', '.join(PATCH_BACK_MODES)}")
        check_range("--patch-budget", self.patch_budget, PATCH_BUDGET_RANGE, " bytes")
