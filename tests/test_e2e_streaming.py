"""End to end: real `chute mount` processes, real tools, a real SeaweedFS, checked with boto3."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import xxhash

from chute.fs.embedded_store import EmbeddedStore
from tests.support.files import random_file, sha256_file
from tests.support.mounts import requires_fuse
from tests.support.store import BUCKET, object_keys, pending_uploads, sha256_object, upload_markers

pytestmark = [pytest.mark.e2e, requires_fuse]

MiB = 1 << 20
SLICE = 5 * MiB


def xxh128_file(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def object_tags(s3, key: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]}


def test_cp_one_gib_lands_byte_identical(mount_factory, s3, tmp_path: Path) -> None:
    src = random_file(tmp_path / "big", 1024 * MiB, seed=1)
    mount = mount_factory()
    subprocess.run(["cp", str(src), str(mount.path / "big")], check=True, timeout=300)
    key = mount.key("big")
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == src.stat().st_size
    assert sha256_object(s3, key) == sha256_file(src)
    expected_hash = xxh128_file(src)
    assert object_tags(s3, key)["chute-xxh3-128"] == expected_hash
    assert os.getxattr(mount.path / "big", "user.chute.xxh3_128").decode() == expected_hash
    assert os.stat(mount.path / "big").st_size == src.stat().st_size
    assert pending_uploads(s3, mount.prefix) == []


@pytest.mark.parametrize("size", [0, 1, SLICE - 1, SLICE, SLICE + 1, 3 * SLICE])
def test_slice_boundaries(mount_factory, s3, tmp_path: Path, size: int) -> None:
    src = random_file(tmp_path / "src", size, seed=size)
    mount = mount_factory("--slice-size", "5MiB", "--ring-size", "20MiB")
    subprocess.run(["cp", str(src), str(mount.path / "f")], check=True, timeout=60)
    key = mount.key("f")
    assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == size
    assert sha256_object(s3, key) == sha256_file(src)
    assert object_tags(s3, key)["chute-xxh3-128"] == xxh128_file(src)
    assert pending_uploads(s3, mount.prefix) == []


def test_twenty_concurrent_cp_into_eight_slots(mount_factory, s3, tmp_path: Path) -> None:
    sources = [random_file(tmp_path / f"s{i}", 12 * MiB + i * 4099, seed=i) for i in range(20)]
    mount = mount_factory("--slice-size", "5MiB", "--ring-size", "40MiB")
    procs = [subprocess.Popen(["cp", str(s), str(mount.path / s.name)]) for s in sources]
    assert [p.wait(timeout=300) for p in procs] == [0] * 20
    for src in sources:
        assert sha256_object(s3, mount.key(src.name)) == sha256_file(src)
    assert pending_uploads(s3, mount.prefix) == []


def test_round_robin_over_more_files_than_slots_fails_fast(mount_factory, s3) -> None:
    mount = mount_factory("--slice-size", "5MiB", "--ring-size", "20MiB")  # 4 slots
    names = [f"f{i}" for i in range(1, 13)]
    started = time.monotonic()
    result = subprocess.run(
        "yes | head -c 200M | tee " + " ".join(str(mount.path / n) for n in names)
        + " > /dev/null",
        shell=True, capture_output=True, text=True, timeout=240,
    )
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "No buffer space available" in result.stderr
    assert elapsed < 120, f"took {elapsed:.0f}s"
    assert "--ring-size" in mount.log()
    expected = ("y\n" * (100 * MiB))[: 200 * MiB].encode()
    present = set(object_keys(s3, mount.prefix))
    assert present, "the files that held slots should have landed"
    assert len(present) < len(names), "some writes must have failed"
    for key in present:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert body == expected, f"{key} landed but differs"
    deadline = time.monotonic() + 30
    while pending_uploads(s3, mount.prefix) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pending_uploads(s3, mount.prefix) == []
    # The mount is still healthy afterwards.
    (mount.path / "after").write_bytes(b"still works")
    assert s3.get_object(Bucket=BUCKET, Key=mount.key("after"))["Body"].read() == b"still works"


def test_backward_write_into_sent_data_is_einval_and_no_object(mount_factory, s3) -> None:
    mount = mount_factory("--slice-size", "5MiB", "--ring-size", "20MiB")
    fd = os.open(mount.path / "patched", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, b"a" * (17 * MiB))
        # The first and the latest full slice are retained for header patches; the
        # second has been sent.
        with pytest.raises(OSError) as excinfo:
            os.pwrite(fd, b"header", 6 * MiB)
        assert excinfo.value.errno == errno.EINVAL
    finally:
        with pytest.raises(OSError):
            os.close(fd)
    assert object_keys(s3, mount.prefix) == []
    assert pending_uploads(s3, mount.prefix) == []
    assert "goes back into bytes already sent" in mount.log()
    assert "write: returning EINVAL" in mount.log()


def test_patch_inside_current_slice_and_forward_gap_are_honoured(mount_factory, s3) -> None:
    mount = mount_factory("--slice-size", "5MiB", "--ring-size", "20MiB")
    with open(mount.path / "sparse", "wb") as f:
        f.write(b"x" * 1000)
        f.seek(10)
        f.write(b"PATCH")
        f.seek(7 * MiB)
        f.write(b"tail")
    expected = bytearray(b"x" * 1000)
    expected[10:15] = b"PATCH"
    expected += bytes(7 * MiB - 1000) + b"tail"
    body = s3.get_object(Bucket=BUCKET, Key=mount.key("sparse"))["Body"].read()
    assert body == bytes(expected)


def test_read_of_existing_object_is_eacces(mount_factory) -> None:
    mount = mount_factory()
    (mount.path / "x").write_bytes(b"data")
    with pytest.raises(PermissionError):
        (mount.path / "x").read_bytes()
    assert "write-only" in mount.log()


def test_listing_and_mkdir(mount_factory, s3) -> None:
    mount = mount_factory()
    (mount.path / "d1" / "d2").mkdir(parents=True)
    (mount.path / "d1" / "d2" / "file").write_bytes(b"12345")
    (mount.path / "top").write_bytes(b"")
    assert sorted(os.listdir(mount.path)) == ["d1", "top"]
    vfs = os.statvfs(mount.path)
    assert vfs.f_namemax == 255 and vfs.f_bavail * vfs.f_frsize >= 2**50
    assert os.listdir(mount.path / "d1") == ["d2"]
    assert os.stat(mount.path / "d1" / "d2" / "file").st_size == 5
    assert set(object_keys(s3, mount.prefix)) == {
        mount.key("d1/"), mount.key("d1/d2/"), mount.key("d1/d2/file"), mount.key("top"),
    }


def test_sigterm_with_open_file_aborts_upload(mount_factory, s3) -> None:
    mount = mount_factory("--slice-size", "5MiB", "--ring-size", "20MiB")
    fd = os.open(mount.path / "open", os.O_WRONLY | os.O_CREAT)
    os.write(fd, os.urandom(12 * MiB))
    deadline = time.monotonic() + 20
    while not pending_uploads(s3, mount.prefix) and time.monotonic() < deadline:
        time.sleep(0.1)
    mount.proc.send_signal(signal.SIGTERM)
    assert mount.proc.wait(30) == 0
    with pytest.raises(OSError):
        os.write(fd, b"more")
        os.close(fd)
    assert object_keys(s3, mount.prefix) == []
    assert pending_uploads(s3, mount.prefix) == []
    assert upload_markers(s3, mount.prefix) == []
    assert "abandoning upload" in mount.log()


def test_store_stopped_mid_copy_fails_cp_and_leaves_nothing(mount_factory, tmp_path: Path
                                                            ) -> None:
    import boto3

    own = EmbeddedStore(tmp_path / "own-store", bucket=BUCKET)
    own.start()
    try:
        client = boto3.client("s3", endpoint_url=own.endpoint_url, region_name=own.region,
                              aws_access_key_id=own.access_key,
                              aws_secret_access_key=own.secret_key)
        src = random_file(tmp_path / "src", 400 * MiB, seed=7)
        mount = mount_factory("--slice-size", "8MiB", "--ring-size", "32MiB",
                              "--retry-budget", "4", "--stall-timeout", "3",
                              server=own)
        cp = subprocess.Popen(["cp", str(src), str(mount.path / "victim")],
                              stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not pending_uploads(client, mount.prefix) and time.monotonic() < deadline:
            time.sleep(0.05)
        own.stop()
        _, stderr = cp.communicate(timeout=120)
        assert cp.returncode != 0, "cp must not succeed when the object did not land"
        assert "Input/output error" in stderr
        own.start()
        deadline = time.monotonic() + 60
        while pending_uploads(client, mount.prefix) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert pending_uploads(client, mount.prefix) == [], mount.log()[-3000:]
        assert object_keys(client, mount.prefix) == []
    finally:
        own.stop()


def test_fsync_waits_without_ending_the_file(mount_factory, s3) -> None:
    """rsync and mkstemp open O_RDWR; fsync reports progress but the file goes on."""
    mount = mount_factory("--slice-size", "5MiB", "--ring-size", "20MiB")
    first, second = os.urandom(11 * MiB), os.urandom(3 * MiB)
    fd = os.open(mount.path / "synced", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, first)
        os.fsync(fd)
        assert object_keys(s3, mount.prefix) == [], "fsync must not finalize"
        os.write(fd, second)
    finally:
        os.close(fd)
    assert s3.get_object(Bucket=BUCKET, Key=mount.key("synced"))["Body"].read() == first + second


def test_close_of_a_dup_does_not_end_the_file(mount_factory, s3) -> None:
    """`exec 3>f` lends fd 3 to children; their closes are not the end of the file."""
    mount = mount_factory()
    target = mount.path / "dup"
    script = f"exec 3>{target}; echo one >&3; (echo two >&3); sh -c 'echo three >&3'; exec 3>&-"
    subprocess.run(["bash", "-c", script], check=True, timeout=30)
    body = s3.get_object(Bucket=BUCKET, Key=mount.key("dup"))["Body"].read()
    assert body == b"one\ntwo\nthree\n"


def test_dd_with_large_blocks(mount_factory, s3, tmp_path: Path) -> None:
    """dd reopens its output onto fd 1 and closes the original: that flush is not the end."""
    src = random_file(tmp_path / "img", 37 * MiB + 123, seed=3)
    mount = mount_factory("--slice-size", "8MiB", "--ring-size", "32MiB")
    subprocess.run(["dd", f"if={src}", f"of={mount.path / 'img'}", "bs=4M", "status=none"],
                   check=True, timeout=60)
    assert sha256_object(s3, mount.key("img")) == sha256_file(src)


def test_sigkilled_mount_leftovers_are_aborted_by_the_next_mount(mount_factory, s3) -> None:
    mount = mount_factory("--slice-size", "5MiB", "--ring-size", "20MiB")
    fd = os.open(mount.path / "orphan", os.O_WRONLY | os.O_CREAT)
    os.write(fd, os.urandom(17 * MiB))
    deadline = time.monotonic() + 20
    while not upload_markers(s3, mount.prefix) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(pending_uploads(s3, mount.prefix)) == 1
    assert os.listdir(mount.path) == ["orphan"], "the marker directory is hidden"
    mount.proc.send_signal(signal.SIGKILL)
    mount.proc.wait(10)
    with pytest.raises(OSError) as excinfo:
        os.write(fd, b"more")
    assert excinfo.value.errno == errno.ENOTCONN
    with pytest.raises(OSError):
        os.close(fd)  # the last close cannot succeed either
    subprocess.run(["fusermount3", "-u", "-z", str(mount.path)], check=False)
    assert object_keys(s3, mount.prefix) == []
    assert len(pending_uploads(s3, mount.prefix)) == 1  # left behind, as a crash leaves it
    again = mount_factory(prefix=mount.prefix)
    assert pending_uploads(s3, mount.prefix) == []
    assert upload_markers(s3, mount.prefix) == []
    assert object_keys(s3, mount.prefix) == []
    assert "aborted leftover multipart upload" in again.log()
