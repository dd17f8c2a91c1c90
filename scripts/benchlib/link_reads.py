"""``bench.py --link``'s sequential reads: at each link point, one object read from start to
end three ways through the same modelled link (link.py), one after the other:

- **direct**: the ceiling, chute's own S3Client with ``READ_CONCURRENCY`` ranged GETs of
  ``READ_PART`` in flight (``reads.direct_read``, a child process), pointed at the link;
- **chute**: ``dd bs=1M`` through a fresh ``chute mount --allow-read`` whose endpoint is the
  link (``--read-budget`` passed on if given): the prefetcher's window of ranged GETs;
- **rclone** (if on PATH): the same ``dd`` through a fresh ``rclone mount --vfs-cache-mode
  off`` through the link.

The object (one per size: ``--size``, but at most what the link carries in the big file's
seconds, in whole ``READ_PART`` GETs, at least four) is written once per bench run by boto3
straight into the store, untimed and not through the link. Before the mounts, an untimed
read through the FUSE floor (``reads.warm_up``) so no mount pays the VM's first touch of
page-cache memory. The requests that cross the link are counted by operation from the
moment the clock starts to the moment it stops (mounting is not counted). The direct row's
CPU is the client's (in parentheses), the mounts' their mount process's.

This module knows nothing of --link's writes (links.py, which calls it, does).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from .common import BUCKET, fmt_size, log
from .data import Data
from .link import LinkModel, LinkProxy
from .reads import (
    READ_CONCURRENCY,
    READ_PART,
    chute_read_mount,
    direct_read,
    mount_read,
    put_object,
    warm_up,
)

if TYPE_CHECKING:
    from .mounts import MountProcess
    from .runs import Bench

CHUTE_TARGET = 0.85
"""Issue 15: chute's sequential read >= this x the direct ranged-GET download."""
RCLONE_TARGET = 1.3
"""Issue 15: chute's sequential read >= this x rclone mount (cache off)."""


def per_file(requests: dict[str, int], files: int) -> str:
    """``{"GetObject": 32, "HeadObject": 1, "connections": 5}``, 1 ->
    ``"GetObject 32, HeadObject 1; 5 conn"`` (most frequent first, counts per file)."""
    parts = [f"{kind} {n / files:.2f}".rstrip("0").rstrip(".")
             for kind, n in sorted(requests.items(), key=lambda kv: -kv[1])
             if kind != "connections"]
    return ", ".join(parts) + f"; {requests.get('connections', 0)} conn"


class ReadObjects:
    """The objects to read, one per size, each written once (by boto3, to the store itself)
    the first time a point asks for it, and deleted at the end."""

    def __init__(self, s3: Any, seed: int) -> None:
        self.s3, self.seed = s3, seed
        self.prefixes: dict[int, str] = {}

    def prefix(self, size: int) -> str:
        if size not in self.prefixes:
            prefix = f"link-read-{size}"
            put_object(self.s3, f"{prefix}/f", Data(self.seed, size))
            log(f"  read object of {fmt_size(size)} written by boto3 (untimed, not through "
                "the link)")
            self.prefixes[size] = prefix
        return self.prefixes[size]

    def delete(self) -> None:
        for prefix in self.prefixes.values():
            self.s3.delete_object(Bucket=BUCKET, Key=f"{prefix}/f")


def _counted(proxy: LinkProxy) -> dict[str, int]:
    return {**proxy.counts(), "connections": proxy.connections}


def _mount_read(mount: MountProcess, proxy: LinkProxy) -> dict[str, Any]:
    """``dd`` of ``f`` through ``mount`` (fresh), requests counted around the ``dd`` only."""
    requests: dict[str, int] = {}

    def around(starting: bool) -> None:
        if starting:
            proxy.reset_counts()
        else:
            requests.update(_counted(proxy))

    return {**mount_read(mount, mount.mountpoint / "f", around), "requests": requests}


def read_point(bench: Bench, link_bench: Bench, proxy: LinkProxy, size: int,
               objects: ReadObjects, mounts: list[str]) -> dict[str, Any]:
    """The reads at the link's current point: ``{"size": size, "rows": {name: row}}``, a row
    being seconds, bytes, cpu, peak_rss and requests (by operation, and connections)."""
    prefix = objects.prefix(size)
    rows: dict[str, dict[str, Any]] = {}
    bench.settle()
    proxy.reset_counts()
    rows["direct"] = direct_read(proxy, f"{prefix}/f", size, link_bench.mounts.mount_env())
    rows["direct"]["requests"] = _counted(proxy)
    warm_up(bench.mounts, bench.work, size)
    for name in mounts:
        mountpoint = bench.work / f"mnt-{bench.next_id(f'link-read-{name}')}"
        mount = (chute_read_mount(link_bench.mounts, mountpoint, prefix, bench.args.read_budget)
                 if name == "chute" else link_bench.mounts.rclone_mount(mountpoint, prefix))
        rows[name] = _mount_read(mount, proxy)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()
    for name, row in rows.items():
        log(f"  read  {name:<7} {size / row['seconds'] / 1e6:7.1f} MB/s  {row['seconds']:6.1f} s"
            f"  bytes {'all' if row['bytes'] == size else row['bytes']}  requests "
            f"{row['requests']}")
    return {"size": size, "rows": rows}


def complete(read: dict[str, Any]) -> bool:
    """Whether every read of the point got the whole object."""
    return all(row["bytes"] == read["size"] for row in read["rows"].values())


def ratios(read: dict[str, Any]) -> dict[str, float]:
    """chute/direct and chute/rclone of one point's reads (those it has)."""
    speed = {name: read["size"] / row["seconds"] for name, row in read["rows"].items()}
    return {f"chute/{other}": speed["chute"] / speed[other]
            for other in ("direct", "rclone") if "chute" in speed and other in speed}


def read_row(name: str, row: dict[str, Any], size: int, link_mbps: float | None) -> str:
    """One line of a point's read table, in the big-file rows' columns."""
    mbps = size / row["seconds"] / 1e6
    x = f"{mbps / link_mbps:6.2f}" if link_mbps else f"{'-':>6}"
    cpu = f"({row['cpu']:.1f} s)" if name == "direct" else f"{row['cpu']:.1f} s"
    missing = "" if row["bytes"] == size else f"  SHORT: {row['bytes']} bytes"
    return (f"  {name:<20}{mbps:8.1f}  {x}  {row['seconds']:7.1f}  {cpu:>9}  "
            f"{per_file(row['requests'], 1)}{missing}")


def target_line(found: dict[str, float]) -> str:
    """``chute / direct 0.91 (>= 0.85: met); chute / rclone 1.52 (>= 1.3: met)``."""
    targets = {"chute/direct": CHUTE_TARGET, "chute/rclone": RCLONE_TARGET}
    return "; ".join(f"{key.replace('/', ' / ')} {value:.2f} (>= {targets[key]:g}: "
                     f"{'met' if value >= targets[key] else 'NOT met'})"
                     for key, value in found.items())


def print_point(read: dict[str, Any], model: LinkModel) -> None:
    """The read table of one link point."""
    size = read["size"]
    link_mbps = model.rate / 1e6 if model.rate else None
    print(f"  {'read ' + fmt_size(size):<20}{'MB/s':>8}  x link  seconds  mount CPU  requests "
          f"(one sequential read; connections); direct: {READ_CONCURRENCY} x "
          f"{READ_PART >> 20} MiB GETs in flight")
    for name, row in read["rows"].items():
        print(read_row(name, row, size, link_mbps))
    print(f"  {target_line(ratios(read))}")


def link_cell(mbps: float | None, model: LinkModel) -> str:
    """A summary cell, 16 wide: MB/s and its share of the link's rate ("(x link)", blank on
    an uncapped link), or "-" for a contender that did not run at this point. Both summaries
    (this module's and links.py's) print their cells with it, so their columns line up."""
    if mbps is None:
        return f"{'-':>16}"
    x = f"({mbps / (model.rate / 1e6):.2f})" if model.rate else ""
    return f"{mbps:>9.1f} {x:>6}"


def print_summary(points: list[dict[str, Any]], mounts: list[str]) -> None:
    """One line per point: each contender's MB/s (x link), then chute's ratios."""
    names = ["direct", *mounts]
    print()
    print("summary: sequential read MB/s (x link) | chute / direct, chute / rclone")
    print(f"{'link':<22}" + "".join(f"{n:>16}" for n in names) + " |  chute/direct"
          + ("  chute/rclone" if "rclone" in mounts else ""))
    for point in points:
        model: LinkModel = point["model"]
        read = point["read"]
        line = f"{model.label:<22}"
        for name in names:
            row = read["rows"].get(name)
            line += link_cell(None if row is None else read["size"] / row["seconds"] / 1e6,
                              model)
        line += " |" + "".join(f"{value:>14.2f}" for value in ratios(read).values())
        print(line)


def to_json(read: dict[str, Any]) -> dict[str, Any]:
    size = read["size"]
    return {"size": size, "ratios": ratios(read), "rows": {
        name: {"seconds": row["seconds"], "mbps": size / row["seconds"] / 1e6,
               "bytes": row["bytes"], "complete": row["bytes"] == size,
               "cpu_s": row["cpu"], "peak_rss": row["peak_rss"], "requests": row["requests"]}
        for name, row in read["rows"].items()}}
