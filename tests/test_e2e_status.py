"""`chute status` talks to a running mount over its private Unix socket."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from chute.fs.control import socket_path
from tests.support.mounts import requires_fuse
from tests.support.store import BUCKET

pytestmark = [pytest.mark.e2e, requires_fuse]

MiB = 1 << 20


def status(mountpoint, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chute.fs.cli", "status", str(mountpoint),
                           *extra], capture_output=True, text=True, timeout=30)


def test_status_json_while_a_file_is_open(mount_factory, s3) -> None:
    mount = mount_factory("--slice-size", "5MiB", "--ring-size", "20MiB")
    sock = socket_path(str(mount.path))
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    fd = os.open(mount.path / "growing", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, os.urandom(17 * MiB + 5))
        deadline = time.monotonic() + 20
        while True:
            result = status(mount.path, "--json")
            assert result.returncode == 0, result.stderr
            snap = json.loads(result.stdout)
            (entry,) = snap["files"]
            if entry["bytes_acknowledged"] == 5 * MiB or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert entry["path"] == "growing"
        assert entry["bytes_received"] == 17 * MiB + 5
        # Part 2 is sent; the first and the latest full slice are retained, the fourth fills.
        assert entry["bytes_acknowledged"] == 5 * MiB
        assert entry["state"] == "open"
        ring = snap["ring"]
        assert ring["slots"] == 4
        assert sum(ring[state] for state in
                   ("free", "filling", "retained", "sealed", "uploading")) == 4
        assert ring["filling"] == 1 and ring["retained"] == 2
        human = status(mount.path)
        assert "growing: received 17.0 MiB" in human.stdout
    finally:
        os.close(fd)
    done = json.loads(status(mount.path, "--json").stdout)
    assert done["files"] == []
    assert done["totals"]["files_done"] == 1
    assert done["totals"]["bytes_uploaded"] == 17 * MiB + 5
    assert s3.head_object(Bucket=BUCKET, Key=mount.key("growing"))["ContentLength"] == 17 * MiB + 5


def test_status_of_something_that_is_not_a_mount(tmp_path) -> None:
    result = status(tmp_path)
    assert result.returncode == 1
    assert "no chute mount is serving" in result.stderr


def test_no_secret_in_logs_even_at_debug(mount_factory, store) -> None:
    mount = mount_factory("-v", "--slice-size", "5MiB", "--ring-size", "20MiB")  # -v -v
    (mount.path / "f").write_bytes(os.urandom(11 * MiB))
    mount.unmount()
    log = mount.log()
    assert "uploaded" in log and "DEBUG" in log
    assert store.secret_key not in log
    assert "Signature=" not in log and "Authorization" not in log
