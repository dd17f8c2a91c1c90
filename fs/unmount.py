"""``chute unmount MOUNTPOINT``: stop a mount without cutting off the files being written.

``fusermount3 -u`` on its own refuses while a file is open (EBUSY), and a signal to the mount
aborts whatever is open. Neither is what stopping a service wants, which is: let the writers
finish, then unmount. So this asks the mount over its status socket which files are still
open (being written or being completed), waits until there are none, and only then unmounts:
``fusermount3 -u``, or as root ``umount``, which also drops the record mount(8) keeps in
/run/mount/utab for a ``mount -t fuse.chute`` mount (fusermount3 leaves it stale). A file
opened in the gap makes the unmount answer EBUSY, and the wait simply goes on.

When the wait runs out (``--timeout``), or at once with ``--abandon``, the files still open
are named, one line each; the mount is detached lazily (``umount -l``, which the open files
survive, so it cannot fail with EBUSY) and then sent SIGTERM: it aborts their uploads
(nothing partial stays in the bucket, their writers get ENOTCONN) and exits. The command
returns once the mount process has exited, so a service manager that runs it as ``ExecStop``
knows the mount is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from chute.uploader.logsafe import quoted
from chute.uploader.sizes import format_size

from . import mountinfo
from .control import MountStatus, query_status

POLL = 0.25
EXIT_WAIT = 60.0
"""Seconds to wait for the mount process to exit once unmounted (it logs and closes)."""


def _say(message: str) -> None:
    print(f"chute: {message}", file=sys.stderr, flush=True)


def _alive(pid: int) -> bool:
    """Running, i.e. not gone and not a zombie nobody has reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _query(path: str) -> MountStatus | None:
    try:
        return query_status(path)
    except (LookupError, OSError):
        return None


def _wait_gone(path: str, pid: int | None) -> bool:
    deadline = time.monotonic() + EXIT_WAIT
    while time.monotonic() < deadline:
        if not mountinfo.is_mounted(path) and (pid is None or not _alive(pid)):
            return True
        time.sleep(POLL)
    return False


def _unmount_command(path: str, *, lazy: bool) -> list[str]:
    if os.geteuid() == 0:
        return ["umount", *(["-l"] if lazy else []), path]
    return ["fusermount3", "-u", *(["-z"] if lazy else []), path]


def _abandon(path: str, snapshot: MountStatus) -> None:
    for f in snapshot.files:
        _say(f"abandoning {quoted(f.path)}: {format_size(f.bytes_received)} received, "
             f"{format_size(f.bytes_acknowledged)} acknowledged; its upload is aborted and "
             "nothing of it stays in the bucket")
    subprocess.run(_unmount_command(path, lazy=True), capture_output=True)
    with contextlib.suppress(ProcessLookupError):
        os.kill(snapshot.pid, signal.SIGTERM)


def unmount(mountpoint: str, *, timeout: float, abandon: bool) -> int:
    """0 once unmounted; 1 if it could not be, or if the timeout abandoned files."""
    path = os.path.realpath(mountpoint)
    snapshot = _query(path)
    if snapshot is None:
        if not mountinfo.is_mounted(path):
            _say(f"no chute mount is serving {mountpoint}")
            return 1
        _say(f"nothing answers for the mount at {mountpoint} (its process is gone?); "
             "detaching it")
        result = subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True,
                                text=True)
        return 0 if result.returncode == 0 else 1
    pid: int | None = snapshot.pid
    deadline = time.monotonic() + (0 if abandon else timeout)
    announced = False
    abandoned = False
    while snapshot is not None:
        if not snapshot.files:
            command = _unmount_command(path, lazy=False)
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode == 0:
                break
            if "busy" not in result.stderr.lower():
                _say(f"{' '.join(command)} failed: {result.stderr.strip()}")
                return 1
        if time.monotonic() >= deadline:
            if not abandon:
                _say(f"the mount is still in use after {timeout:g} s; stopping it anyway")
            _abandon(path, snapshot)
            abandoned = bool(snapshot.files)
            break
        if snapshot.files and not announced:
            names = ", ".join(quoted(f.path) for f in snapshot.files)  # names may hold escapes
            _say(f"waiting up to {timeout:g} s for {len(snapshot.files)} open file(s) to be "
                 f"closed: {names}")
            announced = True
        time.sleep(POLL)
        snapshot = _query(path)
    if not _wait_gone(path, pid):
        _say(f"the mount at {mountpoint} (pid {pid}) did not stop within {EXIT_WAIT:g} s")
        return 1
    return 1 if abandoned and not abandon else 0
