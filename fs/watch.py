"""``chute status MOUNTPOINT``: one snapshot as text or JSON, or (``--watch``) the status
redrawn live in the terminal with rich.

Names come from whoever wrote into the mount, so they are shown through :func:`printable`:
a control character (an ANSI escape, a newline, a bidi override) is shown escaped
(``\x1b``), never sent to the terminal, where it could move the cursor, rewrite lines or
recolour the screen. ``--json`` is safe as it is: JSON escapes control characters.

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
import sys
import time
import unicodedata

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.padding import Padding
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from chute.uploader.sizes import format_size

from .control import MountStatus, query, query_status

_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                  "\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on shown as an escape: C0 and C1
    controls and DEL (``\x1b``, ``\n``), line and paragraph separators, bidi controls."""
    out = []
    for char in text:
        if (char in _BIDI or unicodedata.category(char) in ("Cc", "Zl", "Zp")):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


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
    name_width = min(max(len(printable(f.path)) for f in files), max(12, width // 3))
    blocks: list[RenderableType] = []
    for f in files:
        received, acked = f.bytes_received, f.bytes_acknowledged
        line = Table.grid(padding=(0, 1))
        line.add_column(width=name_width, overflow="fold")
        line.add_column(no_wrap=True)
        line.add_column(width=4, justify="right", no_wrap=True)
        line.add_column(no_wrap=True)
        line.add_row(
            Text(printable(f.path), style="bold"),
            ProgressBar(total=max(received, 1), completed=acked, width=24),
            f"{100 * acked // received if received else 0}%",
            Text(f.state.value, style="red" if f.error else "green"),
        )
        blocks.append(line)
        blocks.append(Padding(Text(
            f"received {format_size(received)} · acknowledged {format_size(acked)} · "
            f"{f.parts_in_flight} parts in flight · {_rate(f.throughput_bps)} · "
            f"{_duration(f.seconds)} elapsed · {f.retries} retries"
            + (f" · sent {format_size(f.bytes_sent)}, copied server-side "
               f"{format_size(f.bytes_copied)}, re-read {format_size(f.bytes_fetched)}"
               if f.bytes_copied or f.bytes_fetched else "")
            + (f" · {printable(f.error)}" if f.error else "")
        ), (0, 0, 0, 2)))
    return Group(*blocks)


def _totals(status: MountStatus) -> RenderableType:
    totals = status.totals
    retries = ", ".join(f"{op} {n}" for op, n in sorted(totals.retries.items()))
    return Text(
        f"since mount: {totals.files_done} files uploaded, "
        f"{format_size(totals.bytes_uploaded)} acknowledged in {totals.parts} parts, "
        f"{totals.failures} failures, retries: {retries or 'none'}"
        + (f"; in-place changes: {format_size(totals.bytes_copied)} copied server-side, "
           f"{format_size(totals.bytes_fetched)} re-read"
           if totals.bytes_copied or totals.bytes_fetched else "")
    )


def render(status: MountStatus, width: int = 100) -> RenderableType:
    where = printable(status.mountpoint)
    if status.remote:
        where += f" → {printable(status.remote)}"
    return Group(
        Text(f"chute {where}", style="bold"), _ring(status), Text(""),
        _files(status, width),
        Text(""), _totals(status), Text(NO_ETA, style="dim"),
    )


def print_once(snapshot: dict, *, as_json: bool) -> None:
    """One snapshot, as JSON or as plain lines (names through :func:`printable`)."""
    if as_json:
        print(json.dumps(snapshot, indent=2))
        return
    status = MountStatus.from_json(snapshot)
    ring = status.ring
    print(f"{printable(status.mountpoint)}: ring {ring.slots} x {format_size(ring.slice_size)}"
          f"  free {ring.free}  filling {ring.filling}  sealed {ring.sealed}  "
          f"uploading {ring.uploading}  writers waiting {ring.writers_waiting}  "
          f"blocked {ring.blocked_seconds:.1f} s")
    for f in status.files:
        print(f"  {printable(f.path)}: received {format_size(f.bytes_received)}, acknowledged "
              f"{format_size(f.bytes_acknowledged)}, {f.parts_in_flight} parts in flight, "
              f"{f.throughput_bps / 1e6:.1f} MB/s, {f.retries} retries, {f.state.value}"
              + (f"; sent {format_size(f.bytes_sent)}, copied server-side "
                 f"{format_size(f.bytes_copied)}, re-read {format_size(f.bytes_fetched)}"
                 if f.bytes_copied or f.bytes_fetched else ""))
    if not status.files:
        print("  no file is being written")
    if status.reads is not None:
        r = status.reads
        print(f"  reads: {r.readers} open, budget {format_size(r.in_use)} of "
              f"{format_size(r.budget)} in use (peak {format_size(r.peak_in_use)}), "
              f"{format_size(r.bytes_served)} served, {r.requests} GETs")


def status(mountpoint: str, *, watch: bool, interval: float, as_json: bool) -> int:
    """``chute status``: a snapshot, or ``--watch``; a mount that does not answer is one
    sentence on stderr and exit status 1."""
    try:
        if watch:
            return watch_live(mountpoint, interval, as_json=as_json)
        print_once(query(mountpoint), as_json=as_json)
    except (LookupError, OSError) as exc:
        print(f"chute: {exc}", file=sys.stderr)
        return 1
    return 0


def watch_live(mountpoint: str, interval: float, *, as_json: bool = False) -> int:
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
                    live.update(Text(f"chute: the mount at {printable(mountpoint)} has stopped"),
                                refresh=True)
                    return 0
                live.update(render(status, console.width), refresh=True)
        except KeyboardInterrupt:
            return 0
