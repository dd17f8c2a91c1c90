#!/usr/bin/env python3
"""Memory and local-disk cost of streaming: copy a file 8x larger than the ring into a mount.

Starts its own SeaweedFS (loopback), mounts chute with a given ring, copies a file of
``--factor`` x ring size with ``cp`` (the data is streamed from a seeded generator through
``dd``, so no big file is needed on disk), and prints the mount process's peak RSS next to the
ring size and the bytes the mount process wrote to local disk (``/proc/PID/io``
``write_bytes``). Targets: peak RSS < ring + 64 MiB; 0 bytes written to disk.

    python scripts/bench_memory.py                   # ring 128 MiB, 1 GiB file
    python scripts/bench_memory.py --ring-size 256MiB --factor 8
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
from _local_mount import BUCKET, local_mount, proc_field

from chute.uploader.sizes import MiB, format_size, parse_size


def generator(size: int, seed: int, sink: subprocess.IO[bytes], digest: hashlib._Hash
              ) -> None:
    """Write ``size`` pseudo-random bytes (sha256 counter mode is too slow; use randbytes)."""
    import random

    rng = random.Random(seed)
    remaining = size
    while remaining:
        n = min(remaining, 4 * MiB)
        block = rng.randbytes(n)
        digest.update(block)
        sink.write(block)
        remaining -= n
    sink.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ring-size", default="128MiB")
    parser.add_argument("--slice-size", default="16MiB")
    parser.add_argument("--factor", type=int, default=8, help="file size = factor x ring")
    args = parser.parse_args()
    ring = parse_size(args.ring_size)
    size = ring * args.factor

    with local_mount("--ring-size", args.ring_size, "--slice-size", args.slice_size) as mounted:
        mountpoint, pid, store = mounted.path, mounted.process.pid, mounted.store
        rss_idle = proc_field(pid, "status", "VmRSS") * 1024
        disk_before = proc_field(pid, "io", "write_bytes")
        digest = hashlib.sha256()
        started = time.monotonic()
        dd = subprocess.Popen(
            ["dd", f"of={mountpoint / 'big'}", "bs=1M", "iflag=fullblock", "status=none"],
            stdin=subprocess.PIPE,
        )
        feeder = threading.Thread(target=generator, args=(size, 1, dd.stdin, digest))
        feeder.start()
        feeder.join()
        if dd.wait() != 0:
            raise SystemExit("dd into the mount failed")
        elapsed = time.monotonic() - started
        peak = proc_field(pid, "status", "VmHWM") * 1024
        disk = proc_field(pid, "io", "write_bytes") - disk_before
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        s3 = boto3.client("s3", endpoint_url=store.endpoint_url, region_name=store.region,
                          aws_access_key_id=store.access_key,
                          aws_secret_access_key=store.secret_key)
        check = hashlib.sha256()
        for chunk in s3.get_object(Bucket=BUCKET, Key="big")["Body"].iter_chunks(MiB):
            check.update(chunk)
        verified = check.hexdigest() == digest.hexdigest()

    limit = ring + 64 * MiB
    print(f"file {format_size(size)} through a {format_size(ring)} ring "
          f"(slice {args.slice_size}) in {elapsed:.1f} s = {size / elapsed / 1e6:.0f} MB/s")
    print(f"{'mount peak RSS':<28}{format_size(peak):>12}   limit ring + 64 MiB = "
          f"{format_size(limit)}  ratio {peak / limit:.2f}  "
          f"{'OK' if peak < limit else 'OVER'}")
    print(f"{'mount RSS before copy':<28}{format_size(rss_idle):>12}")
    print(f"{'mount wrote to local disk':<28}{disk:>12} B   {'OK' if disk == 0 else 'NOT 0'}")
    print(f"{'mount CPU':<28}{cpu:>10.1f} s   {cpu / (size / 2**30):.2f} s per GiB")
    print(f"{'object byte-identical':<28}{'yes' if verified else 'NO':>12}")
    return 0 if verified and peak < limit and disk == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
