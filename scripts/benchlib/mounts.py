"""A FUSE daemon in the foreground (chute, rclone, JuiceFS or the nullfs floor), started in its
own session and unmounted for sure: ``fusermount3 -u`` retried while busy, then ``-z`` and
killing its process group as last resorts. Whether it is mounted is read through
``chute.fs.mountinfo``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from chute.fs.mountinfo import is_mounted

from .common import log


class MountProcess:
    """A FUSE daemon in the foreground: started in its own session, unmounted for sure."""

    def __init__(self, name: str, argv: list[str], mountpoint: Path, env: dict[str, str],
                 log_path: Path, timeout: float = 60) -> None:
        self.name, self.argv, self.mountpoint = name, argv, mountpoint
        self.env, self.log_path, self.timeout = env, log_path, timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> MountProcess:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            # Own session: a Ctrl-C on the terminal reaches only the bench, which unmounts.
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        try:
            deadline = time.monotonic() + self.timeout
            while not is_mounted(self.mountpoint):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} mount exited with {self.proc.returncode}; "
                                       f"its log:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not mount within {self.timeout:g} s; "
                                       f"its log:\n{self.log_tail()}")
                time.sleep(0.05)
        except BaseException:
            self.unmount()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmount()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("  " + line for line in text[-lines:])

    def unmount(self) -> None:
        """fusermount3 -u (retried while busy), wait; then -z and kill as last resorts."""
        proc = self.proc
        if proc is None:
            return
        # A second Ctrl-C must not cut the cleanup short (SIGTERM still ends us).
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            # Right after an interrupted writer, the file may still be open for a moment
            # (EBUSY): retry for a while before detaching lazily.
            deadline = time.monotonic() + 20
            while is_mounted(self.mountpoint) and proc.poll() is None:
                done = subprocess.run(["fusermount3", "-u", str(self.mountpoint)],
                                      capture_output=True, text=True, timeout=60, check=False)
                if done.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    log(f"  {self.name}: fusermount3 -u failed ({done.stderr.strip()}); "
                        "detaching lazily")
                    break
                time.sleep(0.2)
            if is_mounted(self.mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)],
                               capture_output=True, timeout=30, check=False)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                log(f"  {self.name}: still running 60 s after unmount; stopping it")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        finally:
            if is_mounted(self.mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)],
                               capture_output=True, timeout=30, check=False)
            # A supervised child (JuiceFS) may outlive its parent: end the rest of the
            # session we started (a process group id is not reused while it has members).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            self.proc = None
            signal.signal(signal.SIGINT, previous)
