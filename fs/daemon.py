"""Running in the background: ``chute mount --daemon`` and systemd's readiness protocol.

``--daemon`` forks before anything is checked. The parent stays in the foreground and waits on
a pipe; the child detaches (new session, cwd ``/``, stdio on ``/dev/null``) and does all the
work. When the mount is ready the child writes ``ready``; when anything fails first it writes
the one-sentence reason. So the parent's exit status is the mount's: 0 only once the kernel
mount exists and is served, non-zero with the same sentence the foreground command would
print. This is what mount(8) needs from a helper (it waits for the helper to exit and then
expects the filesystem to be there) and what a shell script needs to know the mount is usable.

The child's stdio must not keep the caller's pipes open: a caller reading the parent's output
(``$(chute mount --daemon ...)``, mount(8) run by systemd) would otherwise wait for the
mount to end.

A foreground ``chute mount`` under systemd (``Type=notify``) instead tells the service
manager it is ready with ``READY=1`` on ``$NOTIFY_SOCKET``: :func:`notify_systemd`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys

READY = "ready"


class Handoff:
    """The detached child's one message to the parent waiting in the foreground."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def ready(self) -> None:
        self._send(READY)

    def fail(self, sentence: str) -> None:
        self._send(sentence)

    def _send(self, text: str) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):  # the parent is gone (killed): nobody to tell
            os.write(fd, text.encode() + b"\n")
        os.close(fd)


def _wait_for_verdict(read_fd: int) -> int:
    """The parent: wait for the child's message; print a failure; the exit status."""
    chunks = []
    with os.fdopen(read_fd, "rb") as pipe:
        while chunk := pipe.read(4096):
            chunks.append(chunk)
    message = b"".join(chunks).decode(errors="replace").strip()
    if message == READY:
        return 0
    if not message:
        message = "the mount process ended before the mount was ready (see its log)"
    print(f"chute: {message}", file=sys.stderr, flush=True)
    return 1


def _detach_stdio() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)


def detach() -> int | Handoff:
    """Fork. In the parent: block until the child reports, and return the exit status. In
    the child: detach and return the :class:`Handoff` to report through.

    Call before trio or any thread starts (fork keeps only the calling thread), and after
    every relative path was made absolute (the child changes to ``/``, so it holds no
    directory busy).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    if os.fork():
        os.close(write_fd)
        return _wait_for_verdict(read_fd)
    os.close(read_fd)
    os.setsid()
    os.chdir("/")
    _detach_stdio()
    return Handoff(write_fd)


def notify_systemd(state: str) -> None:
    """``sd_notify(state)`` when run as a systemd ``Type=notify`` service; else nothing."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(state.encode(), address)
