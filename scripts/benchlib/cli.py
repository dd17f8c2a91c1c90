"""The bench's command line: options and their defaults per mode, the disk a run needs, and
the run itself (store up, warm-up, the mode, report; mounts, store and work directory
cleaned up on errors, Ctrl-C and SIGTERM)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from chute.fs.mountinfo import MountEntry, filesystem_of, mounts

from . import links, writers
from .ceiling import ceiling_child
from .common import BUCKET, GiB, KiB, MiB, fmt_size, log
from .inplace import mode_inplace, print_inplace
from .reads import mode_reads, print_reads, read_ceiling_child
from .report import environment, print_header, print_report, to_json
from .runs import Bench


def _size(text: str) -> int:
    from chute.uploader.sizes import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None, description: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--small-files", action="store_true",
                       help="cp -r of a tree of 2,000 files of 4 KiB-1 MiB (seeded sizes)")
    modes.add_argument("--scale", action="store_true",
                       help="chute only: 1 GiB and 16 GiB streamed into dd; peak RSS of each")
    modes.add_argument("--sweep", action="store_true",
                       help="chute only: slice 8/16/32 MiB x upload concurrency 4/8/16, "
                            "ring 256 MiB, 1 GiB file")
    modes.add_argument("--reads", action="store_true",
                       help="sequential read of one object (default 4 GiB) through chute "
                            "--allow-read vs a direct parallel ranged-GET download vs rclone "
                            "mount (if installed); one run")
    modes.add_argument("--inplace", action="store_true",
                       help="rsync --inplace --no-whole-file of a file (default 200 MiB) with "
                            "10 x 4 KiB changes onto its old object: chute --allow-read vs "
                            "rclone --vfs-cache-mode writes; time and bytes; one run")
    modes.add_argument("--writers", action="store_true",
                       help="parallel writers (1,2,4,8): xargs -P N cp of small files, N cp of "
                            "big files, tar and rsync at once; chute beside rclone mount")
    modes.add_argument("--link", action="store_true",
                       help="every contender through a modelled link (delay each way, rate "
                            "cap) at several RTT/rate points; requests per file counted")
    links.add_arguments(p)
    writers.add_arguments(p)
    p.add_argument("--read-budget", type=_size,
                   help="--reads, --link's reads: chute's --read-budget (default: chute's "
                        "default)")
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
    p.add_argument("--bwlimit", metavar="RATE",
                   help="pass --bwlimit RATE to the chute contender and print the achieved "
                   "rate against it (e.g. --short --bwlimit 20MiB/s; target within 10%%)")
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
    if args.link or args.writers:
        args.size = args.size or 256 * MiB
        args.files = args.files or (200 if args.link else 256)
        args.runs, args.peers = 1, False
        args.writer_counts = [int(n) for n in args.writer_counts.split(",")]
        args.link_concurrency = [int(n) for n in args.link_concurrency.split(",") if n]
        try:
            args.link_points = links.parse_points(args.link_points, _size(args.link_window),
                                                   not args.link_no_slow_start)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            p.error(str(exc))
        if args.link_reads_only and args.link_no_reads:
            p.error("--link-reads-only and --link-no-reads exclude each other")
    if args.inplace:
        args.size, args.runs = args.size or 200 * MiB, 1
    args.size = args.size or (256 * MiB if args.short else 4 * GiB)
    args.files = args.files or (200 if args.short else 2000)
    args.scale_sizes = [256 * MiB, GiB] if args.short else [GiB, 16 * GiB]
    if args.scale:
        args.peers = False
    args.runs = args.runs or (1 if args.scale or args.reads else 3)
    args.peers_reads = args.reads and shutil.which("rclone") is not None
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
    if args.reads:
        return int(args.size * 1.1)
    if args.inplace:  # old + new file, two old and two new objects, rclone's cache
        return int(args.size * 7 * 1.1)
    if args.link:
        return int(args.size * (1 + 4 * len(args.link_points)) * 1.1) + 100 * MiB
    if args.writers:
        return int((args.size * (1 + 2 * sum(args.writer_counts))
                    + args.files * 300 * KiB * (1 + 2 * (len(args.writer_counts) + 2))) * 1.1)
    contenders = 9 if args.sweep else (
        2 + (args.baseline is not None) + (2 if args.peers else 0))
    return int(args.size * (1 + args.runs * contenders) * 1.1)


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """The bench's command line (``description``: its --help text); 0 if every object
    verified."""
    if argv is None and sys.argv[1:2] == ["_ceiling"]:
        ceiling_child(json.loads(sys.argv[2]))
        return 0
    if argv is None and sys.argv[1:2] == ["_read_ceiling"]:
        read_ceiling_child(json.loads(sys.argv[2]))
        return 0
    args = parse_args(argv, description)
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
    fs = filesystem_of(work) or MountEntry(0, "/", "?", "?")
    if fs.fstype in ("tmpfs", "ramfs"):
        log(f"WARNING: {work} is on {fs.fstype}: the store's data would live in RAM; "
            "use --work-dir on a real disk")
    env = environment(args.peers or args.link or args.writers)
    bench = Bench(args, work)
    result: dict[str, Any] | None = None
    try:
        import boto3
        from botocore.config import Config

        with EmbeddedStore(work / "store", bucket=BUCKET) as store:
            bench.attach(store, boto3.client(
                "s3", endpoint_url=store.endpoint_url, region_name=store.region,
                aws_access_key_id=store.access_key, aws_secret_access_key=store.secret_key,
                config=Config(retries={"max_attempts": 10, "mode": "standard"})))
            log(f"store: SeaweedFS at {store.endpoint_url} (data in {store.data_dir}, "
                f"{fs.fstype}), work dir {work}")
            bench.check.warm_up()
            if args.small_files:
                result = bench.mode_small_files()
            elif args.scale:
                result = bench.mode_scale()
            elif args.sweep:
                result = bench.mode_sweep()
            elif args.reads:
                result = mode_reads(args, work, store, bench.check.s3, bench.mounts)
            elif args.inplace:
                result = mode_inplace(args, work, store, bench.check.s3)
            elif args.writers:
                result = writers.mode_writers(bench)
            elif args.link:
                with links.LinkProxy(store, args.link_points[0]) as proxy:
                    link_bench = Bench(args, work)
                    link_bench.attach(proxy, bench.check.s3)
                    result = links.mode_link(bench, link_bench, proxy)
            else:
                result = bench.mode_file()
    except KeyboardInterrupt:
        log("bench: interrupted; mounts and store cleaned up")
        return 130
    finally:
        leftover = [m.mountpoint for m in mounts() if m.mountpoint.startswith(str(work) + "/")]
        for point in leftover:
            subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True,
                           check=False)
        still = [m.mountpoint for m in mounts() if m.mountpoint.startswith(str(work) + "/")]
        if args.keep or still:
            log(f"work dir kept: {work}" + (f" (still mounted: {still})" if still else ""))
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.writers or args.link:
        mode = writers if args.writers else links
        if args.json:
            print(json.dumps({**mode.to_json(result), "environment": env}, indent=2))
        else:
            print_header(env, args, work, fs)
            mode.print_result(result)
        return 0 if mode.verified(result) else 1
    if args.inplace:
        if args.json:
            print(json.dumps({**result, "environment": env}, indent=2))
        else:
            print_header(env, args, work, fs)
            print_inplace(result)
        return 0 if all(row["verified"] for row in result["rows"].values()) else 1
    if args.reads:
        if args.json:
            print(json.dumps(result, indent=2))
            return 0 if all(row["bytes"] == result["size"] for row in result["rows"].values()) \
                else 1
        print_header(env, args, work, fs)
        return 0 if print_reads(result) else 1
    if args.json:
        print(to_json(result, env, args, work, fs))
    else:
        print_header(env, args, work, fs)
        print_report(result, args)
    ok = all(run.verified for row in result["rows"] for run in row.runs)
    if not ok:
        log("bench: some objects did not verify")
    return 0 if ok else 1
