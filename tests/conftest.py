"""Shared fixtures: a real SeaweedFS store, an independent boto3 client, real FUSE mounts.

End-to-end tests never mock the store or FUSE: they start ``weed mini`` on loopback (the
embedded store chute itself uses), run ``chute mount`` as a subprocess exactly as a user
would, drive the mount with real tools, and check the bucket with boto3.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from chute.fs.embedded_store import EmbeddedStore

BUCKET = "chute-test"


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


requires_fuse = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fuse3")


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStore]:
    """One SeaweedFS for the whole session; tests use distinct key prefixes."""
    server = EmbeddedStore(tmp_path_factory.mktemp("seaweedfs"), bucket=BUCKET)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3(store: EmbeddedStore):
    """An independent client for checking what landed in the bucket."""
    return boto3.client(
        "s3", endpoint_url=store.endpoint_url, aws_access_key_id=store.access_key,
        aws_secret_access_key=store.secret_key, region_name=store.region,
        config=Config(retries={"max_attempts": 10, "mode": "standard"}),
    )


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_object(s3, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in s3.get_object(Bucket=BUCKET, Key=key)["Body"].iter_chunks(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def object_keys(s3, prefix: str, *, markers: bool = False) -> list[str]:
    """Keys under ``prefix``; chute's upload markers (.chute-uploads/) only if asked for."""
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return [k for k in keys if markers or "/.chute-uploads/" not in f"/{k}"]


def upload_markers(s3, prefix: str) -> list[str]:
    return [k for k in object_keys(s3, prefix, markers=True) if "/.chute-uploads/" in f"/{k}"]


def pending_uploads(s3, prefix: str) -> list[dict]:
    return s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])


def random_file(path: Path, size: int, seed: int = 0) -> Path:
    """Incompressible test data, written in 16 MiB blocks (no giant buffer in memory)."""
    import random

    rng = random.Random(seed)
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            n = min(remaining, 16 << 20)
            f.write(rng.randbytes(n))
            remaining -= n
    return path


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


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


@pytest.fixture
def mount_factory(store: EmbeddedStore, tmp_path: Path):
    """Start ``chute mount`` on a fresh directory with a fresh prefix; unmount at the end."""
    mounts: list[Mount] = []

    def start(*options: str, prefix: str | None = None,
              server: EmbeddedStore | None = None) -> Mount:
        server = server or store
        prefix = prefix or f"t-{uuid.uuid4().hex[:10]}/"
        path = tmp_path / f"mnt{len(mounts)}"
        path.mkdir()
        log_path = tmp_path / f"mount{len(mounts)}.log"
        env = {**os.environ, "AWS_ACCESS_KEY_ID": server.access_key,
               "AWS_SECRET_ACCESS_KEY": server.secret_key, "AWS_REGION": server.region}
        env.pop("AWS_PROFILE", None)
        args = [sys.executable, "-m", "chute.fs.cli", "mount", str(path),
                f"s3://{BUCKET}/{prefix.rstrip('/')}", "--endpoint-url",
                server.endpoint_url, "-v", *options]
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        mount = Mount(path, prefix, proc, log_path, args)
        mounts.append(mount)
        deadline = time.monotonic() + 30
        while not is_mounted(path):
            if proc.poll() is not None:
                raise RuntimeError(f"chute mount exited {proc.returncode}:\n{mount.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"chute mount did not come up:\n{mount.log()}")
            time.sleep(0.05)
        return mount

    yield start
    for mount in mounts:
        with contextlib.suppress(Exception):
            mount.unmount()
