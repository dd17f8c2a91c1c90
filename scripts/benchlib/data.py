"""The bytes every contender copies: a seeded, incompressible stream (an AES-256-CTR keystream
from openssl, or ``random.randbytes``), written to a file once outside every timed region;
its digests (part MD5s for the expected ETag, sha256, xxh3-128); the small-file tree; and
the stream piped into ``dd`` for --scale."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import CHUNK, KiB, MiB


def openssl_stream(seed: int) -> list[str] | None:
    """An AES-256-CTR keystream (of /dev/zero) keyed by the seed: fast and incompressible."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    key = hashlib.sha256(f"chute-bench-{seed}".encode()).hexdigest()
    return [openssl, "enc", "-aes-256-ctr", "-K", key, "-iv", "0" * 32, "-in", "/dev/zero"]


def generator_name() -> str:
    return ("AES-256-CTR keystream (openssl)" if shutil.which("openssl")
            else "random.randbytes (no openssl)")


def stream_chunks(seed: int, size: int) -> Iterator[bytes]:
    """``size`` seeded pseudo-random bytes in CHUNK pieces (the last one shorter)."""
    command = openssl_stream(seed)
    if command is None:
        rng = random.Random(seed)
        remaining = size
        while remaining:
            n = min(remaining, CHUNK)
            yield rng.randbytes(n)
            remaining -= n
        return
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        remaining = size
        while remaining:
            block = proc.stdout.read(min(remaining, CHUNK))
            if not block:
                raise RuntimeError("openssl stream ended early")
            remaining -= len(block)
            yield block
    finally:
        proc.kill()
        proc.wait()


class Data:
    """The bytes of one benchmark object: a file on disk, or a stream rebuilt from its seed.

    Digests (part MD5s per part size, sha256, xxh3-128) are computed lazily, in one pass for
    everything missing, and always outside timed regions.
    """

    def __init__(self, seed: int, size: int, path: Path | None = None) -> None:
        self.seed, self.size, self.path = seed, size, path
        self._part_md5s: dict[int, list[bytes]] = {}
        self._sha256: str | None = None
        self._xxh3: str | None = None

    def chunks(self) -> Iterator[bytes]:
        if self.path is None:
            yield from stream_chunks(self.seed, self.size)
            return
        with open(self.path, "rb") as f:
            while block := f.read(CHUNK):
                yield block

    def write_file(self, path: Path, part_sizes: set[int], sha: bool) -> None:
        """Generate the bytes into ``path`` (fsynced), digesting them on the way."""
        with open(path, "wb") as f:
            self._digest(self._tee(stream_chunks(self.seed, self.size), f), part_sizes, sha,
                         xxh=False)
            f.flush()
            os.fsync(f.fileno())
        self.path = path

    @staticmethod
    def _tee(chunks: Iterator[bytes], f: Any) -> Iterator[bytes]:
        for block in chunks:
            f.write(block)
            yield block

    def ensure(self, part_sizes: set[int] = frozenset(), sha: bool = False, xxh: bool = False,
               ) -> None:
        missing = {p for p in part_sizes if p not in self._part_md5s}
        sha = sha and self._sha256 is None
        xxh = xxh and self._xxh3 is None
        if missing or sha or xxh:
            self._digest(self.chunks(), missing, sha, xxh)

    def _digest(self, chunks: Iterator[bytes], part_sizes: set[int], sha: bool, xxh: bool,
                ) -> None:
        import xxhash

        parts = {p: ([], hashlib.md5(), 0) for p in part_sizes}
        whole = hashlib.sha256() if sha else None
        x3 = xxhash.xxh3_128() if xxh else None
        for block in chunks:
            if whole is not None:
                whole.update(block)
            if x3 is not None:
                x3.update(block)
            view = memoryview(block)
            for p, (done, current, filled) in parts.items():
                pos = 0
                while pos < len(view):
                    take = min(p - filled, len(view) - pos)
                    current.update(view[pos:pos + take])
                    pos += take
                    filled += take
                    if filled == p:
                        done.append(current.digest())
                        current, filled = hashlib.md5(), 0
                parts[p] = (done, current, filled)
        for p, (done, current, filled) in parts.items():
            if filled or not done:
                done.append(current.digest())
            self._part_md5s[p] = done
        if whole is not None:
            self._sha256 = whole.hexdigest()
        if x3 is not None:
            self._xxh3 = x3.hexdigest()

    def etags(self, part_size: int) -> set[str]:
        """The ETags an exact upload in parts of ``part_size`` can have."""
        self.ensure({part_size})
        md5s = self._part_md5s[part_size]
        tags = {f"{hashlib.md5(b''.join(md5s)).hexdigest()}-{len(md5s)}"}
        if len(md5s) == 1:
            tags.add(md5s[0].hex())
        return tags

    @property
    def sha256(self) -> str:
        self.ensure(sha=True)
        assert self._sha256 is not None
        return self._sha256

    @property
    def xxh3(self) -> str:
        self.ensure(xxh=True)
        assert self._xxh3 is not None
        return self._xxh3


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def make_tree(root: Path, count: int, seed: int) -> dict[str, tuple[int, str]]:
    """``count`` files of 4 KiB-1 MiB (log-uniform, seeded) in 20 directories.

    Returns {relative path: (size, md5 hex)}.
    """
    rng = random.Random(seed)
    sizes = [int(math.exp(rng.uniform(math.log(4 * KiB), math.log(MiB)))) for _ in range(count)]
    expected: dict[str, tuple[int, str]] = {}
    stream = stream_chunks(seed, sum(sizes))
    pending = b""
    for i, size in enumerate(sizes):
        while len(pending) < size:
            pending += next(stream)
        body, pending = pending[:size], pending[size:]
        rel = f"d{i % 20:02d}/f{i:04d}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)
        expected[rel] = (size, hashlib.md5(body).hexdigest())
    stream.close()
    return expected


def pipe_into_dd(data: Data, target: Path) -> None:
    """The seeded stream of ``data`` through a pipe into ``dd of=target bs=1M``."""
    if data.size % MiB:
        raise SystemExit("--scale sizes must be whole MiB")
    dd_cmd = ["dd", f"of={target}", "bs=1M", f"count={data.size // MiB}", "iflag=fullblock",
              "status=none"]
    command = openssl_stream(data.seed)
    if command is not None:
        gen = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            dd = subprocess.run(dd_cmd, stdin=gen.stdout, check=False)
        finally:
            gen.kill()
            gen.wait()
    else:
        dd_proc = subprocess.Popen(dd_cmd, stdin=subprocess.PIPE)
        assert dd_proc.stdin is not None

        def feed() -> None:
            with contextlib.suppress(BrokenPipeError):
                for block in stream_chunks(data.seed, data.size):
                    dd_proc.stdin.write(block)
            dd_proc.stdin.close()

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        dd = subprocess.CompletedProcess(dd_cmd, dd_proc.wait())
        feeder.join()
    if dd.returncode != 0:
        raise RuntimeError(f"dd into {target} failed with {dd.returncode}")
