"""Starting weed so that it dies with chute and keeps its files private; one per directory.

The child is in its own process group (a Ctrl-C on the terminal reaches chute, which unmounts
first and then stops the store), has ``PR_SET_PDEATHSIG(SIGTERM)`` so a SIGKILLed chute does not
leave weed running, and runs with umask 077 so that every file and Unix socket it creates is
the user's alone (connecting to a Unix socket needs write permission on it).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


_PR_SET_PDEATHSIG = 1
# Looked up in the parent: dlopen in a forked child of a threaded process can deadlock.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _child_setup(parent_pid: int) -> None:
    """In the child before exec: die (SIGTERM, so weed shuts down cleanly) with chute.

    The umask makes every file and Unix socket weed creates private to the user (connecting
    to a socket needs write permission on it).
    """
    os.umask(0o077)
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:  # chute died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


# PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process. If
# start() ran in a short-lived worker thread (trio.to_thread, a thread pool), weed would be
# terminated when that thread retires. So every spawn happens in one long-lived thread.
_spawner: concurrent.futures.ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def spawn(
    command: list[str], *, env: dict[str, str], cwd: Path, stdout: IO[bytes]
) -> subprocess.Popen[bytes]:
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="chute-weed-spawner")
    parent_pid = os.getpid()
    return _spawner.submit(
        subprocess.Popen, command, stdin=subprocess.DEVNULL, stdout=stdout,
        stderr=subprocess.STDOUT, cwd=cwd, env=env, close_fds=True, process_group=0,
        preexec_fn=lambda: _child_setup(parent_pid),
    ).result()


class Busy(Exception):
    """Another process holds the lock."""


def lock(path: Path) -> int:
    """An exclusive flock on ``path`` (created 0600) as an open descriptor; Busy if held.

    One running store per data directory: weed's leveldb and volumes are not shared. Closing
    the descriptor drops the lock.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise Busy(str(path)) from exc
        raise
    return fd


def orphan(pid_file: Path, argument: str) -> int | None:
    """The pid recorded in ``pid_file`` if that process still runs with ``argument``."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if argument.encode() in cmdline else None  # else the pid was reused


def end(pid: int, kill_at: float) -> None:
    """SIGTERM ``pid``, SIGKILL it at ``kill_at`` (time.monotonic()), return once it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() >= kill_at:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            kill_at = float("inf")
        time.sleep(0.05)
