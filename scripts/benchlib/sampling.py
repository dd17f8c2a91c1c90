"""What a process costs, read from /proc: CPU seconds, peak RSS (VmHWM) and bytes sent
towards local disk, summed over the process and its live descendants."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from .common import KiB

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (via /proc/PID/task/TID/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError):
                todo += [int(c) for c in
                         Path(f"/proc/{current}/task/{task}/children").read_text().split()]
    return found


def proc_number(path: str, name: str) -> int:
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


@dataclass
class Sample:
    cpu: float  # seconds: utime+stime (+ reaped children's) over the tree
    hwm: int  # bytes: sum of VmHWM over the tree
    write_bytes: int  # bytes: /proc/PID/io write_bytes over the tree
    system: float = 0.0  # seconds: the kernel's part of ``cpu`` (stime + cstime)


def sample(pid: int) -> Sample:
    cpu = system = 0.0
    hwm = written = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu += sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK
        system += (int(fields[12]) + int(fields[14])) / CLK_TCK
        hwm += proc_number(f"/proc/{p}/status", "VmHWM") * KiB
        written += proc_number(f"/proc/{p}/io", "write_bytes")
    return Sample(cpu, hwm, written, system)


def store_pid(store: object) -> int | None:
    """The store's process id (``weed``; a link passes it through), None if not known."""
    proc = getattr(store, "_process", None)
    return proc.pid if proc is not None else None


def process_cpu(pid: int | None) -> float:
    """CPU seconds of ``pid`` and its descendants so far (0 without one)."""
    return sample(pid).cpu if pid else 0.0
