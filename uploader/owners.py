"""Who owns a marker, and whether that owner still lives: the one liveness rule.

Every marker chute leaves in the bucket for work that a crash could interrupt (multipart
uploads, leftovers.py; directory moves, moves.py) names its owner, encoded by :class:`Owner`
(``v2 boot=B pidns=N pid=P start=S machine=M host=H``, see leftovers.py). :func:`verdict` is
the rule that decides whether that owner is dead; it is written once, here, and every judge of
a marker uses it.

Invariant: in doubt, the owner is alive. Only an owner that is provably gone (its process ended
or its pid was recycled on this boot and PID namespace, or its machine rebooted since) or whose
marker has not been renewed for ``STALE_AFTER`` is dead; an unknown age counts as fresh.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from urllib.parse import quote, unquote

STALE_AFTER = 3600.0
"""A marker whose owner cannot be checked is dead once not rewritten for this long."""

_OWNER_V2 = re.compile(
    r"v2 boot=([0-9a-f-]{0,64}) pidns=([0-9]{0,20}) pid=([0-9]{1,10}) start=([0-9]{1,20}) "
    r"machine=([0-9a-f]{0,64}) host=([!-~]{0,800})")
OWNER_V1 = re.compile(r"[!-~]{1,800}:[0-9]{1,10}")


@dataclass(frozen=True)
class Owner:
    """Who made a marker: enough to tell, on the same boot and PID namespace, if it lives."""

    boot: str
    pidns: str
    pid: int
    start: int
    machine: str
    host: str

    def encode(self) -> str:
        return (f"v2 boot={self.boot} pidns={self.pidns} pid={self.pid} start={self.start} "
                f"machine={self.machine} host={quote(self.host, safe='')}")

    @classmethod
    def decode(cls, text: str) -> Owner | None:
        """The owner, or None if ``text`` is not the v2 format (see ``_parse_owner``)."""
        match = _OWNER_V2.fullmatch(text)
        if match is None:
            return None
        boot, pidns, pid, start, machine, host = match.groups()
        return cls(boot, pidns, int(pid), int(start), machine, unquote(host))


LEGACY = "legacy"
"""An owner of the older ``host:pid`` format: judged by the marker's age alone."""


def this_process() -> Owner:
    """The owner this process writes (read from /proc; empty fields where unreadable)."""
    pid = os.getpid()
    if _cached is not None and _cached.pid == pid:
        return _cached
    return _remember(Owner(
        boot=_read_text("/proc/sys/kernel/random/boot_id").lower(),
        pidns=_pid_namespace(),
        pid=pid,
        start=process_start(pid) or 0,
        machine=_read_text("/etc/machine-id").lower(),
        host=socket.gethostname(),
    ))


_cached: Owner | None = None


def _remember(owner: Owner) -> Owner:
    global _cached
    _cached = owner
    return owner


def process_start(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), None if no process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat.rsplit(b")", 1)[1].split()[19])  # fields after "(comm)" start at 3
    except (OSError, ValueError, IndexError):
        return None


def verdict(owner: Owner | str, here: Owner, age: float | None) -> tuple[bool, str]:
    """(dead, why) for a marker made by ``owner`` and last rewritten ``age`` s ago (None:
    unknown), judged by ``here``. The rule is stated in leftovers.py's docstring."""
    if isinstance(owner, Owner) and owner.boot and owner.boot == here.boot:
        if owner.pidns and owner.pidns == here.pidns:
            start = process_start(owner.pid)
            if start is None:
                return True, f"process {owner.pid} has ended"
            if start != owner.start:
                return True, f"pid {owner.pid} now belongs to another process"
            return False, f"process {owner.pid} is running"
    elif (isinstance(owner, Owner) and owner.boot and here.boot and owner.machine
          and owner.machine == here.machine and owner.host == here.host):
        return True, "it was made before this machine last booted"
    if age is None:
        return False, "its owner cannot be checked and its age is unknown"
    if age > STALE_AFTER:
        return True, f"its owner cannot be checked and it was not renewed for {age / 60:.0f} min"
    return False, f"its owner cannot be checked and it was renewed {age / 60:.0f} min ago"


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read(200).strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _pid_namespace() -> str:
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return ""
    inode = link.partition("[")[2].rstrip("]")
    return inode if inode.isdigit() else ""
