"""``chute status MOUNTPOINT --watch``: the status, redrawn live in the terminal with rich.

Each file gets a bar of bytes *acknowledged by the store* over bytes *received from the
writer*: how much of what was written has landed. There is no ETA and no bar towards the
file's size, because there is no size to go towards: the mount sees a stream, and its length
is known only at the last close. So the screen shows throughput and elapsed time instead, and
says why in its footer.

It polls the mount's status socket (the same one ``--json`` reads) and reads the answer as a
:class:`~chute.fs.control.MountStatus` record, so watching costs the mount one small JSON
answer per refresh. The redraw is driven from this loop (``auto_refresh`` off):
rich's auto refresh would start a thread.
"""

from __future__ import annotations

import json
import time

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.padding import Padding
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from chute.uploader.sizes import format_size

from .control import MountStatus, query, query_status

NO_ETA = ("no ETA: a file written into the mount is a stream whose size is known only at its "
          "last close; the bar is acknowledged / received")


def _rate(bps: float) -> str:
    return f"{bps / 1e6:.1f} MB/s"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _ring(status: MountStatus) -> RenderableType:
    ring = status.ring
    busy = ring.slots - ring.free
    line = Table.grid(padding=(0, 1))
    line.add_row(
        Text("ring", style="bold"),
        ProgressBar(total=ring.slots, completed=busy, width=20),
        Text(f"{busy}/{ring.slots} slots of {format_size(ring.slice_size)} in use: "
             f"filling {ring.filling}, retained {ring.retained}, sealed {ring.sealed}, "
             f"uploading {ring.uploading}, free {ring.free}"),
    )
    line.add_row(
        Text("writers", style="bold"), Text(""),
        Text(f"{ring.writers_waiting} waiting for a slot now, blocked "
             f"{ring.blocked_seconds:.1f} s in total"),
    )
    return line


def _files(status: MountStatus, width: int) -> RenderableType:
    """Two lines per file, so a narrow terminal loses nothing: name, bar, percent and state;
    then the numbers, wrapped if need be. The name column is as wide as the longest name up
    to a third of the screen; longer names fold onto more lines, next to an intact bar."""
    files = sorted(status.files, key=lambda f: f.path)
    if not files:
        return Text("no file is being written", style="dim")
    name_width = min(max(len(f.path) for f in files), max(12, width // 3))
    blocks: list[RenderableType] = []
    for f in files:
        received, acked = f.bytes_received, f.bytes_acknowledged
        line = Table.grid(padding=(0, 1))
        line.add_column(width=name_width, overflow="fold")
        line.add_column(no_wrap=True)
        line.add_column(width=4, justify="right", no_wrap=True)
        line.add_column(no_wrap=True)
        line.add_row(
            Text(f.path, style="bold"),
            ProgressBar(total=max(received, 1), completed=acked, width=24),
            f"{100 * acked // received if received else 0}%",
            Text(f.state.value, style="red" if f.error else "green"),
        )
        blocks.append(line)
        blocks.append(Padding(Text(
            f"received {format_size(received)} · acknowledged {format_size(acked)} · "
            f"{f.parts_in_flight} parts in flight · {_rate(f.throughput_bps)} · "
            f"{_duration(f.seconds)} elapsed · {f.retries} retries"
            + (f" · {f.error}" if f.error else "")
        ), (0, 0, 0, 2)))
    return Group(*blocks)


def _totals(status: MountStatus) -> RenderableType:
    totals = status.totals
    retries = ", ".join(f"{op} {n}" for op, n in sorted(totals.retries.items()))
    return Text(
        f"since mount: {totals.files_done} files uploaded, "
        f"{format_size(totals.bytes_uploaded)} acknowledged in {totals.parts} parts, "
        f"{totals.failures} failures, retries: {retries or 'none'}"
    )


def render(status: MountStatus, width: int = 100) -> RenderableType:
    where = status.mountpoint
    if status.remote:
        where += f" → {status.remote}"
    return Group(
        Text(f"chute {where}", style="bold"), _ring(status), Text(""),
        _files(status, width),
        Text(""), _totals(status), Text(NO_ETA, style="dim"),
    )


def watch(mountpoint: str, interval: float, *, as_json: bool = False) -> int:
    """Redraw until Ctrl-C or until the mount goes away; JSON lines with ``as_json``."""
    if as_json:
        snapshot = query(mountpoint)  # LookupError/OSError: the caller reports it
        try:
            while True:
                print(json.dumps(snapshot), flush=True)
                time.sleep(interval)
                snapshot = query(mountpoint)
        except (LookupError, OSError):
            return 0
        except KeyboardInterrupt:
            return 0
    status = query_status(mountpoint)  # LookupError/OSError: the caller reports it
    console = Console(highlight=False)
    with Live(render(status, console.width), console=console, auto_refresh=False,
              redirect_stdout=False, redirect_stderr=False) as live:
        try:
            while True:
                time.sleep(interval)
                try:
                    status = query_status(mountpoint)
                except (LookupError, OSError):
                    live.update(Text(f"chute: the mount at {mountpoint} has stopped"),
                                refresh=True)
                    return 0
                live.update(render(status, console.width), refresh=True)
        except KeyboardInterrupt:
            return 0
