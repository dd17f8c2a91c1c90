"""``bench.py --link``: every contender through the same modelled network link (link.py), in
one run, at each link point (default: RTT 2 ms / 1 Gbit/s, 40 ms / 200 Mbit/s,
100 ms / 50 Mbit/s, and 100 ms with no cap, where the bandwidth-delay product is large).

At each point, with the link's model set before the first connection of each run:

- **a big file** (``--size``, default 256 MiB, but at most what the link carries in
  ``BIG_SECONDS``, in whole slices, at least four): the direct multipart upload with chute's
  own client (the ceiling), ``cp`` into chute and into rclone mount (if installed); MB/s
  against the link's rate;
- **small files** (``--files``, default 200, 4-64 KiB each, seeded): ``cp -r`` into chute and
  rclone mount, and one ``curl`` PUTting them one after the other over one connection
  (without waiting for ``100 Continue``); files/s against the one-round-trip floor: one round
  trip per file plus every byte at the rate (what a mount whose close waits for one request
  per file cannot beat). The table says how many directories ``cp -r`` makes (the tree's
  own and its subdirectories), and, for information, the floor with a round trip for each
  of them too (a mount whose mkdir returns once the directory's marker is stored pays
  it). Not repeated at a point without a rate cap whose round trip an earlier point has
  (100 ms / no cap: the same round trips as 100 ms / 50 Mbit/s);

- **a sequential read** of one object (link_reads.py; sized like the big file, in whole
  8 MiB GETs): the direct ranged-GET download (the ceiling), ``dd`` through ``chute mount
  --allow-read`` and through rclone mount; ``--link-reads-only`` runs only these,
  ``--link-no-reads`` skips them;

and for every run, the S3 requests that crossed the link by operation (per file), counted by
the link itself from the moment the clock starts to the moment it stops (mounting and the
bench's own checks, made directly against the store, are not counted).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from . import link_reads
from .common import BUCKET, KiB, fmt_size, log
from .data import Data, stream_chunks
from .link import LinkModel, LinkProxy
from .link_reads import link_cell, per_file
from .reads import READ_PART
from .results import Run
from .writers import mounted_run, q

if TYPE_CHECKING:
    from .runs import Bench

BIG_SECONDS = 20
"""The big file at a capped point is at most this many seconds of the link's rate."""
DEFAULT_POINTS = "2ms/1Gbit,40ms/200Mbit,100ms/50Mbit,100ms/none"
SMALL_RANGE = (4 * KiB, 64 * KiB)


def parse_points(text: str, window: int, slow_start: bool = True) -> list[LinkModel]:
    """``"40ms/200Mbit,100ms/none"`` -> link models (rates in Kbit, Mbit or Gbit per s)."""
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    points = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)ms/(?:(none)|(\d+(?:\.\d+)?)([kmg]bit))\s*",
                             item.lower())
        if match is None:
            raise ValueError(f"link point {item!r}: write RTTms/RATE, e.g. 40ms/200Mbit or "
                             "100ms/none")
        rate = None if match.group(2) else float(match.group(3)) * units[match.group(4)] / 8
        points.append(LinkModel(float(match.group(1)) / 1000, rate, window, slow_start))
    return points


def make_small_tree(root: Path, count: int, seed: int) -> dict[str, tuple[int, str]]:
    """``count`` files of 4-64 KiB (log-uniform, seeded) in 10 directories:
    {relative path: (size, md5 hex)}."""
    rng = random.Random(seed)
    low, high = SMALL_RANGE
    sizes = [int(math.exp(rng.uniform(math.log(low), math.log(high)))) for _ in range(count)]
    blob = b"".join(stream_chunks(seed + 7, sum(sizes)))
    expected, pos = {}, 0
    for i, size in enumerate(sizes):
        body, pos = blob[pos:pos + size], pos + size
        rel = f"d{i % 10:02d}/f{i:04d}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)
        expected[rel] = (size, hashlib.md5(body).hexdigest())
    return expected


def tree_dirs(expected: dict[str, tuple[int, str]]) -> int:
    """The directories ``cp -r`` makes for the tree of ``expected`` (relative paths): the
    tree's own and every directory above a file."""
    parts = [rel.split("/")[:-1] for rel in expected]
    return 1 + len({"/".join(p[:n]) for p in parts for n in range(1, len(p) + 1)}) \
        if expected else 0


def small_floor_lines(model: LinkModel, files: int, tree_bytes: int, dirs: int) -> list[str]:
    """The small-files table's header and its floor lines: the one-round-trip floor (what
    "x floor" is against) and, for information, that floor plus a round trip per
    directory."""
    floor_s = model.floor_seconds(files, tree_bytes)
    dirs_s = model.floor_seconds(files, tree_bytes, dirs)
    return [f"  small files {files} in {dirs} dirs ({fmt_size(tree_bytes)})  files/s  x floor  "
            "seconds  mount CPU  requests per file",
            f"  {'floor (1 RTT each)':<20}{files / floor_s:8.1f}  {1:6.2f}  {floor_s:7.1f}",
            f"  {'(+1 RTT per dir)':<20}{files / dirs_s:8.1f}  {floor_s / dirs_s:6.2f}  "
            f"{dirs_s:7.1f}  information: a durable mkdir is one PUT; x floor is against "
            "the line above"]


def mode_link(bench: Bench, link_bench: Bench, proxy: LinkProxy) -> dict[str, Any]:
    """Every point of ``--link-points``; ``link_bench`` is a Bench whose store is ``proxy``."""
    a = bench.args
    sources: dict[int, Data] = {}
    source = bench.work / "link-tree"
    expected = {} if a.link_reads_only else make_small_tree(source / "tree", a.files, a.seed)
    tree_bytes = sum(size for size, _ in expected.values())
    if expected:
        log(f"generated {a.files} files, {fmt_size(tree_bytes)} in {source / 'tree'}")
    mounts = ["chute"] + (["rclone"] if shutil.which("rclone") else [])
    points = []
    objects = link_reads.ReadObjects(bench.check.s3, a.seed)

    for model in a.link_points:
        proxy.set_model(model)
        log(f"link {model.label} (window {fmt_size(model.window)})")
        size = big_size(model, a.size, a.slice_size)
        point: dict[str, Any] = {"model": model, "size": size, "big": {}, "small": {}}
        if not a.link_no_reads:
            point["read"] = link_reads.read_point(bench, link_bench, proxy,
                                                  big_size(model, a.size, READ_PART),
                                                  objects, mounts)
        if a.link_reads_only:
            points.append(point)
            continue
        if size not in sources:
            sources[size] = Data(a.seed, size)
            sources[size].write_file(bench.work / f"link-{size}.bin", {a.slice_size},
                                     sha=a.verify_full)
        data = sources[size]
        small = not a.link_big_only and (model.rate is not None or all(
            p.rtt != model.rtt for p in a.link_points[:a.link_points.index(model)]))
        counted: dict[str, int] = {}

        def around(starting: bool, counted: dict[str, int] = counted) -> None:
            if starting:
                proxy.reset_counts()
            else:
                counted.clear()
                counted.update(proxy.counts(), connections=proxy.connections)

        def record(part: str, name: str, run: Run, point: dict[str, Any] = point,
                   counted: dict[str, int] = counted) -> None:
            point[part][name] = {"run": run, "requests": dict(counted)}
            rate = f"{run.files / run.seconds:7.1f} files/s" if part == "small" else \
                f"{run.mbps:7.1f} MB/s"
            log(f"  {part:<5} {name:<7} {rate}  {run.seconds:6.1f} s  verified "
                f"{'yes' if run.verified else 'NO'} ({run.how})  requests {dict(counted)}")

        around(True)
        run = link_bench.ceiling_run(data)
        around(False)
        record("big", "direct", run)
        for name in mounts:
            run = mounted_run(
                link_bench, name, "link-big",
                lambda mnt, data=data: [f"cp {q(data.path)} {q(mnt / 'f')}"], data.size, 1,
                lambda run_id, data=data: bench.check.check_object(f"{run_id}/f", data,
                                                                   a.slice_size),
                around=around)
            record("big", name, run)
        for conc in a.link_concurrency:
            run = mounted_run(
                link_bench, "chute", f"link-big-c{conc}",
                lambda mnt, data=data: [f"cp {q(data.path)} {q(mnt / 'f')}"], data.size, 1,
                lambda run_id, data=data: bench.check.check_object(f"{run_id}/f", data,
                                                                   a.slice_size),
                around=around, concurrency=conc)
            record("big", f"chute c{conc}", run)
        if not small:
            points.append(point)
            continue

        around(True)
        run = curl_run(link_bench, source / "tree", expected)
        around(False)
        record("small", "curl", run)
        for name in mounts:
            run = mounted_run(
                link_bench, name, "link-small",
                lambda mnt: [f"cp -r {q(source / 'tree')} {q(mnt)}/"], tree_bytes,
                len(expected),
                lambda run_id: bench.check.check_tree_in_bucket(f"{run_id}/tree/", expected),
                around=around)
            record("small", name, run)
        points.append(point)
    objects.delete()
    log(f"one request line of each kind seen: {proxy.examples}")
    return {"mode": "link", "size": a.size, "files": a.files, "tree_bytes": tree_bytes,
            "tree_dirs": tree_dirs(expected), "points": points, "mounts": mounts}


def big_size(model: LinkModel, size: int, slice_size: int) -> int:
    """``size``, or what the link carries in BIG_SECONDS if less (whole slices, >= 4)."""
    if model.rate is None:
        return size
    fits = int(model.rate * BIG_SECONDS) // slice_size * slice_size
    return min(size, max(fits, 4 * slice_size))


def curl_run(bench: Bench, tree: Path, expected: dict[str, tuple[int, str]]) -> Run:
    """The practical one-round-trip floor: every file PUT by one ``curl`` (SigV4), one after
    the other over one kept-alive connection, each body sent without waiting for the
    ``100 Continue`` curl asks for (``--expect100-timeout``; waiting costs a round trip
    more per file, and ``-H Expect:`` breaks curl 7.88's SigV4). No FUSE, no Python."""
    store = bench.store
    run_id = bench.next_id("link-curl")
    config = bench.work / f"{run_id}.curl"
    with open(config, "w") as f:
        for rel in sorted(expected):
            f.write(f'upload-file = "{tree / rel}"\n'
                    f'url = "{store.endpoint_url}/{BUCKET}/{run_id}/tree/{quote(rel)}"\n')
    argv = ["curl", "-sS", "--fail", "--expect100-timeout", "0.001", "--aws-sigv4",
            f"aws:amz:{store.region}:s3", "--user", f"{store.access_key}:{store.secret_key}",
            "-K", str(config), "-o", "/dev/null"]
    bench.settle()
    store_before, started = bench.store_cpu(), time.monotonic()
    done = subprocess.run(argv, check=False)
    seconds = time.monotonic() - started
    store_after = bench.store_cpu()
    ok, how = bench.check.check_tree_in_bucket(f"{run_id}/tree/", expected)
    if done.returncode != 0:
        ok, how = False, f"curl exited with {done.returncode}"
    bench.check.delete_prefix(f"{run_id}/")
    config.unlink()
    return Run(seconds, sum(size for size, _ in expected.values()), 0.0, 0, 0,
               store_after - store_before, ok, how, files=len(expected))


def verified(result: dict[str, Any]) -> bool:
    return all(c["run"].verified for point in result["points"]
               for part in ("big", "small") for c in point[part].values()) and all(
        link_reads.complete(point["read"]) for point in result["points"] if "read" in point)


def print_result(result: dict[str, Any]) -> None:
    """One table per link point, then the summaries."""
    files = result["files"]
    for point in result["points"]:
        size = point["size"]
        model: LinkModel = point["model"]
        link_mbps = model.rate / 1e6 if model.rate else None
        print()
        print(f"link {model.label}: {model.rtt / 2 * 1000:g} ms each way, window "
              f"{fmt_size(model.window)} per connection, slow start "
              f"{'on' if model.slow_start else 'off'}")
        if "read" in point:
            link_reads.print_point(point["read"], model)
        if not point["big"]:
            continue
        print(f"  big file {fmt_size(size)}      MB/s  x link  seconds  mount CPU  requests "
              "(per file; connections)")
        for name, cell in point["big"].items():
            run: Run = cell["run"]
            x = f"{run.mbps / link_mbps:6.2f}" if link_mbps else f"{'-':>6}"
            cpu = "-" if name == "direct" else f"{run.cpu:.1f} s"
            print(f"  {name:<20}{run.mbps:8.1f}  {x}  {run.seconds:7.1f}  {cpu:>9}  "
                  f"{per_file(cell['requests'], 1)}{'' if run.verified else '  NOT VERIFIED'}")
        if not point["small"]:
            print("  small files: not repeated (the same round trips as an earlier point)")
            continue
        floor = files / model.floor_seconds(files, result["tree_bytes"])
        for line in small_floor_lines(model, files, result["tree_bytes"],
                                      result.get("tree_dirs", 0)):
            print(line)
        for name, cell in point["small"].items():
            run = cell["run"]
            fps = run.files / run.seconds
            cpu = "-" if name == "curl" else f"{run.cpu:.1f} s"
            print(f"  {name:<20}{fps:8.1f}  {fps / floor:6.2f}  {run.seconds:7.1f}  {cpu:>9}  "
                  f"{per_file(cell['requests'], files)}"
                  f"{'' if run.verified else '  NOT VERIFIED'}")
    if any("read" in point for point in result["points"]):
        link_reads.print_summary(result["points"], result["mounts"])
    if not any(point["big"] for point in result["points"]):
        return
    print()
    print("summary: big MB/s (x link) | small files/s (x floor)")
    names = ["direct", *result["mounts"]]
    print(f"{'link':<22}" + "".join(f"{n:>16}" for n in names) + " |"
          + "".join(f"{n:>16}" for n in ["curl", *result["mounts"]]))
    for point in result["points"]:
        model = point["model"]
        floor = files / model.floor_seconds(files, result["tree_bytes"])
        line = f"{model.label:<22}"
        for name in names:
            cell = point["big"].get(name)
            line += link_cell(None if cell is None else cell["run"].mbps, model)
        line += " |"
        for name in ["curl", *result["mounts"]] if point["small"] else []:
            cell = point["small"].get(name)
            if cell is None:
                line += f"{'-':>16}"
                continue
            fps = cell["run"].files / cell["run"].seconds
            line += f"{fps:>9.1f} ({fps / floor:.2f})"
        print(line)


def to_json(result: dict[str, Any]) -> dict[str, Any]:
    points = []
    for point in result["points"]:
        model: LinkModel = point["model"]
        floor = result["files"] / model.floor_seconds(result["files"], result["tree_bytes"])
        with_dirs = result["files"] / model.floor_seconds(
            result["files"], result["tree_bytes"], result.get("tree_dirs", 0))
        entry: dict[str, Any] = {"rtt_s": model.rtt, "rate_bytes_per_s": model.rate,
                                 "window": model.window, "slow_start": model.slow_start,
                                 "size": point["size"], "floor_files_per_s": floor,
                                 "floor_with_dirs_files_per_s": with_dirs}
        for part in ("big", "small"):
            entry[part] = {name: {"seconds": c["run"].seconds, "mbps": c["run"].mbps,
                                  "files_per_s": c["run"].files / c["run"].seconds,
                                  "mount_cpu_s": c["run"].cpu, "verified": c["run"].verified,
                                  "requests": c["requests"]}
                           for name, c in point[part].items()}
        if "read" in point:
            entry["read"] = link_reads.to_json(point["read"])
        points.append(entry)
    return {"mode": "link", "size": result["size"], "files": result["files"],
            "tree_bytes": result["tree_bytes"], "tree_dirs": result.get("tree_dirs", 0),
            "points": points}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """--link's options (the mode itself is in cli.py's group of modes)."""
    p.add_argument("--link-points", default=DEFAULT_POINTS, metavar="LIST",
                   help=f"--link: RTTms/RATE,... (default {DEFAULT_POINTS})")
    p.add_argument("--link-window", default="4MiB", metavar="SIZE",
                   help="--link: the most one TCP connection has in flight (default 4MiB, "
                        "Linux's default tcp_wmem maximum)")
    p.add_argument("--link-concurrency", default="", metavar="LIST",
                   help="--link: the big file also into chute mounts with these upload "
                        "concurrencies (rows 'chute cN'), e.g. 4,16")
    p.add_argument("--link-big-only", action="store_true",
                   help="--link: the big file only (no small files)")
    p.add_argument("--link-reads-only", action="store_true",
                   help="--link: the sequential reads only (no writes)")
    p.add_argument("--link-no-reads", action="store_true",
                   help="--link: no sequential reads (writes only)")
    p.add_argument("--link-no-slow-start", action="store_true",
                   help="--link: every connection's window open at once (no slow start, "
                        "also none after idle)")

