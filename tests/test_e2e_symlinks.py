"""End to end: symbolic links through a real mount (fs/symlinks.py), with the real tools.

``rsync -a`` of a tree with a file, a directory link, a file link, relative, absolute and
dangling links: exit 0, every readlink right, and a second run (also after a remount) sends
nothing and re-creates no link. ``ln -s``/``readlink``/``touch -h``, ``cp -a`` of a tree with
links, and the objects as s3fs-fuse reads them. Hard links stay EOPNOTSUPP.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.mounts import requires_fuse
from tests.support.store import BUCKET, object_keys

pytestmark = [pytest.mark.e2e, requires_fuse]

LINK_MTIME_NS = 1_600_000_000_123_456_789
LINKS = {
    "dirlink": "sub",
    "filelink": "file",
    "sub/relative": "../file",
    "absolute": "/etc/hostname",
    "dangling": "no/such/target",
}
"""Link (relative name) -> target, as made by make_tree."""


def make_tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "file").write_bytes(b"hello\n")
    (root / "sub" / "inner").write_bytes(b"x" * 1000)
    for rel, target in LINKS.items():
        os.symlink(target, root / rel)
        os.utime(root / rel, ns=(LINK_MTIME_NS, LINK_MTIME_NS), follow_symlinks=False)


def rsync(*args: str) -> str:
    result = subprocess.run(["rsync", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def assert_links(root: Path) -> None:
    for rel, target in LINKS.items():
        st = os.lstat(root / rel)
        assert stat.S_ISLNK(st.st_mode), rel
        assert os.readlink(root / rel) == target, rel
        assert (st.st_size, st.st_mtime_ns) == (len(target), LINK_MTIME_NS), rel


def assert_nothing_sent(output: str) -> None:
    """rsync --stats --itemize-changes: no file sent, no link created or touched (a
    directory's time may be set again: a directory's mtime lives in the mount's memory)."""
    match = re.search(r"Number of regular files transferred: (\d+)", output)
    assert match and match.group(1) == "0", output
    changed = [line for line in output.splitlines() if re.match(r"^[<>ch.][fL]", line)]
    assert changed == [], output


def test_rsync_of_a_tree_with_links_twice_and_after_a_remount(mount_factory, s3,
                                                              tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    mount = mount_factory()
    rsync("-a", f"{tmp_path / 'src'}/", f"{mount.path / 'dst'}/")
    assert_links(mount.path / "dst")
    # The kernel resolves a path through a link with readlink; the mount never follows one.
    assert (mount.path / "dst" / "dirlink" / "inner").stat().st_size == 1000
    assert not (mount.path / "dst" / "dangling").exists()
    prefix = mount.key("dst/")
    assert sorted(k for k in object_keys(s3, prefix) if not k.endswith("/")) == sorted(
        prefix + rel for rel in ["file", "sub/inner", *LINKS])
    link = s3.get_object(Bucket=BUCKET, Key=prefix + "dangling")
    assert link["Body"].read() == b"no/such/target"
    assert link["Metadata"]["mode"] == str(stat.S_IFLNK | 0o777)  # s3fs-fuse reads this

    assert_nothing_sent(rsync("-a", "--stats", "-i", f"{tmp_path / 'src'}/",
                              f"{mount.path / 'dst'}/"))
    mount.unmount()
    again = mount_factory(prefix=mount.prefix)
    assert_nothing_sent(rsync("-a", "--stats", "-i", "--delete", f"{tmp_path / 'src'}/",
                              f"{again.path / 'dst'}/"))
    assert_links(again.path / "dst")


def test_ln_s_readlink_touch_h_and_rm(mount_factory, s3) -> None:
    mount = mount_factory()
    subprocess.run(["ln", "-s", "../a target/with spaces", str(mount.path / "l")], check=True)
    assert subprocess.run(["readlink", str(mount.path / "l")], capture_output=True,
                          text=True, check=True).stdout == "../a target/with spaces\n"
    assert os.lstat(mount.path / "l").st_size == len("../a target/with spaces")
    subprocess.run(["touch", "-h", "-d", "@1500000000", str(mount.path / "l")], check=True)
    assert os.lstat(mount.path / "l").st_mtime == 1500000000
    meta = s3.head_object(Bucket=BUCKET, Key=mount.key("l"))["Metadata"]
    assert meta["chute-mtime-ns"] == str(1500000000 * 10**9) and meta["mtime"] == "1500000000"
    assert "l" in os.listdir(mount.path)
    (mount.path / "f").write_bytes(b"data")
    with pytest.raises(OSError) as caught:
        os.link(mount.path / "f", mount.path / "hard")
    assert caught.value.errno == errno.EOPNOTSUPP
    os.unlink(mount.path / "l")
    assert object_keys(s3, mount.prefix) == [mount.key("f")]


def test_cp_a_of_a_tree_with_links(mount_factory, s3, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    mount = mount_factory()
    subprocess.run(["cp", "-a", str(tmp_path / "src"), str(mount.path / "copy")], check=True,
                   timeout=60)
    assert_links(mount.path / "copy")
    found = subprocess.run(["find", str(mount.path / "copy"), "-type", "l"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert len(found) == len(LINKS)
    assert s3.get_object(Bucket=BUCKET, Key=mount.key("copy/sub/relative"))["Body"].read() \
        == b"../file"
