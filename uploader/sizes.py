"""Byte sizes: parsing user input, and S3's multipart limits.

This module is the one source of truth for the part-size rules. S3 (and every compatible
store chute has met) accepts at most 10,000 parts per upload, each part except the last
between 5 MiB and 5 GiB. Because chute uploads one ring slot as one part, the slice size is
the part size, and it caps the largest file a mount can write at ``MAX_PARTS * slice_size``.
"""

from __future__ import annotations

import re
from decimal import Decimal

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

MIN_PART_SIZE = 5 * MiB
"""Smallest part S3 accepts, except for the last part of an upload."""

MAX_PART_SIZE = 5 * GiB
"""Largest part (and largest single PutObject) S3 accepts."""

MAX_PARTS = 10_000
"""Highest part number S3 accepts."""

_UNITS = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kb": 1000,
    "kib": KiB,
    "m": MiB,
    "mb": 1000**2,
    "mib": MiB,
    "g": GiB,
    "gb": 1000**3,
    "gib": GiB,
    "t": TiB,
    "tb": 1000**4,
    "tib": TiB,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Parse ``"16MiB"``, ``"1GiB"``, ``"8M"`` (binary) or ``"10MB"`` (decimal) into bytes."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 16MiB or 1GiB)")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown size unit {unit!r} in {text!r} (use KiB, MiB, GiB)")
    return int(Decimal(number) * factor)


def format_size(n: float) -> str:
    """Render a byte count the way a person reads it (``16 MiB``, ``1.5 GiB``)."""
    for unit, factor in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= factor:
            value = n / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{int(n)} B"


def check_slice_size(slice_size: int) -> None:
    """Reject a slice size S3 could not take as a (non-last) part."""
    if not MIN_PART_SIZE <= slice_size <= MAX_PART_SIZE:
        raise ValueError(
            f"--slice-size must be between {format_size(MIN_PART_SIZE)} and "
            f"{format_size(MAX_PART_SIZE)}: S3 parts (except the last) must be that large; "
            f"got {format_size(slice_size)}"
        )


def max_object_size(slice_size: int) -> int:
    """Largest file a mount with this slice size can write (10,000 parts of one slice)."""
    return MAX_PARTS * slice_size
