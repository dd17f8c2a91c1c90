"""One embedded store and one ``chute mount`` on it, for the measuring scripts.

bench_memory.py and bench_files_rss.py each need the same thing: a private SeaweedFS in a
temporary directory, chute mounted on it as a user would mount it, the mount process's pid
to read /proc from, and everything stopped afterwards, whatever happened.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from chute.fs.embedded_store import EmbeddedStore
from chute.fs.mountinfo import is_mounted

BUCKET = "bench"


@dataclass(frozen=True)
class LocalMount:
    path: Path
    process: subprocess.Popen
    store: EmbeddedStore


def proc_field(pid: int, name: str, field: str) -> int:
    """The first number on ``field:``'s line of /proc/PID/NAME (status is in KiB, io in
    bytes); 0 if the line is missing."""
    with open(f"/proc/{pid}/{name}") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _wait_mounted(path: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not is_mounted(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"mount did not come up (exit {proc.poll()})")
        time.sleep(0.05)


@contextmanager
def local_mount(*options: str, prefix: str = "chute-bench-") -> Iterator[LocalMount]:
    """``chute mount MNT s3://bench`` with ``options`` on a fresh embedded store under a
    temporary directory in the current one (real disk, not tmpfs); unmounted and stopped on
    exit. The mount's log is ``MNT/../mount.log``."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir=os.getcwd()) as tmp:
        work = Path(tmp)
        with EmbeddedStore(work / "store", bucket=BUCKET) as store:
            path = work / "mnt"
            path.mkdir()
            env = {**os.environ, "AWS_ACCESS_KEY_ID": store.access_key,
                   "AWS_SECRET_ACCESS_KEY": store.secret_key}
            with open(work / "mount.log", "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "chute.fs.cli", "mount", str(path),
                     f"s3://{BUCKET}", "--endpoint-url", store.endpoint_url, "-q", *options],
                    stdout=log, stderr=subprocess.STDOUT, env=env,
                )
            try:
                _wait_mounted(path, proc)
                yield LocalMount(path, proc, store)
            finally:
                subprocess.run(["fusermount3", "-u", str(path)], check=False)
                proc.wait(120)
