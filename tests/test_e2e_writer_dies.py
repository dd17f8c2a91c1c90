"""A writer that dies never leaves an object (fs/writer_exit.py, issue 14).

The close that comes from a process's exit path while it dies by a signal or exits non-zero
aborts the upload: no object appears, no multipart upload or marker stays, and an object it
was to replace stays byte-exact. A writer that exits 0 without closing still lands its file.
Writers use raw descriptors (os.open) where the point is the kernel's close at exit: Python
closes its file objects itself at a normal interpreter exit, which is a deliberate close.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.files import random_file, sha256_file
from tests.support.mounts import requires_fuse
from tests.support.observe import scrape, status
from tests.support.store import BUCKET, object_keys, pending_uploads, sha256_object

pytestmark = [pytest.mark.e2e, requires_fuse]

MiB = 1 << 20
SMALL_RING = ("--slice-size", "5MiB", "--ring-size", "40MiB")


def producer(mib: int, delay: float = 0.02) -> str:
    """Python code writing ``mib`` MiB of pseudo-random bytes to stdout, slowly."""
    return textwrap.dedent(f"""
        import random, sys, time
        rng = random.Random(7)
        for _ in range({mib}):
            sys.stdout.buffer.write(rng.randbytes(1 << 20)); sys.stdout.buffer.flush()
            time.sleep({delay})
    """)


def wait_size(path: Path, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while os.stat(path).st_size < at_least:
        assert time.monotonic() < deadline, f"{path} stayed below {at_least} bytes"
        time.sleep(0.05)


def assert_nothing_left(s3, mount, name: str) -> None:
    deadline = time.monotonic() + 15
    while pending_uploads(s3, mount.prefix) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert mount.key(name) not in object_keys(s3, mount.prefix)
    assert pending_uploads(s3, mount.prefix) == []
    assert object_keys(s3, mount.prefix, markers=True) == []


def killed_cat(mount, name: str, sig: int) -> subprocess.CompletedProcess | int:
    """``producer | cat > MNT/name``, cat killed with ``sig`` once 12 MiB are in."""
    target = mount.path / name
    prod = subprocess.Popen([sys.executable, "-c", producer(200)], stdout=subprocess.PIPE)
    with open(target, "wb") as out:
        cat = subprocess.Popen(["cat"], stdin=prod.stdout, stdout=out)
    prod.stdout.close()
    wait_size(target, 12 * MiB)
    cat.send_signal(sig)
    status = cat.wait(60)
    prod.kill()
    prod.wait()
    return status


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_cat_leaves_no_object(mount_factory, s3, sig: int) -> None:
    mount = mount_factory(*SMALL_RING, "--metrics-addr", "127.0.0.1:0")
    assert killed_cat(mount, "db.dump", sig) == -sig
    assert_nothing_left(s3, mount, "db.dump")
    said = [line for line in mount.log().splitlines() if "its writer died" in line]
    assert len(said) == 1, said
    assert "'db.dump'" in said[0] and "'cat'" in said[0]
    assert f"killed by {signal.Signals(sig).name}" in said[0] and "bytes discarded" in said[0]
    answer = status(mount.path)
    assert answer["totals"]["files_writer_died"] == 1
    assert answer["totals"]["files_abandoned"] == 0
    assert scrape(answer["metrics_url"])[("chute_files_writer_died_total", ())] == 1


def test_killed_overwrite_keeps_the_old_object(mount_factory, s3, tmp_path: Path) -> None:
    mount = mount_factory(*SMALL_RING)
    good = random_file(tmp_path / "good", 7 * MiB + 3, seed=3)
    subprocess.run(["cp", str(good), str(mount.path / "db.dump")], check=True, timeout=60)
    assert killed_cat(mount, "db.dump", signal.SIGKILL) == -signal.SIGKILL
    assert sha256_object(s3, mount.key("db.dump")) == sha256_file(good)
    assert pending_uploads(s3, mount.prefix) == []
    time.sleep(1.1)  # the lookup TTL: the mount shows the old object again
    assert os.stat(mount.path / "db.dump").st_size == good.stat().st_size


def raw_writer(path: Path, mib: int, ending: str) -> int:
    """A Python process that writes ``mib`` MiB through a raw descriptor, then ends with
    ``ending`` (Python statements) while the descriptor is still open."""
    code = textwrap.dedent(f"""
        import os, random, sys, threading, time
        fd = os.open({str(path)!r}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        rng = random.Random(5)
        for _ in range({mib}):
            os.write(fd, rng.randbytes(1 << 20))
    """) + textwrap.dedent(ending)
    return subprocess.run([sys.executable, "-c", code], timeout=120).returncode


def expected_bytes(mib: int) -> bytes:
    import random

    rng = random.Random(5)
    return b"".join(rng.randbytes(1 << 20) for _ in range(mib))


def test_exit_1_with_the_file_open_leaves_no_object(mount_factory, s3) -> None:
    mount = mount_factory(*SMALL_RING)
    assert raw_writer(mount.path / "f", 8, "os._exit(1)\n") == 1
    assert_nothing_left(s3, mount, "f")
    assert "exit status 1" in mount.log()


def test_exit_0_with_the_file_open_lands_it_exactly(mount_factory, s3) -> None:
    mount = mount_factory(*SMALL_RING)
    assert raw_writer(mount.path / "f", 8, "os._exit(0)\n") == 0
    body = s3.get_object(Bucket=BUCKET, Key=mount.key("f"))["Body"].read()
    assert body == expected_bytes(8)
    assert pending_uploads(s3, mount.prefix) == []


def test_multithreaded_writer_exiting_1_from_a_thread(mount_factory, s3) -> None:
    mount = mount_factory(*SMALL_RING)
    ending = """
        threading.Thread(target=lambda: os._exit(1)).start()
        time.sleep(30)
    """
    assert raw_writer(mount.path / "f", 8, ending) == 1
    assert_nothing_left(s3, mount, "f")


def test_multithreaded_writer_sys_exit_4_from_main(mount_factory, s3) -> None:
    mount = mount_factory(*SMALL_RING)
    ending = """
        threading.Thread(target=time.sleep, args=(0.5,), daemon=True).start()
        sys.exit(4)
    """
    assert raw_writer(mount.path / "f", 8, ending) == 4
    assert_nothing_left(s3, mount, "f")


def test_forked_child_killed_after_parent_exits_0(mount_factory, s3) -> None:
    """The descriptor's last holder is the child; it dies by SIGKILL: no object."""
    mount = mount_factory(*SMALL_RING)
    pid_file = mount.path.parent / "child.pid"
    ending = f"""
        child = os.fork()
        if child == 0:
            for _ in range(4):
                os.write(fd, rng.randbytes(1 << 20))
            open({str(pid_file)!r}, "w").write(str(os.getpid()))
            time.sleep(60)
            os._exit(0)
        os._exit(0)
    """
    assert raw_writer(mount.path / "f", 8, ending) == 0
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    time.sleep(1)
    assert_nothing_left(s3, mount, "f")


def test_enobufs_writer_exiting_1_lands_none_of_its_files(mount_factory, s3) -> None:
    """One process round-robin over more files than the ring has slots: ENOBUFS, exit 1, and
    none of the files it held open lands half-written."""
    mount = mount_factory("--slice-size", "5MiB", "--ring-size", "20MiB")
    code = textwrap.dedent(f"""
        import errno, os, sys
        fds = [os.open({str(mount.path)!r} + f"/f{{i}}", os.O_WRONLY | os.O_CREAT, 0o644)
               for i in range(6)]
        chunk = b"x" * (1 << 20)
        try:
            for _ in range(10):
                for fd in fds:
                    os.write(fd, chunk)
        except OSError as exc:
            sys.exit(1 if exc.errno == errno.ENOBUFS else 2)
        sys.exit(3)
    """)
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 1
    time.sleep(1)
    assert object_keys(s3, mount.prefix) == []
    assert pending_uploads(s3, mount.prefix) == []


def test_commit_partial_keeps_plain_filesystem_behaviour(mount_factory, s3) -> None:
    mount = mount_factory(*SMALL_RING, "--commit-partial")
    assert raw_writer(mount.path / "f", 8, "os._exit(1)\n") == 1
    body = s3.get_object(Bucket=BUCKET, Key=mount.key("f"))["Body"].read()
    assert body == expected_bytes(8)
