"""A mount's settings, with their defaults and the checks that tie them together.

They travel as one value from the command line to the uploader. The mount's policies
(``--no-overwrite``, ``--no-delete``) are not here: they belong to the file system
(chute.fs.policy); the uploader hears of ``--no-overwrite`` per file, as ``no_clobber``."""

from __future__ import annotations

from dataclasses import dataclass

from .checksums import CHECKSUM_ALGORITHMS, ChecksumAlgorithm
from .errors import ConfigError
from .retry import DEFAULT_BUDGET as DEFAULT_RETRY_BUDGET
from .sizes import MiB, check_slice_size, format_size

DEFAULT_SLICE_SIZE = 16 * MiB
DEFAULT_RING_SIZE = 256 * MiB
DEFAULT_UPLOAD_CONCURRENCY = 8
DEFAULT_STALL_TIMEOUT = 30.0


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

    @property
    def slot_count(self) -> int:
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
        if self.upload_concurrency < 1:
            raise ConfigError("--upload-concurrency must be at least 1")
        if self.checksum not in CHECKSUM_ALGORITHMS:
            raise ConfigError(f"--checksum must be one of {', '.join(CHECKSUM_ALGORITHMS)}")
        if self.stall_timeout <= 0 or self.retry_budget <= 0:
            raise ConfigError("--stall-timeout and --retry-budget must be positive")
