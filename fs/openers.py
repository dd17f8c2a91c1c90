"""Does any process still hold a file of this mount open? (Deciding which flush is the last.)

FUSE sends FLUSH on every close() of a descriptor, dup'd ones included, and pyfuse3 does not
say which process closed. chute must finalize on the flush that ends the writing open — the
last close — so that close() can report whether the object landed, and must not finalize on
the close of a dup (``dd`` reopens its output onto fd 1 and closes the original; a shell's
``exec 3>file`` lends fd 3 to children that close their copies first).

The kernel removes a descriptor from its process's table before it sends FLUSH, so at that
moment the closing descriptor is gone from ``/proc/PID/fd``. If no descriptor anywhere still
refers to the file (same mount id and inode in ``/proc/PID/fdinfo``), this flush is the last
close. The opener is checked first (its threads share its descriptor table). Other holders
can only be processes forked after the open (a descriptor is inherited, never shared
backwards), and those have a higher pid than the last pid the kernel had handed out at open
time (``/proc/loadavg``'s fifth field), so only they are scanned: for a plain ``cp`` that is
usually nobody, instead of every process on the machine (a full scan cost ~3 ms per close
with 84 processes, a quarter of chute's CPU on small files). When pids have wrapped around
since the open, everything is scanned. A descriptor passed over a Unix socket (SCM_RIGHTS) to
an older process is not seen: the file is then finalized at the opener's close and later
writes through that descriptor fail loudly with EIO, never silently.

The mount's id comes from ``chute.fs.mountinfo`` (its octal unescaping finds a mountpoint
whose path has spaces or non-ASCII characters; a wrong parser would find nothing, and the
check would fall back to counting handles).

Processes whose /proc entries we may not read cannot hold a file of a mount without
``allow_other``, so they are skipped.

The check runs on the event loop when it is short: no process created since the open (then
only the opener is read), or a few. Those are tens of microseconds of /proc reads each, never
blocking on a disk, and a hop to a worker thread alone cost more (0.9 ms per close against
0.3 ms inline, under load). A longer scan goes to a worker thread.
"""

from __future__ import annotations

import os


def _holds(pid: str, mount_id: int, inode: int, prefix: str) -> bool:
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for name in names:
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if not target.startswith(prefix):
            continue
        try:
            info = _read(f"/proc/{pid}/fdinfo/{name}")
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in info.splitlines() if ":\t" in line)
        if fields.get("mnt_id", "").strip() == str(mount_id) and \
                fields.get("ino", "").strip() == str(inode):
            return True
    return False


def _read(path: str) -> str:
    """A small /proc file's text: os.read, a third of the cost of open() with its buffered
    text layers, on a path every open and every close of a small file takes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096).decode()
    finally:
        os.close(fd)


def last_pid() -> int:
    """The most recently created pid (record it when a file is opened)."""
    return int(_read("/proc/loadavg").split()[4])


INLINE_SCAN_MAX = 8
"""Processes :func:`holder` checks when called with ``max_scan``, on the event loop."""


NOT_SCANNED = -1
""":func:`holder` with ``max_scan``: more processes than that would have to be read."""


def holder(mountpoint: str, mount_id: int, inode: int, opener_pid: int,
           last_pid_at_open: int, *, max_scan: int | None = None) -> int | None:
    """The pid of a process that still has a descriptor for ``inode`` on this mount, or None
    if none has (blocking). The holder found is remembered by the caller: if it is the last
    one, its exit is how the file ends (writer_exit.py).

    With ``max_scan``, NOT_SCANNED when more processes than that would have to be scanned
    besides the opener: call again without it, in a worker thread. ``mountpoint`` is the
    resolved path (resolved before mounting) and ``mount_id`` its id in mountinfo
    (``chute.fs.mountinfo.find(mountpoint).mount_id``).
    """
    prefix = mountpoint
    if _holds(str(opener_pid), mount_id, inode, prefix):
        return opener_pid
    now = last_pid()
    if now == last_pid_at_open:
        return None  # no process was created since the open: only the opener could hold it
    wrapped = now < last_pid_at_open
    me = os.getpid()
    candidates = [name for name in os.listdir("/proc") if name.isdigit()
                  and int(name) not in (me, opener_pid)
                  and (wrapped or int(name) > last_pid_at_open)]
    if max_scan is not None and len(candidates) > max_scan:
        return NOT_SCANNED
    return next((int(name) for name in candidates if _holds(name, mount_id, inode, prefix)),
                None)
