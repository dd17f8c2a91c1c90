"""The bench's runs and modes: each run mounts one contender fresh, copies while sampling the
mount's and the store's costs, unmounts, verifies what landed, and empties its prefix; each
mode (one big file, small files, scale, sweep) is a series of runs giving rows."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .common import BUCKET, FLOORS, KiB, MiB, fmt_size, log
from .contenders import Mounts, contenders
from .data import Data, generator_name, make_tree, pipe_into_dd, sha256_file
from .results import Row, Run
from .sampling import process_cpu, sample, store_pid
from .verify import BucketCheck, check_tree_in_mount

ENTRY = Path(__file__).resolve().parent.parent / "bench.py"
"""The command line the ceiling's child process runs (``bench.py _ceiling SPEC``)."""


class Bench:
    """One bench run's state: its work directory, the store and the helpers bound to it."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.store: Any = None
        self.check: BucketCheck = None  # type: ignore[assignment]  # set by attach()
        self.mounts: Mounts = None  # type: ignore[assignment]
        (work / "logs").mkdir(parents=True, exist_ok=True)
        self.serial = 0

    def attach(self, store: Any, s3: Any) -> None:
        """The store has started: bind the mounts and the bucket checks to it."""
        self.store = store
        self.check = BucketCheck(s3, self.args.verify_full)
        self.mounts = Mounts(self.args, self.work, store)

    def report_bwlimit(self, run: Run) -> None:
        """--bwlimit: the chute copy's achieved rate against the limit (a fixed rate only)."""
        from chute.uploader.bandwidth import parse_bwlimit

        limit = parse_bwlimit(self.args.bwlimit).rate_at(0)
        achieved = run.nbytes / run.seconds
        if limit is None:
            log(f"bwlimit {self.args.bwlimit}: achieved {fmt_size(achieved)}/s (no limit now)")
            return
        within = "within" if abs(achieved / limit - 1) <= 0.1 else "OUTSIDE"
        log(f"bwlimit {self.args.bwlimit}: achieved {fmt_size(achieved)}/s = "
            f"{achieved / limit:.3f} x the limit ({within} 10%)")

    def next_id(self, name: str) -> str:
        self.serial += 1
        return f"{name}-{self.serial:03d}"

    def store_cpu(self) -> float:
        return process_cpu(store_pid(self.store))

    def settle(self) -> None:
        """Before a timed region: no dirty pages of the previous one left to write back."""
        os.sync()

    # -- contenders -----------------------------------------------------------------------

    def ceiling_run(self, data: Data) -> Run:
        a = self.args
        key = f"{self.next_id('ceiling')}/f"
        spec = {"path": str(data.path), "endpoint": self.store.endpoint_url, "bucket": BUCKET,
                "region": self.store.region, "key": key, "part_size": a.slice_size,
                "concurrency": a.upload_concurrency, "ring_size": a.ring_size}
        self.settle()
        store_before = self.store_cpu()
        result = subprocess.run([sys.executable, str(ENTRY), "_ceiling", json.dumps(spec)],
                                env=self.mounts.mount_env(), capture_output=True, text=True,
                                check=False, timeout=3600)
        store_after = self.store_cpu()
        if result.returncode != 0:
            raise RuntimeError(f"ceiling upload failed:\n{result.stderr[-3000:]}")
        out = json.loads(result.stdout.strip().splitlines()[-1])
        ok, how = self.check.check_object(key, data, a.slice_size)
        self.check.delete_prefix(key.rsplit("/", 1)[0] + "/")
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
        mount = self.mounts.of(contender, mountpoint, prefix, slice_size,
                               ring_size or a.ring_size, concurrency or a.upload_concurrency)
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
            stored = sum(o["Size"] for o in self.check.keys_under(f"{prefix}/chunks/"))
            if not a.verify_full:
                ok, how = seen == data.size and stored == data.size, "size+blocks"
            if stored != data.size or seen != data.size:
                log(f"  juicefs: size in mount {seen}, block bytes in bucket {stored}")
                ok = False
        else:
            ok, how = self.check.check_object(f"{prefix}/f", data, slice_size)
        self.check.delete_prefix(f"{prefix}/")
        with contextlib.suppress(OSError):
            mountpoint.rmdir()
        return Run(seconds, data.size, after.cpu - before.cpu, after.hwm,
                   after.write_bytes - before.write_bytes, store_after - store_before, ok, how)

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
        names, skipped = contenders(self.args)
        rows = {name: Row(name) for name in ["ceiling", *names]}
        for i in range(a.runs):
            for name in rows:
                run = self.ceiling_run(data) if name == "ceiling" else self.cp_run(name, data)
                rows[name].runs.append(run)
                log(f"[run {i + 1}/{a.runs}] {name:<8} {run.mbps:7.1f} MB/s  "
                    f"{run.seconds:6.1f} s  CPU {run.cpu_per_gib:5.2f} s/GiB  peak RSS "
                    f"{fmt_size(run.peak_rss)}  disk {fmt_size(run.disk_writes)}  "
                    f"verified {'yes' if run.verified else 'NO'} ({run.how})")
                if name == "chute" and a.bwlimit:
                    self.report_bwlimit(run)
        all_rows = [*rows.values(), *skipped]
        return {"mode": "file", "size": a.size, "runs": a.runs, "rows": all_rows}

    def mode_small_files(self) -> dict[str, Any]:
        a = self.args
        tree = self.work / "tree-src" / "tree"
        expected = make_tree(tree, a.files, a.seed)
        total = sum(size for size, _ in expected.values())
        log(f"generated {a.files} files, {fmt_size(total)} in {tree}")
        names, skipped = contenders(self.args)
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
        mount = self.mounts.of(contender, mountpoint, run_id, a.slice_size, a.ring_size,
                               a.upload_concurrency)
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
            ok, how = self.check.check_tree_in_bucket(f"{run_id}/tree/", expected)
        self.check.delete_prefix(f"{run_id}/")
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
        ok, how = self.check.check_tree_in_bucket(f"{run_id}/tree/", expected)
        self.check.delete_prefix(f"{run_id}/")
        config.unlink()
        total = sum(size for size, _ in expected.values())
        return Run(seconds, total, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * KiB, 0,
                   store_after - store_before, ok, how, files=len(expected))

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
        with self.mounts.chute_mount(mountpoint, run_id, a.slice_size, a.ring_size,
                                     a.upload_concurrency) as mount:
            self.settle()
            store_before, before = self.store_cpu(), sample(mount.pid)
            started = time.monotonic()
            pipe_into_dd(data, target)
            seconds = time.monotonic() - started
            after, store_after = sample(mount.pid), self.store_cpu()
        ok, how = self.check.check_object(f"{run_id}/f", data, a.slice_size)
        if ok and not a.verify_full:  # also chute's own whole-file hash, tagged on the object
            tags = self.check.s3.get_object_tagging(Bucket=BUCKET, Key=f"{run_id}/f")["TagSet"]
            tag = {t["Key"]: t["Value"] for t in tags}.get("chute-xxh3-128")
            ok, how = tag == data.xxh3, "etag+xxh3 tag"
        self.check.delete_prefix(f"{run_id}/")
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
