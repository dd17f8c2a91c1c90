"""How much the kernel asks for at once when a file of the mount is read sequentially.

A FUSE mount gets the kernel's default readahead of 128 KiB, so a sequential reader reaches
chute as 8,192 READ requests per GiB, each a pass through pyfuse3 and trio: with reads on, the
mount's CPU per GiB, not the store, bounded a sequential read (docs/performance.md). The
kernel takes up to 1 MiB per FUSE request (max_pages 256), and the readahead of a mount is
its backing device's ``/sys/class/bdi/MAJOR:MINOR/read_ahead_kb``, which root may raise.
So a mount with ``--allow-read`` raises it once it is mounted. Where it cannot (not root, no
sysfs), reads still work, in 128 KiB requests; one line says so.
"""

from __future__ import annotations

import logging

from . import mountinfo

log = logging.getLogger(__name__)

READ_AHEAD_KIB = 1024
"""The largest FUSE request the kernel sends (256 pages), so each READ carries as much as
one request can."""


def widen(mountpoint: str, kib: int = READ_AHEAD_KIB) -> bool:
    """Set the readahead of the mount at ``mountpoint`` (resolved) to ``kib``; False, logged,
    if that is not possible here."""
    entry = mountinfo.find(mountpoint)
    device = entry.device if entry is not None else ""
    major, _, minor = device.partition(":")
    if not (major.isdigit() and minor.isdigit()):
        log.info("readahead left at the kernel's default: the mount's device is not known")
        return False
    path = f"/sys/class/bdi/{major}:{minor}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(f"{kib}\n")
    except OSError as exc:
        log.info("readahead left at the kernel's default (%s: %s): sequential reads go in "
                 "128 KiB requests", path, exc.strerror)
        return False
    log.debug("readahead of the mount set to %d KiB", kib)
    return True
