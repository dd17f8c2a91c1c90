"""Measurements: one ``Run`` (a timed copy and what it cost), one ``Row`` per contender (its
runs and medians), and what the rows say together (chute's ratio to each peer, the bound the
two floors set)."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from .common import FLOORS, GiB, fmt_size


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


def cpu_ms_per_file(rows: list[Row]) -> dict[str, float]:
    """--small-files: each contender's CPU per file in ms, median over its runs (the mount
    process's; curl's for the store floor). Issue 19's first target is chute's."""
    return {r.name: statistics.median(run.cpu / run.files * 1000 for run in r.runs)
            for r in rows if r.runs}


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
