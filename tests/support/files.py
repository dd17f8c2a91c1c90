"""Local test data: incompressible files of a given size and their digests, and closing a
descriptor the way a writer reports its outcome."""

from __future__ import annotations

import hashlib
import os
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


def close_keeping_first(fd: int, error: OSError | None) -> OSError | None:
    """Close ``fd`` and return the writer's outcome: ``error`` (the first a write gave) if
    any, else what the close gave (chute reports a failed upload at close), else None."""
    try:
        os.close(fd)
    except OSError as exc:
        return error or exc
    return error
