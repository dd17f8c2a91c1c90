"""A late patch end to end, with the store failing in each phase of the recomposition.

A real mount (5 MiB slices) over the session's SeaweedFS seen through the fault proxy. A file
replacing an existing object is opened O_RDWR (``--patch-back auto`` makes its upload at a
temporary key), written 4 slices and a bit long, then patched 8 bytes in slice 1, which was
sent by then: a late patch. At close the temporary object is completed and the object
composed from it (copies, one ranged GET of T, one re-sent slice, Complete).

With no fault the object is exact. With the store refusing (403, final) the copy, the ranged
GET, T's Complete or the object's Complete, ``close()`` is EIO, the old object is what it was,
and nothing is left: no temporary object, no pending upload, no marker. A patch budget too
small for the patch: the write is ENOBUFS, the old object as it was.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from chute.fs.embedded_store import EmbeddedStore
from chute.uploader.leftovers import TEMP_DIR
from tests.support.faultproxy import Fault, FaultProxy, Kind, StallRequest, Status
from tests.support.files import close_keeping_first
from tests.support.mounts import requires_fuse
from tests.support.store import BUCKET, object_keys, pending_uploads, sha256_object

MiB = 1 << 20
SLICE = 5 * MiB
OPTIONS = ("--slice-size", "5MiB", "--ring-size", "40MiB", "--retry-budget", "10",
           "--stall-timeout", "5")
SIZE = 4 * SLICE + 12_345
PATCH_AT = SLICE + 1000
PATCH = b"PATCHED!"
OLD = b"the old object\n" * 1000


@pytest.fixture
def proxy(store: EmbeddedStore) -> Iterator[FaultProxy]:
    """Requested before mount_factory, so it is stopped only after the mounts are gone."""
    with FaultProxy.for_store(store) as p:
        yield p


def write_with_late_patch(path: str, data: bytes, patch: bytes = PATCH) -> OSError | None:
    """Write ``data`` through an O_RDWR descriptor, then ``patch`` at PATCH_AT (slice 1, sent
    by then); the first error a write or the close gave."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    error: OSError | None = None
    try:
        view, offset = memoryview(data), 0
        while offset < len(data):
            offset += os.pwrite(fd, view[offset : offset + MiB], offset)
        os.pwrite(fd, patch, PATCH_AT)
    except OSError as exc:
        error = exc
    return close_keeping_first(fd, error)


def leftovers_of(s3: Any, prefix: str) -> list[str]:
    """Temporary objects, upload markers and pending uploads under ``prefix``."""
    keys = [k for k in object_keys(s3, prefix, markers=True)
            if f"/{TEMP_DIR}/" in f"/{k}" or "/.chute-uploads/" in f"/{k}"]
    return keys + [u["Key"] for u in pending_uploads(s3, prefix)]


def settle(s3: Any, prefix: str, seconds: float = 10) -> list[str]:
    """What is left once the mount had ``seconds`` to clean up."""
    deadline = time.monotonic() + seconds
    while (left := leftovers_of(s3, prefix)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


PHASES = {
    "copy": Status(403, "AccessDenied", kind=Kind.UPLOAD_PART_COPY),
    "ranged GET": Status(403, "AccessDenied", kind=Kind.GET_OBJECT),
    "temp Complete": Status(403, "AccessDenied", kind=Kind.COMPLETE_MULTIPART_UPLOAD),
    "final Complete": Status(403, "AccessDenied", kind=Kind.COMPLETE_MULTIPART_UPLOAD,
                             after=1),
}


@pytest.mark.e2e
@requires_fuse
@pytest.mark.parametrize("phase", [None, *PHASES])
def test_late_patch_lands_or_fails_leaving_the_old_object(
        phase: str | None, proxy: FaultProxy, mount_factory: Any, s3: Any) -> None:
    mount = mount_factory(*OPTIONS, server=proxy)
    key = mount.key("f.bin")
    s3.put_object(Bucket=BUCKET, Key=key, Body=OLD)
    data = random.Random(17).randbytes(SIZE)
    fault: Fault | None = PHASES.get(phase) if phase else None
    proxy.set_scenario(fault)
    error = write_with_late_patch(str(mount.path / "f.bin"), data)
    injected = proxy.log
    proxy.set_scenario(None)
    left = settle(s3, mount.prefix)
    log = mount.log()
    assert mount.unmount() == 0, log
    context = f"phase {phase}: error {error!r}, injected {injected}\n--- log ---\n{log}"
    if phase is None:
        want = bytearray(data)
        want[PATCH_AT : PATCH_AT + len(PATCH)] = PATCH
        assert error is None, context
        assert sha256_object(s3, key) == hashlib.sha256(want).hexdigest(), context
        assert "composed from its temporary object" in log, context
    else:
        assert injected, f"the fault was never injected: {context}"
        assert error is not None and error.errno == errno.EIO, context
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == OLD, context
    assert left == [], f"left behind: {left}: {context}"


@pytest.mark.e2e
@requires_fuse
def test_patch_budget_exhausted_is_enobufs_and_leaves_the_old_object(
        mount_factory: Any, s3: Any) -> None:
    mount = mount_factory(*OPTIONS, "--patch-budget", "4KiB")
    key = mount.key("f.bin")
    s3.put_object(Bucket=BUCKET, Key=key, Body=OLD)
    error = write_with_late_patch(str(mount.path / "f.bin"), random.Random(3).randbytes(SIZE),
                                  patch=b"x" * 8192)
    left = settle(s3, mount.prefix)
    log = mount.log()
    assert mount.unmount() == 0, log
    assert error is not None and error.errno == errno.ENOBUFS, (error, log)
    assert "--patch-budget" in log
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == OLD
    assert left == [], left


WRITER = """
import os, random, sys
path, size, at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = random.Random(5).randbytes(size)
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
for offset in range(0, size, 1 << 20):
    os.pwrite(fd, data[offset : offset + (1 << 20)], offset)
os.pwrite(fd, b"PATCHED!", at)
os.close(fd)
"""


@pytest.mark.e2e
@requires_fuse
def test_a_mount_killed_mid_recompose_leaves_a_temporary_the_next_mount_deletes(
        proxy: FaultProxy, mount_factory: Any, s3: Any) -> None:
    """SIGKILL while the object's Complete hangs (T complete, K's upload pending): T and both
    markers stay; the next mount of the prefix deletes T and aborts K's upload, and the old
    object is what it was."""
    mount = mount_factory(*OPTIONS, server=proxy)
    key = mount.key("f.bin")
    s3.put_object(Bucket=BUCKET, Key=key, Body=OLD)
    proxy.set_scenario(StallRequest(120, kind=Kind.COMPLETE_MULTIPART_UPLOAD, after=1))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(mount.path / "f.bin"),
                               str(SIZE), str(PATCH_AT)])
    try:
        deadline = time.monotonic() + 60
        while not (proxy.log and [k for k in object_keys(s3, mount.prefix)
                                  if f"/{TEMP_DIR}/" in f"/{k}"]):
            assert time.monotonic() < deadline, mount.log()
            time.sleep(0.2)
        mount.proc.kill()
        mount.proc.wait(10)
    finally:
        writer.kill()
        writer.wait(10)
    proxy.set_scenario(None)
    assert leftovers_of(s3, mount.prefix), "T and the markers should be there after a crash"
    mount.unmount()
    again = mount_factory(*OPTIONS, prefix=mount.prefix)
    left = settle(s3, mount.prefix, seconds=20)
    log = again.log()
    assert again.unmount() == 0, log
    assert left == [], f"left behind: {left}\n{log}"
    assert "deleted leftover temporary object" in log, log
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == OLD
