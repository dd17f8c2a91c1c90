"""The one reader of ``/proc/self/mountinfo``: which mounts exist, and where.

The kernel writes each mount's fields separated by spaces and escapes the four bytes that
would break that layout (space, tab, newline, backslash) as a backslash and three octal
digits (``\\040``, ``\\011``, ``\\012``, ``\\134``; ``fs/proc_namespace.c``:
``seq_escape(m, s, " \\t\\n\\\\")``). Every other byte, non-ASCII UTF-8 included, is written
as it is. So a field is unescaped by turning exactly ``\\ooo`` back into its byte and then
decoding the bytes (as the file system names them: UTF-8 with surrogateescape, like
``os.fsdecode``), never by ``unicode_escape``, which would decode ``é`` as two Latin-1
characters and so never find a mountpoint with a non-ASCII name.

Read from /proc, never by ``stat``: a stat of a FUSE mount from inside its own request loop
would wait for itself.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"

_OCTAL = re.compile(rb"\\([0-7]{3})")


def unescape(field: bytes) -> str:
    """A mountinfo field as a path: ``\\ooo`` escapes undone, then decoded like a file name."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), field))


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo (the fields chute uses)."""

    mount_id: int
    mountpoint: str
    fstype: str
    source: str
    device: str = ""
    """``major:minor`` of the mount's device (its name under /sys/class/bdi for FUSE)."""


def parse(text: bytes) -> list[MountEntry]:
    """All mounts in ``text`` (mountinfo's bytes), in the kernel's order (the last one at a
    path is on top). Lines that do not have mountinfo's shape are skipped."""
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(b" - ")
        fields = left.split(b" ")
        if not sep or len(fields) < 5 or not fields[0].isdigit():
            continue
        fstype, source = [*right.split(b" "), b"", b""][:2]
        entries.append(MountEntry(int(fields[0]), unescape(fields[4]), unescape(fstype),
                                  unescape(source), fields[2].decode("ascii", "replace")))
    return entries


def mounts() -> list[MountEntry]:
    """The mounts this process sees, read now."""
    with open(MOUNTINFO, "rb") as f:
        return parse(f.read())


def find(mountpoint: str | os.PathLike[str]) -> MountEntry | None:
    """The topmost mount at exactly ``mountpoint`` (an absolute, resolved path), or None.

    Resolve the path before mounting: resolving a mount's own path later stats it."""
    target = os.fspath(mountpoint)
    found = None
    for entry in mounts():
        if entry.mountpoint == target:
            found = entry
    return found


def is_mounted(mountpoint: str | os.PathLike[str]) -> bool:
    return find(mountpoint) is not None


def filesystem_of(path: str | os.PathLike[str]) -> MountEntry | None:
    """The mount that holds ``path`` (the longest mountpoint that is a prefix of it)."""
    real = os.path.realpath(path)
    best: MountEntry | None = None
    for entry in mounts():
        point = entry.mountpoint
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mountpoint)):
            best = entry
    return best
