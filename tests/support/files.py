"""Local test data: incompressible files of a given size and their digests."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def random_file(path: Path, size: int, seed: int = 0) -> Path:
    """Incompressible test data, written in 16 MiB blocks (no giant buffer in memory)."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            n = min(remaining, 16 << 20)
            f.write(rng.randbytes(n))
            remaining -= n
    return path
