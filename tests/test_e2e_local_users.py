"""End to end: other local users and concurrent starts cannot hurt a mount (issue 13, 7 and 13).

- A flood of connections to ``--metrics-addr`` from another uid once took every descriptor
  the mount had (EMFILE 247 times in 25 s) and made ``cp`` into the mount fail. Now the metrics
  listener serves a few connections at once, each for 5 s at most, and the mount raises its
  soft descriptor limit to the hard one: ``cp`` lands, the log has no EMFILE, and the metrics
  answer again once the flood is gone.
- Two ``chute mount`` of one directory started together both mounted (and the second took
  the first's status socket). Now one mounts and the other says so in one sentence.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.support.files import random_file, sha256_file
from tests.support.mounts import (
    Mount,
    is_mounted,
    launch_mount,
    requires_fuse,
    wait_until_mounted,
)
from tests.support.store import BUCKET, object_keys, sha256_object, store_env
from tests.support.users import second_user

pytestmark = [pytest.mark.e2e, requires_fuse]

PROBE_USER = "chute-flood"
MiB = 1 << 20
FLOOD = 900
"""Connections the flood holds open: more than the mount's whole descriptor limit here."""

SYSTEM_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable
"""The flooder needs only the standard library, and another user may not read the venv."""
FLOODER = """
import resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, count, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
held = []
for _ in range(count):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    held.append(s)
print(len(held), flush=True)
time.sleep(seconds)
"""


@pytest.fixture(scope="module")
def flood_user() -> str | None:
    """A second local user to flood from (None when not root: flood as ourselves)."""
    if os.geteuid() != 0 or not (shutil.which("useradd") and shutil.which("runuser")):
        yield None
        return
    with second_user(PROBE_USER) as name:
        yield name


def launch_limited(mnt: Path, log_path: Path, store, options: tuple[str, ...], soft: int,
                   hard: int) -> Mount:
    """``chute mount`` as launch_mount starts it, with RLIMIT_NOFILE (soft, hard)."""
    prefix = f"t-{uuid.uuid4().hex[:10]}/"
    args = [sys.executable, "-m", "chute.fs.cli", "mount", str(mnt),
            f"s3://{BUCKET}/{prefix.rstrip('/')}", "--endpoint-url", store.endpoint_url, "-v",
            *options]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            args, stdout=log_file, stderr=subprocess.STDOUT, env=store_env(store),
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    return Mount(mnt, prefix, proc, log_path, args)


def open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc/PID/limits")


def test_a_metrics_flood_from_another_user_cannot_starve_the_mount(
        store, s3, tmp_path: Path, flood_user: str | None) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mount = launch_limited(mnt, tmp_path / "mount.log", store,
                           ("--metrics-addr", "127.0.0.1:0", "--slice-size", "5MiB",
                            "--ring-size", "20MiB"), soft=256, hard=512)
    try:
        wait_until_mounted(mount)
        # the soft limit was raised to the hard one at start
        assert open_files_limit(mount.proc.pid) == (512, 512)
        deadline = time.monotonic() + 10
        while not (found := re.search(r"metrics at (http://\S+)", mount.log())):
            assert time.monotonic() < deadline, mount.log()
            time.sleep(0.1)
        url = found.group(1)
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        runner = ["runuser", "-u", flood_user, "--"] if flood_user else []
        flood = subprocess.Popen([*runner, SYSTEM_PYTHON, "-c", FLOODER, str(port),
                                  str(FLOOD), "8"], stdout=subprocess.PIPE, text=True,
                                 start_new_session=True)
        try:
            assert int(flood.stdout.readline()) == FLOOD
            time.sleep(1)  # the mount has had time to accept what it would
            fds = len(os.listdir(f"/proc/{mount.proc.pid}/fd"))
            assert fds < 200, f"the mount holds {fds} descriptors during the flood"
            src = random_file(tmp_path / "src.bin", 12 * MiB)
            copied = subprocess.run(["cp", str(src), str(mnt / "during-flood.bin")],
                                    capture_output=True, text=True, timeout=120)
            assert copied.returncode == 0, copied.stderr
            assert sha256_object(s3, mount.key("during-flood.bin")) == sha256_file(src)
            flood.wait(30)  # it lets go by itself: runuser's child would outlive a kill
        finally:
            if flood.poll() is None:
                os.killpg(flood.pid, signal.SIGKILL)
                flood.wait(10)
        with urllib.request.urlopen(url, timeout=20) as answer:  # served again after it
            assert b"chute_bytes_uploaded" in answer.read()
    finally:
        mount.unmount()
    log = mount.log()
    assert "EMFILE" not in log and "Too many open files" not in log, log[-3000:]


def test_two_mounts_of_one_directory_started_together(store, s3, tmp_path: Path) -> None:
    """One mounts, the other is refused in one sentence, and status answers from the first."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = store_env(store)
    first = launch_mount(mnt, tmp_path / "a.log", store.endpoint_url, env)
    second = launch_mount(mnt, tmp_path / "b.log", store.endpoint_url, env)
    mounts = [first, second]
    try:
        deadline = time.monotonic() + 60
        while all(m.proc.poll() is None for m in mounts) or not is_mounted(mnt):
            assert time.monotonic() < deadline, first.log() + second.log()
            time.sleep(0.1)
        refused = next(m for m in mounts if m.proc.poll() is not None)
        serving = next(m for m in mounts if m is not refused)
        assert refused.proc.returncode == 1, refused.log()
        assert "is already mounting or serving" in refused.log(), refused.log()
        assert "Traceback" not in refused.log()
        status = subprocess.run([sys.executable, "-m", "chute.fs.cli", "status", str(mnt),
                                 "--json"], capture_output=True, text=True, timeout=30)
        assert json.loads(status.stdout)["pid"] == serving.proc.pid
        (mnt / "one.txt").write_bytes(b"landed once\n")
        assert object_keys(s3, serving.prefix) == [serving.key("one.txt")]
        assert serving.proc.poll() is None
    finally:
        for m in mounts:
            m.unmount()
    assert not is_mounted(mnt)


@pytest.mark.skipif(os.geteuid() != 0, reason="runs as a second user: needs root")
def test_uid_and_gid_give_files_to_the_user_who_writes_them(store, s3, flood_user: str | None
                                                            ) -> None:
    """Under --allow-other every file showed root:root 0644, so another user who created a file
    could not rewrite it. --uid/--gid name the owner stat shows; that user creates, rewrites
    and removes files, and the objects hold what it wrote."""
    assert flood_user is not None
    user = pwd.getpwnam(flood_user)
    where = Path(tempfile.mkdtemp(prefix="chute-uid-"))
    where.chmod(0o755)  # the second user must reach the mountpoint
    mnt = where / "mnt"
    mnt.mkdir()
    mount = launch_mount(mnt, where / "mount.log", store.endpoint_url, store_env(store),
                         ("--allow-other", "--uid", str(user.pw_uid), "--gid",
                          str(user.pw_gid)))
    try:
        wait_until_mounted(mount)
        script = ('set -e; echo one > "$1/mine.txt"; echo two > "$1/mine.txt"; '
                  'mkdir "$1/dir"; echo three > "$1/dir/inner.txt"; stat -c %u:%g "$1/mine.txt"')
        result = subprocess.run(["runuser", "-u", flood_user, "--", "sh", "-c", script, "sh",
                                 str(mnt)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr + mount.log()[-2000:]
        assert result.stdout.strip() == f"{user.pw_uid}:{user.pw_gid}"
        body = s3.get_object(Bucket=BUCKET, Key=mount.key("mine.txt"))["Body"].read()
        assert body == b"two\n"
        assert os.stat(mnt).st_uid == user.pw_uid
    finally:
        mount.unmount()
        shutil.rmtree(where, ignore_errors=True)


def test_uid_and_gid_are_checked_before_anything_starts(tmp_path: Path) -> None:
    for flag, value in (("--uid", "-1"), ("--gid", "4294967295"), ("--uid", "abc")):
        result = subprocess.run([sys.executable, "-m", "chute.fs.cli", "mount", str(tmp_path),
                                 "s3://bkt", flag, value], capture_output=True, text=True)
        assert result.returncode == 2 and "must be a number from 0 to 4294967294" in \
            result.stderr, result.stderr


def test_a_daemon_keeps_the_mount_lock(store, tmp_path: Path) -> None:
    """--daemon: the lock is taken before detaching, so a second mount is refused in the
    foreground, and the detached child holds it (and names itself in it) while it serves."""
    from chute.fs import control

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    prefix = f"t-{uuid.uuid4().hex[:10]}"

    def mount(log_name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "chute.fs.cli", "mount", "--daemon", str(mnt),
             f"s3://{BUCKET}/{prefix}", "--endpoint-url", store.endpoint_url,
             "--log-file", str(tmp_path / log_name)],
            capture_output=True, text=True, env=store_env(store), timeout=60)

    first = mount("first.log")
    assert first.returncode == 0, first.stderr
    try:
        assert is_mounted(mnt)
        second = mount("second.log")
        assert second.returncode == 1
        assert "is already mounting or serving" in second.stderr, second.stderr
        status = subprocess.run([sys.executable, "-m", "chute.fs.cli", "status", str(mnt),
                                 "--json"], capture_output=True, text=True, timeout=30)
        pid = json.loads(status.stdout)["pid"]
        lock = control.lock_path(os.path.realpath(mnt))
        assert lock.read_text().strip() == str(pid)
    finally:
        subprocess.run([sys.executable, "-m", "chute.fs.cli", "unmount", str(mnt)],
                       capture_output=True, timeout=120)
    assert not is_mounted(mnt)
