"""End to end: hostile names and neighbours on a real SeaweedFS (issue 13 items 2, 5, 8, 10,
14 and the file-and-directory case).

- SeaweedFS turns ``\\`` in a key into ``/``: the mount's probe finds that out, and names with
  a backslash are refused (EINVAL) instead of landing under another key.
- A file this mount wrote and another client deleted disappears after LOOKUP_TTL (ls, and a
  second rsync sends it again).
- Keys whose last component cannot be a file name (a control character) are left out of
  listings with one quoted log line; creating such a name is EINVAL.
- Names in log lines are quoted: a newline or an ANSI escape in a name forges nothing.
- Keys ``coll`` and ``coll/inner``: the directory shows, ``rm -rf coll`` exits non-zero while
  the file remains, and a second ``rm -rf`` removes it.
- A directory rename whose marker key would pass 1024 bytes is ENAMETOOLONG, not EIO.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from chute.fs.lookups import LOOKUP_TTL
from chute.fs.namespace import MAX_KEY_BYTES
from tests.support.mounts import requires_fuse
from tests.support.store import BUCKET, object_keys

pytestmark = [pytest.mark.e2e, requires_fuse]


def errno_of(call) -> int | None:  # type: ignore[no-untyped-def]
    try:
        call()
    except OSError as exc:
        return exc.errno
    return None


def write(path: Path, data: bytes = b"data\n") -> None:
    with open(path, "wb") as f:
        f.write(data)


def test_backslash_names_are_refused_where_the_store_rewrites_them(mount_factory, s3
                                                                   ) -> None:
    mount = mount_factory()
    assert "does not keep a backslash in a key" in mount.log()
    shell = subprocess.run(["sh", "-c", f"echo data > '{mount.path}/trail\\'"],
                           capture_output=True, text=True, timeout=30)
    assert shell.returncode != 0 and "Invalid argument" in shell.stderr
    (mount.path / "pub" / "rootonly").mkdir(parents=True)
    write(mount.path / "pub" / "rootonly" / "config", b"root's\n")
    assert errno_of(lambda: write(mount.path / "pub" / "rootonly\\config", b"evil")) == \
        errno.EINVAL
    assert errno_of(lambda: os.mkdir(mount.path / "a\\b")) == errno.EINVAL
    assert errno_of(lambda: os.rename(mount.path / "pub" / "rootonly" / "config",
                                      mount.path / "pub" / "x\\y")) == errno.EINVAL
    assert errno_of(lambda: os.stat(mount.path / "pub" / "rootonly\\config")) == errno.ENOENT
    assert s3.get_object(Bucket=BUCKET, Key=mount.key("pub/rootonly/config"))[
        "Body"].read() == b"root's\n"
    assert object_keys(s3, mount.prefix, markers=True) == [
        mount.key("pub/"), mount.key("pub/rootonly/"), mount.key("pub/rootonly/config")]
    assert "backslash" in mount.log() and "refused" in mount.log()


def test_a_file_this_mount_wrote_and_another_client_deleted_is_gone(mount_factory, s3,
                                                                    tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("f1", "f2", "f3"):
        (src / name).write_bytes(name.encode() * 100)
    mount = mount_factory()
    subprocess.run(["rsync", "-a", f"{src}/", f"{mount.path}/rs/"], check=True, timeout=60)
    assert sorted(os.listdir(mount.path / "rs")) == ["f1", "f2", "f3"]
    os.stat(mount.path / "rs" / "f2")
    s3.delete_object(Bucket=BUCKET, Key=mount.key("rs/f2"))
    time.sleep(LOOKUP_TTL + 0.5)
    listed = subprocess.run(["ls", "-l", str(mount.path / "rs")], capture_output=True,
                            text=True, check=True, timeout=30).stdout
    assert " f2\n" not in listed and " f1\n" in listed
    assert errno_of(lambda: os.stat(mount.path / "rs" / "f2")) == errno.ENOENT
    stats = subprocess.run(["rsync", "-a", "--stats", f"{src}/", f"{mount.path}/rs/"],
                           capture_output=True, text=True, check=True, timeout=60).stdout
    assert re.search(r"Number of regular files transferred: 1\b", stats), stats
    assert s3.get_object(Bucket=BUCKET, Key=mount.key("rs/f2"))["Body"].read() == \
        b"f2" * 100


def test_keys_with_control_characters_are_left_out(mount_factory, s3) -> None:
    mount = mount_factory()
    for rel in ("d/ok", "d/ctl\x01x", "d/nl\nforged line", "d/esc\x1b[31mred"):
        s3.put_object(Bucket=BUCKET, Key=mount.key(rel), Body=b"1")
    assert sorted(os.listdir(mount.path / "d")) == ["ok"]  # no EIO, no phantom
    listed = subprocess.run(["ls", "-l", str(mount.path / "d")], capture_output=True,
                            text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert errno_of(lambda: os.stat(mount.path / "d" / "ctl\x01x")) == errno.ENOENT
    assert errno_of(lambda: write(mount.path / "d" / "new\x01")) == errno.EINVAL
    assert errno_of(lambda: os.mkdir(mount.path / "d" / "dir\x7f")) == errno.EINVAL
    log = mount.log()
    assert "key(s) not shown" in log and "ctl\\x01x" in log
    assert "\x01" not in log and "\x1b" not in log


def test_log_lines_quote_hostile_names(mount_factory) -> None:
    """A name with a newline and ANSI escapes (refused: it holds control characters) shows
    in the mount's log quoted: no raw newline, no escape, no forged line."""
    mount = mount_factory()
    forged = "2026-01-01 00:00:00 ERROR chute: forged"
    evil = f"evil\n{forged}\x1b[31mred\x1b[0m"
    assert errno_of(lambda: write(mount.path / evil)) == errno.EINVAL
    log = mount.log()
    assert "\x1b" not in log
    assert not any(line.startswith(forged) for line in log.splitlines())
    assert repr(evil) in log


def test_a_name_both_file_and_directory(mount_factory, s3) -> None:
    """Decided in fs/namespace.py: the directory shows; rm -rf never exits 0 while the name
    still holds something, and nothing is hidden for good."""
    mount = mount_factory()
    s3.put_object(Bucket=BUCKET, Key=mount.key("coll"), Body=b"file")
    s3.put_object(Bucket=BUCKET, Key=mount.key("coll/inner"), Body=b"inner")
    assert os.listdir(mount.path) == ["coll"] and (mount.path / "coll").is_dir()
    assert os.listdir(mount.path / "coll") == ["inner"]
    first = subprocess.run(["rm", "-rf", str(mount.path / "coll")], capture_output=True,
                           text=True, timeout=30)
    assert first.returncode != 0 and "not empty" in first.stderr
    assert object_keys(s3, mount.prefix) == [mount.key("coll")]
    time.sleep(LOOKUP_TTL + 0.2)  # the kernel's cached entry of the directory expires
    assert (mount.path / "coll").is_file()
    subprocess.run(["rm", "-rf", str(mount.path / "coll")], check=True, timeout=30)
    assert object_keys(s3, mount.prefix) == []
    assert "hidden behind" in mount.log() or "which it hid" in mount.log()


def test_a_directory_rename_past_the_key_limit_is_enametoolong(mount_factory, s3) -> None:
    mount = mount_factory()
    deep = mount.path
    for level in "abc":
        deep = deep / (level * 255)
    deep.mkdir(parents=True)
    (mount.path / "e").mkdir()
    # The new name's file key is exactly MAX_KEY_BYTES; its marker (with "/") is one more.
    name = "n" * (MAX_KEY_BYTES - len(mount.key(f"{'a' * 255}/{'b' * 255}/{'c' * 255}/")))
    assert errno_of(lambda: os.rename(mount.path / "e", deep / name)) == errno.ENAMETOOLONG
    assert errno_of(lambda: os.mkdir(deep / name)) == errno.ENAMETOOLONG
    assert (mount.path / "e").is_dir()
    assert mount.key("e/") in object_keys(s3, mount.prefix)
    assert "EIO" not in mount.log()
