"""Units, the bucket's name, and the bench's progress log (stderr: stdout is the report)."""

from __future__ import annotations

import sys

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
BUCKET = "bench"
FLOORS = ("store-floor", "fuse-floor")
"""--floors rows of --small-files: references, not peers (no chute/x ratio)."""
CHUNK = 4 * MiB  # generator and hashing granularity (keep fixed: see Data.chunks)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt_size(n: float) -> str:
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= factor:
            return f"{n / factor:.1f} {unit}" if n % factor else f"{int(n // factor)} {unit}"
    return f"{int(n)} B"
