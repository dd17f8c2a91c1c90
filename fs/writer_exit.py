"""Is the last close of a file the death of its writer? (A killed writer leaves no object.)

A backup job killed mid-file (``producer | cat > /mnt/cloud/db.dump`` and SIGKILL, Ctrl-C, or
a script that exits 1 with the file open) closes its descriptors in the kernel's exit path,
and that close looks like any other: FUSE sends FLUSH and RELEASE. Committing then would make
a truncated object, with a valid-looking hash, under the full name, and would replace the last
good copy. So chute asks how the closing process is ending.

The kernel makes this decidable. A process in ``do_exit`` has ``PF_EXITING`` (0x4) in the
flags field of ``/proc/PID/stat`` (field 9) before it closes its files (``exit_files``), and
field 52 (``exit_code``) already holds the wait status it will report: the signal number for
a death by signal (9 for SIGKILL, 2 for an unhandled SIGINT), ``status << 8`` for ``exit()``
(768 for ``exit(3)``). A multi-threaded process's main thread is already a zombie (state Z)
when the last thread's exit closes the files, with the same exit code. An explicit
``close()`` by a live process shows PF_EXITING unset. Measured on Linux 6.18 with a pyfuse3
filesystem whose flush read the opener's stat.

FUSE's FLUSH does not say which process closed (pyfuse3 passes no pid), so the closer is
looked for among the processes the last-close check knows: the opener and the holders it
has seen (openers.py). Any of them that is exiting with a non-zero wait status makes the
close a failure. A misattribution can only err towards "failed", and then a live closer is
told (its close() returns EIO), so it is never silent.

What this cannot see, and the README says: a process that handles the signal and closes the
file itself before dying (dd's SIGINT handler, Python's KeyboardInterrupt unwinding a
``with`` block) closes it like a success.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

PF_EXITING = 0x4
"""include/linux/sched.h: the task is in do_exit()."""

_STAT_MAX = 4096
"""A /proc/PID/stat line is a few hundred bytes; anything longer is not one."""


@dataclass(frozen=True)
class ProcessEnd:
    """How a process that is exiting is ending: its pid, command and wait status."""

    pid: int
    command: str
    wait_status: int

    @property
    def failed(self) -> bool:
        return self.wait_status != 0

    def describe(self) -> str:
        """``killed by SIGKILL`` / ``exit status 3``: as a shell would say it."""
        if os.WIFSIGNALED(self.wait_status):
            number = os.WTERMSIG(self.wait_status)
            try:
                name = signal.Signals(number).name
            except ValueError:
                name = f"signal {number}"
            return f"killed by {name}"
        if os.WIFEXITED(self.wait_status):
            return f"exit status {os.WEXITSTATUS(self.wait_status)}"
        return f"wait status {self.wait_status:#x}"


def parse_stat(pid: int, text: str) -> ProcessEnd | None:
    """The end of the process whose ``/proc/PID/stat`` is ``text``: None while it is not
    exiting (PF_EXITING unset) or if ``text`` does not have stat's shape. ``comm`` may hold
    spaces and parentheses, so the fields are counted after its last ``)``."""
    command, paren, rest = text[:_STAT_MAX].partition(" (")[2].rpartition(")")
    fields = rest.split()
    if not paren or len(fields) < 50:
        return None
    try:
        flags, exit_code = int(fields[6]), int(fields[49])
    except ValueError:
        return None
    if not flags & PF_EXITING:
        return None
    return ProcessEnd(pid, command, exit_code)


def ending(pid: int) -> ProcessEnd | None:
    """How ``pid`` is ending, if it is exiting now; None if it is live or already gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        text = os.read(fd, _STAT_MAX).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)
    return parse_stat(pid, text)


def failed_closer(pids: list[int] | tuple[int, ...] | set[int]) -> ProcessEnd | None:
    """The first of ``pids`` that is exiting with a failure (a signal or a non-zero status),
    if any: the last close of a file they held is then that failure, not a deliberate
    close."""
    for pid in sorted(set(pids)):
        end = ending(pid)
        if end is not None and end.failed:
            return end
    return None
