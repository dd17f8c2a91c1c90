"""Real ``chute mount`` subprocesses for tests and scripts: start one as a user would, wait
until the kernel lists it, unmount it (lazily if it died).

Whether something is mounted is read through ``chute.fs.mountinfo``, the one reader of
``/proc/self/mountinfo``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from chute.fs.mountinfo import is_mounted

from .store import BUCKET

__all__ = ["Mount", "fuse_available", "is_mounted", "launch_mount", "requires_fuse",
           "start_mount", "wait_until_mounted"]


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


requires_fuse = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fuse3")


@dataclass
class Mount:
    """A running ``chute mount`` subprocess."""

    path: Path
    prefix: str
    proc: subprocess.Popen
    log_path: Path
    args: list[str] = field(default_factory=list)

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def unmount(self, timeout: float = 60) -> int:
        """Unmount and wait for the process; a dead mount is detached lazily."""
        if is_mounted(self.path):
            lazy = ["-z"] if self.proc.poll() is not None else []
            subprocess.run(["fusermount3", "-u", *lazy, str(self.path)], check=False,
                           capture_output=True)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False,
                           capture_output=True)
            raise


def launch_mount(path: Path, log_path: Path, endpoint_url: str, env: dict[str, str],
                 options: tuple[str, ...] | list[str] = (), prefix: str | None = None
                 ) -> Mount:
    """Start ``chute mount path s3://BUCKET/prefix`` (a fresh prefix unless given) with ``env``
    as its whole environment and its output in ``log_path``; does not wait for the mount."""
    prefix = prefix or f"t-{uuid.uuid4().hex[:10]}/"
    args = [sys.executable, "-m", "chute.fs.cli", "mount", str(path),
            f"s3://{BUCKET}/{prefix.rstrip('/')}", "--endpoint-url", endpoint_url, "-v",
            *options]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    return Mount(path, prefix, proc, log_path, args)


def wait_until_mounted(mount: Mount, timeout: float = 30) -> None:
    """Return once the kernel lists the mount; RuntimeError with its log if it exited or
    did not come up in time."""
    deadline = time.monotonic() + timeout
    while not is_mounted(mount.path):
        if mount.proc.poll() is not None:
            raise RuntimeError(f"chute mount exited {mount.proc.returncode}:\n{mount.log()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"chute mount did not come up:\n{mount.log()}")
        time.sleep(0.05)


def start_mount(where: Path, endpoint_url: str, env: dict[str, str], options: tuple[str, ...],
                prefix: str | None = None) -> Mount:
    """``chute mount`` on ``where/mnt`` as conftest's mount_factory does it, with ``env`` as
    the whole environment (so credentials may come from a profile instead); a mount that does
    not come up is stopped before the error is raised."""
    path = where / "mnt"
    path.mkdir(parents=True)
    mount = launch_mount(path, where / "mount.log", endpoint_url, env, options, prefix)
    try:
        wait_until_mounted(mount)
    except RuntimeError:
        mount.unmount(timeout=10)
        raise
    return mount
