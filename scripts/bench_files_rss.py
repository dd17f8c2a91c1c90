#!/usr/bin/env python3
"""Does the mount's memory grow with the number of files written? (issue 12: forget.)

Starts its own SeaweedFS (loopback), mounts chute, and creates and closes ``--files`` small
files (default 100,000) in batches of ``--batch`` (10,000) into a tree of ``--dirs`` (100)
directories, filled one after the other by ``--writers`` writers at once. After each batch it
samples the mount process's RSS (``/proc/PID/status`` VmRSS) and prints a table, then ``RSS
after the last batch - RSS after the first batch`` and whether that is within ``--limit``
(20 MiB).

chute drops a node when the kernel FORGETs it (lookup counts, fs/namespace.py). The kernel
forgets an inode when it evicts it from its inode cache, which for a closed file whose
dentry is gone happens under memory pressure, not at close. So that the run measures chute
and not how much memory the machine has spare, the script makes the kernel reclaim its
dentry and inode caches after each batch, as memory pressure would (``echo 2 >
/proc/sys/vm/drop_caches``; root only; it costs every file system on the machine its cached
dentries once). ``--no-reclaim`` measures without: chute then keeps one node per inode the
kernel still caches (about 1 KiB each), as it must, since the kernel may still ask about them.

    python scripts/bench_files_rss.py
    python scripts/bench_files_rss.py --files 20000 --batch 2000 --no-reclaim
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _local_mount import local_mount, proc_field

from chute.uploader.sizes import MiB, format_size


def vm_rss(pid: int) -> int:
    """The process's resident set in bytes."""
    if not os.path.exists(f"/proc/{pid}"):
        raise SystemExit(f"process {pid} has gone")
    return proc_field(pid, "status", "VmRSS") * 1024


def reclaim_dentries_and_inodes() -> None:
    """What memory pressure does to the kernel's dentry and inode caches (FORGETs follow)."""
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")
    time.sleep(1)  # the FORGETs reach the mount


def write_files(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, path.name.encode())
        finally:
            os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--dirs", type=int, default=100)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--limit", type=float, default=20, help="MiB")
    parser.add_argument("--no-reclaim", action="store_true",
                        help="do not make the kernel reclaim dentries and inodes per batch")
    args = parser.parse_args()

    rows: list[tuple[int, float, int]] = []
    with local_mount(prefix="chute-rss-") as mounted:
        mountpoint, mount = mounted.path, mounted.process
        dirs = [mountpoint / f"d{i:03d}" for i in range(args.dirs)]
        for d in dirs:
            d.mkdir()
        print(f"mount pid {mount.pid}, RSS idle {format_size(vm_rss(mount.pid))}",
              flush=True)
        print(f"{'files':>9} {'seconds':>8} {'files/s':>8} {'RSS':>12}", flush=True)
        written = 0
        with ThreadPoolExecutor(args.writers) as pool:
            while written < args.files:
                count = min(args.batch, args.files - written)
                paths = [dirs[(written + i) * len(dirs) // args.files]
                         / f"f{written + i:07d}" for i in range(count)]
                started = time.monotonic()
                step = -(-count // args.writers)
                chunks = [paths[i:i + step] for i in range(0, count, step)]
                list(pool.map(write_files, chunks))
                elapsed = time.monotonic() - started
                written += count
                if not args.no_reclaim:
                    reclaim_dentries_and_inodes()
                rss = vm_rss(mount.pid)
                rows.append((written, elapsed, rss))
                print(f"{written:>9} {elapsed:>8.1f} {count / elapsed:>8.0f} "
                      f"{format_size(rss):>12}", flush=True)
    growth = rows[-1][2] - rows[0][2]
    within = growth <= args.limit * MiB
    if not args.no_reclaim:
        print("(the kernel reclaimed its dentry and inode caches after each batch)")
    print(f"RSS after last batch - RSS after first batch = {growth / MiB:+.1f} MiB "
          f"({'within' if within else 'NOT within'} {args.limit:g} MiB)")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
