"""End to end: the mount policies ``--no-overwrite`` and ``--no-delete``.

Each test drives a real mount with the tools a user would (cp, rm, mv, Python I/O), checks
the errno the tool got, and then checks with boto3 that the bucket holds exactly what it held
before the refused operation: the objects byte-identical, and no multipart upload left behind.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.files import random_file, sha256_file
from tests.support.mounts import requires_fuse
from tests.support.store import BUCKET, object_keys, pending_uploads, sha256_object, upload_markers

pytestmark = [pytest.mark.e2e, requires_fuse]

MiB = 1 << 20
SMALL_MOUNT = ("--slice-size", "5MiB", "--ring-size", "20MiB")


def body(s3, key: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def errno_of(call, *args: object) -> int:
    with pytest.raises(OSError) as excinfo:
        call(*args)
    return excinfo.value.errno


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def assert_nothing_left(s3, prefix: str) -> None:
    assert pending_uploads(s3, prefix) == []
    assert upload_markers(s3, prefix) == []


def test_no_overwrite_refuses_every_way_of_replacing(mount_factory, s3, tmp_path: Path
                                                     ) -> None:
    mount = mount_factory("--no-overwrite", *SMALL_MOUNT)
    root = mount.path
    first = random_file(tmp_path / "first", 300_000, seed=1)
    second = random_file(tmp_path / "second", 7 * MiB, seed=2)
    subprocess.run(["cp", str(first), str(root / "a")], check=True, timeout=60)
    assert sha256_object(s3, mount.key("a")) == sha256_file(first)

    # cp onto an existing name opens it with O_TRUNC.
    result = run("cp", str(second), str(root / "a"))
    assert result.returncode != 0
    assert "File exists" in result.stderr
    assert errno_of(open, root / "a", "wb") == errno.EEXIST
    assert errno_of(os.open, root / "a", os.O_WRONLY | os.O_CREAT, 0o644) == errno.EEXIST
    assert errno_of(os.open, root / "a", os.O_WRONLY) == errno.EEXIST
    assert "exists and the mount has --no-overwrite" in mount.log()

    # An object written by something else is protected the same way.
    s3.put_object(Bucket=BUCKET, Key=mount.key("theirs"), Body=b"their bytes")
    result = run("cp", str(first), str(root / "theirs"))
    assert result.returncode != 0 and "File exists" in result.stderr

    # rename onto an existing name, known to the mount or not (it appeared in the bucket
    # after the mount last listed the directory, so the kernel's lookup said it was free).
    subprocess.run(["cp", str(second), str(root / "new")], check=True, timeout=60)
    assert errno_of(os.rename, root / "new", root / "a") == errno.EEXIST
    assert run("mv", str(root / "new"), str(root / "theirs")).returncode != 0
    os.listdir(root)
    s3.put_object(Bucket=BUCKET, Key=mount.key("late"), Body=b"late bytes")
    assert errno_of(os.rename, root / "new", root / "late") == errno.EEXIST
    assert "rename onto 'late' refused" in mount.log()  # names are quoted in the log

    # New names still work, renames onto free names too.
    os.rename(root / "new", root / "renamed")
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"fresh")

    assert sha256_object(s3, mount.key("a")) == sha256_file(first)
    assert body(s3, mount.key("theirs")) == b"their bytes"
    assert body(s3, mount.key("late")) == b"late bytes"
    assert sha256_object(s3, mount.key("renamed")) == sha256_file(second)
    assert body(s3, mount.key("d/f")) == b"fresh"
    assert set(object_keys(s3, mount.prefix)) == {
        mount.key(k) for k in ("a", "theirs", "late", "renamed", "d/", "d/f")}
    assert_nothing_left(s3, mount.prefix)


@pytest.mark.parametrize("size", [100_000, 12 * MiB + 5], ids=["put-object", "multipart"])
def test_no_overwrite_name_taken_while_writing_fails_at_close(mount_factory, s3, size: int
                                                              ) -> None:
    """The key appears in the bucket between open and close: the upload is a conditional
    create (If-None-Match: *), so the last close fails with EEXIST and the object that
    appeared is untouched."""
    mount = mount_factory("--no-overwrite", *SMALL_MOUNT)
    data = random_file(mount.log_path.with_name("data"), size, seed=size).read_bytes()
    fd = os.open(mount.path / "race", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data[: size // 2])
        s3.put_object(Bucket=BUCKET, Key=mount.key("race"), Body=b"got here first")
        os.write(fd, data[size // 2:])
    finally:
        assert errno_of(os.close, fd) == errno.EEXIST
    assert body(s3, mount.key("race")) == b"got here first"
    assert object_keys(s3, mount.prefix) == [mount.key("race")]
    assert_nothing_left(s3, mount.prefix)
    assert "--no-overwrite: EEXIST" in mount.log()
    assert os.stat(mount.path / "race").st_size == len(b"got here first")


def test_no_delete_refuses_unlink_rename_and_rmdir(mount_factory, s3, tmp_path: Path) -> None:
    mount = mount_factory("--no-delete")
    root = mount.path
    src = random_file(tmp_path / "src", 200_000, seed=3)
    subprocess.run(["cp", str(src), str(root / "f")], check=True, timeout=60)
    (root / "g").write_bytes(b"g")
    (root / "d").mkdir()
    (root / "full").mkdir()
    (root / "full" / "x").write_bytes(b"x")
    before = set(object_keys(s3, mount.prefix))

    result = run("rm", str(root / "f"))
    assert result.returncode != 0 and "Operation not permitted" in result.stderr
    assert errno_of(os.unlink, root / "f") == errno.EPERM
    result = run("mv", str(root / "f"), str(root / "moved"))
    assert result.returncode != 0
    assert errno_of(os.rename, root / "f", root / "moved") == errno.EPERM
    assert errno_of(os.rename, root / "f", root / "g") == errno.EPERM
    assert errno_of(os.rmdir, root / "d") == errno.EPERM
    assert errno_of(os.rename, root / "d", root / "e") == errno.EPERM
    assert run("rm", "-r", str(root / "full")).returncode != 0
    assert "the mount has --no-delete" in mount.log()

    assert set(object_keys(s3, mount.prefix)) == before
    assert sha256_object(s3, mount.key("f")) == sha256_file(src)
    assert body(s3, mount.key("g")) == b"g"
    assert body(s3, mount.key("full/x")) == b"x"
    assert sorted(os.listdir(root)) == ["d", "f", "full", "g"]

    # Replacing is --no-overwrite's business, not --no-delete's.
    (root / "g").write_bytes(b"new g")
    assert body(s3, mount.key("g")) == b"new g"
    assert_nothing_left(s3, mount.prefix)


def test_policies_from_the_config_file(mount_factory, s3, tmp_path: Path) -> None:
    config = tmp_path / "chute.toml"
    config.write_text("no_overwrite = true\nno-delete = true\n")
    mount = mount_factory("--config", str(config))
    (mount.path / "f").write_bytes(b"kept")
    assert errno_of(open, mount.path / "f", "wb") == errno.EEXIST
    assert errno_of(os.unlink, mount.path / "f") == errno.EPERM
    assert body(s3, mount.key("f")) == b"kept"
    assert_nothing_left(s3, mount.prefix)
