"""End to end: a store whose answers are hostile (issue 13 items 1 and 6).

- An object put from outside with ``x-amz-meta-chute-mtime-ns`` = thirty 9s and other
  impossible metadata: ``ls -l`` of its directory works and shows defaults, the mount stays
  alive and a cp afterwards still lands (before: OverflowError building the attributes, the
  mount process died).
- An endpoint that is not S3 and answers 200 + HTML to everything: ``cp small`` into the
  mount fails with EIO and nothing claims the file was uploaded. (Its lookup already fails:
  the HTML is not a listing. That a PutObject, UploadPart, Complete... answered so is a
  failure too is shown per call in test_store_answers.py.)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.html_store import HtmlStore
from tests.support.mounts import launch_mount, requires_fuse, wait_until_mounted
from tests.support.store import BUCKET, sha256_object

pytestmark = [pytest.mark.e2e, requires_fuse]

THIRTY_NINES = "9" * 30


def test_hostile_metadata_does_not_crash_the_mount(mount_factory, s3, tmp_path: Path) -> None:
    mount = mount_factory()
    (mount.path / "d").mkdir()
    s3.put_object(Bucket=BUCKET, Key=mount.key("d/evil"), Body=b"abc",
                  Metadata={"chute-mtime-ns": THIRTY_NINES, "chute-mode": "-1"})
    s3.put_object(Bucket=BUCKET, Key=mount.key("d/late"), Body=b"x",
                  Metadata={"chute-mtime-ns": "-" + THIRTY_NINES, "chute-mode": "7" * 30})
    listed = subprocess.run(["ls", "-l", str(mount.path / "d")], capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "evil" in listed.stdout and "late" in listed.stdout
    evil = os.stat(mount.path / "d" / "evil")
    assert evil.st_size == 3 and evil.st_mode & 0o7777 == 0o644
    assert abs(evil.st_mtime - os.stat(mount.path / "d").st_mtime) < 3600 * 24 * 365 * 10
    assert mount.proc.poll() is None, mount.log()
    source = tmp_path / "after"
    source.write_bytes(os.urandom(100_000))
    subprocess.run(["cp", str(source), str(mount.path / "d" / "after")], check=True,
                   timeout=60)
    assert sha256_object(s3, mount.key("d/after")) == hashlib.sha256(
        source.read_bytes()).hexdigest()
    log = mount.log()
    assert "chute-mtime-ns" in log and "'" + mount.key("d/evil") + "'" in log
    assert "Traceback" not in log


def test_a_store_that_answers_html_gets_no_file(tmp_path: Path) -> None:
    source = tmp_path / "small.txt"
    source.write_bytes(b"hello\n")
    env = {k: v for k, v in os.environ.items() if k != "AWS_PROFILE"}
    env |= {"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret",
            "AWS_REGION": "us-east-1"}
    with HtmlStore() as server:
        path = tmp_path / "mnt"
        path.mkdir()
        mount = launch_mount(path, tmp_path / "mount.log", server.url, env,
                             ["--retry-budget", "5"], prefix="p/")
        try:
            try:
                wait_until_mounted(mount)
            except RuntimeError:
                # Refused at preflight: as good, as long as it said why and claims nothing.
                assert mount.proc.wait(30) != 0
                assert "uploaded" not in mount.log()
                return
            copied = subprocess.run(["cp", str(source), str(path / "small.txt")],
                                    capture_output=True, text=True, timeout=120)
            assert copied.returncode != 0, "cp into a store that is not S3 must fail"
            assert "Input/output error" in copied.stderr, copied.stderr
            assert mount.proc.poll() is None, mount.log()
        finally:
            mount.unmount(timeout=60)
        log = mount.log()
        assert "uploaded" not in log, log
        assert "returning EIO" in log and "MalformedResponse" in log, log
