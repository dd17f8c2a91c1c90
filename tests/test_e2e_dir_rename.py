"""End to end: renaming a non-empty directory (fs/dir_moves.py, uploader/moves.py) with the
real ``mv`` and rename(2) through a real mount, checked with boto3: every object at its new
key byte-exact with its metadata, none left at the old keys or in the move-marker area, and
rename(2)'s refusals (ENOTEMPTY, ENOTDIR, EINVAL, EOPNOTSUPP beyond the limit) prompt."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from chute.uploader import leftovers, moves
from tests.support.files import random_file, sha256_file
from tests.support.mounts import requires_fuse
from tests.support.store import BUCKET, object_keys, pending_uploads, sha256_object

pytestmark = [pytest.mark.e2e, requires_fuse]

MiB = 1 << 20


def _errno(call) -> int | None:  # type: ignore[no-untyped-def]
    try:
        call()
    except OSError as exc:
        return exc.errno
    return None


def test_mv_of_a_small_tree_moves_every_object(mount_factory, s3, tmp_path: Path) -> None:
    mount = mount_factory("--slice-size", "5MiB", "--ring-size", "20MiB",
                          "--rename-dir-max-objects", "6")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    random_file(src / "a", 300_000, seed=1)
    (src / "b").write_bytes(b"small")
    (src / "empty").write_bytes(b"")
    random_file(src / "sub" / "c", 6 * MiB + 5, seed=2)  # a multipart object
    subprocess.run(["cp", "-r", "--preserve=mode,timestamps", str(src), str(mount.path / "d")],
                   check=True, timeout=60)
    os.chmod(mount.path / "d" / "a", 0o600)
    mode_before = s3.head_object(Bucket=BUCKET, Key=mount.key("d/a"))["Metadata"]
    result = subprocess.run(["mv", str(mount.path / "d"), str(mount.path / "d2")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + mount.log()[-2000:]
    rels = ["a", "b", "empty", "sub/c"]
    keys = set(object_keys(s3, mount.prefix, markers=True))
    assert keys == {mount.key(f"d2/{rel}") for rel in rels} | {mount.key("d2/"),
                                                               mount.key("d2/sub/")}, keys
    for rel in rels:
        assert sha256_object(s3, mount.key(f"d2/{rel}")) == sha256_file(src / rel), rel
    assert s3.head_object(Bucket=BUCKET, Key=mount.key("d2/a"))["Metadata"] == mode_before
    assert sorted(os.listdir(mount.path / "d2")) == ["a", "b", "empty", "sub"]
    assert not (mount.path / "d").exists()
    assert os.stat(mount.path / "d2" / "sub" / "c").st_size == 6 * MiB + 5
    assert pending_uploads(s3, mount.prefix) == []

    # rename(2)'s rules
    (mount.path / "full").mkdir()
    (mount.path / "full" / "x").write_bytes(b"x")
    (mount.path / "empty-target").mkdir()
    (mount.path / "file").write_bytes(b"f")
    assert _errno(lambda: os.rename(mount.path / "d2", mount.path / "full")) == errno.ENOTEMPTY
    assert _errno(lambda: os.rename(mount.path / "d2", mount.path / "file")) == errno.ENOTDIR
    assert _errno(lambda: os.rename(mount.path / "d2", mount.path / "d2" / "sub" / "in")) == \
        errno.EINVAL
    os.rename(mount.path / "full", mount.path / "empty-target")  # an empty one is replaced
    assert os.listdir(mount.path / "empty-target") == ["x"]
    assert not (mount.path / "full").exists()

    # beyond --rename-dir-max-objects: the clear refusal, nothing copied
    (mount.path / "big").mkdir()
    for i in range(6):
        (mount.path / "big" / str(i)).write_bytes(b"%d" % i)
    before = set(object_keys(s3, mount.prefix, markers=True))
    assert _errno(lambda: os.rename(mount.path / "big", mount.path / "big2")) == \
        errno.EOPNOTSUPP
    assert "--rename-dir-max-objects" in mount.log()
    assert set(object_keys(s3, mount.prefix, markers=True)) == before
    assert not [k for k in before if ".chute-moves/" in k]


def test_the_next_mount_finishes_a_move_its_mount_did_not(mount_factory, s3) -> None:
    """A mount killed after every copy landed (its marker says ``copied``): the next mount
    of the prefix deletes the sources and the marker before it serves."""
    prefix = f"t-{uuid.uuid4().hex[:10]}/"
    for rel, body in (("", b""), ("a", b"alpha"), ("sub/b", b"beta")):
        for top in ("d/", "e/"):
            s3.put_object(Bucket=BUCKET, Key=f"{prefix}{top}{rel}", Body=body)
    me = leftovers.this_process()
    dead = dataclasses.replace(me, start=me.start + 1).encode()  # the pid is another process
    marker = f"{prefix}{moves.MARKER_DIR}/{uuid.uuid4().hex}"
    s3.put_object(Bucket=BUCKET, Key=marker, Body=json.dumps({
        "version": 1, "owner": dead, "source": f"{prefix}d/", "dest": f"{prefix}e/",
        "keys": ["", "a", "sub/b"], "dest_existed": False, "phase": "copied"}).encode())
    mount = mount_factory(prefix=prefix)
    assert sorted(object_keys(s3, prefix, markers=True)) == [
        f"{prefix}e/", f"{prefix}e/a", f"{prefix}e/sub/b"]
    assert sorted(os.listdir(mount.path)) == ["e"]
    assert "finished (sources deleted)" in mount.log()
