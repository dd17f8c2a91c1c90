"""The report: the machine and versions the run had, the tables and ratios of each mode, or
the same as JSON."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from chute.fs.mountinfo import MountEntry

from .common import KiB, MiB, fmt_size
from .data import generator_name
from .results import cpu_ms_per_file, floor_bound, print_ratios, print_table, ratios
from .sampling import proc_number


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

    meminfo = proc_number("/proc/meminfo", "MemTotal") * KiB
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
                 fs: MountEntry) -> None:
    print(f"date       {env['date']}")
    print(f"machine    {env['nproc']} CPUs ({env['cpu']}), {fmt_size(env['ram_bytes'])} RAM, "
          f"Linux {env['kernel']}")
    versions = ", ".join(f"{k} {env[k]}" for k in (
        "python", "chute", "seaweedfs", "pyfuse3", "trio", "httpx", "fuse", "rclone", "juicefs")
        if k in env)
    print(f"versions   {versions}")
    warn = "  WARNING: not a real disk" if fs.fstype in ("tmpfs", "ramfs") else ""
    print(f"work dir   {work} ({fs.fstype} on {fs.source}){warn}")
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
        print("CPU per file  " + "  ".join(f"{name} {ms:.2f} ms" for name, ms in
                                           cpu_ms_per_file(result["rows"]).items())
              + "  (the mount's, or curl's for the store floor; median)")
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
            work: Path, fs: MountEntry) -> str:
    out = {k: v for k, v in result.items() if k not in ("rows", "cells")}
    out["rows"] = [row.summary() for row in result["rows"]]
    out["ratios"] = ratios(result["rows"])
    out["floors"] = floor_bound(result["rows"])
    if result["mode"] == "small-files":
        out["cpu_ms_per_file"] = cpu_ms_per_file(result["rows"])
    out["environment"] = env
    out["work_dir"] = {"path": str(work), "fstype": fs.fstype, "source": fs.source}
    out["settings"] = {"slice_size": args.slice_size, "ring_size": args.ring_size,
                       "upload_concurrency": args.upload_concurrency, "runs": args.runs,
                       "generator": generator_name(), "seed": args.seed,
                       "verify": "sha256" if args.verify_full else "etag"}
    return json.dumps(out, indent=2)
