"""End to end: appends, reopens without O_TRUNC, and unlink of a file being written (issue 16).

- ``>>`` onto a 40 MiB object: its whole slices are copied server-side, the rest fetched, the
  new bytes streamed; the old object stays visible (checked with boto3 while the appender is
  paused with the file open) until the close replaces it, byte-exact;
- ``echo >> small``;
- ``qemu-img convert -O raw`` of a small qcow2 image into the mount (it creates its output at
  full size, closes it, reopens it O_RDWR and writes from offset 0: works for an image within
  one slice), compared with the same conversion on a local disk;
- a writer that unlinks its own half-written output and exits 1 (as qemu-img and mksquashfs
  do when they fail) or closes it leaves no object and no upload.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.files import random_file
from tests.support.mounts import requires_fuse
from tests.support.store import BUCKET, object_keys, pending_uploads

pytestmark = [pytest.mark.e2e, requires_fuse]

MiB = 1 << 20
SMALL_MOUNT = ("--slice-size", "5MiB", "--ring-size", "40MiB")


def _body(s3, key: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_append_to_a_40_mib_object(mount_factory, s3, tmp_path) -> None:
    mount = mount_factory(*SMALL_MOUNT)
    old = random_file(tmp_path / "old", 40 * MiB + 123, seed=1).read_bytes()
    more = random_file(tmp_path / "more", 7 * MiB + 5, seed=2).read_bytes()
    last = random_file(tmp_path / "last", 100_000, seed=3)
    f = mount.path / "big"
    shutil.copyfile(tmp_path / "old", f)
    etag = s3.head_object(Bucket=BUCKET, Key=mount.key("big"))["ETag"]
    with open(f, "ab") as out:  # paused mid-write: the old object is still the one shown
        out.write(more[: 6 * MiB])
        out.flush()
        head = s3.head_object(Bucket=BUCKET, Key=mount.key("big"))
        assert head["ETag"] == etag and head["ContentLength"] == len(old)
        out.write(more[6 * MiB:])
    assert _body(s3, mount.key("big")) == old + more
    subprocess.run(["sh", "-c", f'cat "{last}" >> "{f}"'], check=True, timeout=60)
    assert _body(s3, mount.key("big")) == old + more + last.read_bytes()
    assert os.path.getsize(f) == len(old) + len(more) + 100_000
    assert "copied server-side" in mount.log()
    assert pending_uploads(s3, mount.prefix) == []


def test_echo_appends_to_a_small_file(mount_factory, s3) -> None:
    mount = mount_factory()
    small = mount.path / "small"
    subprocess.run(["sh", "-c", f'echo one > "{small}" && echo two >> "{small}" '
                    f'&& echo three >> "{small}"'], check=True, timeout=60)
    assert _body(s3, mount.key("small")) == b"one\ntwo\nthree\n"
    assert pending_uploads(s3, mount.prefix) == []


def test_qemu_img_convert_to_raw(mount_factory, s3, tmp_path) -> None:
    qemu_img, qemu_io = shutil.which("qemu-img"), shutil.which("qemu-io")
    if qemu_img is None or qemu_io is None:
        pytest.skip("qemu-img/qemu-io are not installed (Debian package qemu-utils)")
    # qemu-img makes the raw file its full size (ftruncate), closes it, reopens it O_RDWR and
    # writes from offset 0: an image within one slice (16 MiB by default) is wholly in the
    # ring, so those writes land; a larger one's are writes into the middle (issue 17).
    mount = mount_factory()
    image = tmp_path / "disk.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(image), "12M"], check=True)
    for pattern, offset, length in (("0xab", "0", "1M"), ("0x5c", "3M", "64k"),
                                    ("0x11", "11M", "1M")):
        subprocess.run([qemu_io, "-f", "qcow2", "-c", f"write -P {pattern} {offset} {length}",
                        str(image)], check=True, capture_output=True)
    local = tmp_path / "disk.raw"
    subprocess.run([qemu_img, "convert", "-O", "raw", str(image), str(local)], check=True)
    result = subprocess.run([qemu_img, "convert", "-O", "raw", str(image),
                             str(mount.path / "disk.raw")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr + mount.log()[-3000:]
    assert _body(s3, mount.key("disk.raw")) == local.read_bytes()
    assert pending_uploads(s3, mount.prefix) == []


WRITER = textwrap.dedent("""
    import os, sys
    path, how = sys.argv[1], sys.argv[2]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    chunk = os.urandom(1 << 20)
    for _ in range(12):
        os.write(fd, chunk)
    os.unlink(path)          # a failing tool removes its own output
    os.write(fd, chunk)      # still writable: goes nowhere
    if how == "exit":
        sys.exit(1)          # with the file still open
    os.close(fd)
""")


@pytest.mark.parametrize("how", ["exit", "close"])
def test_a_writer_that_unlinks_its_output_leaves_nothing(mount_factory, s3, how) -> None:
    mount = mount_factory(*SMALL_MOUNT)
    out = mount.path / "out.img"
    result = subprocess.run([sys.executable, "-c", WRITER, str(out), how], timeout=60)
    assert result.returncode == (1 if how == "exit" else 0)
    assert not out.exists() and os.listdir(mount.path) == []
    assert object_keys(s3, mount.prefix) == []
    assert pending_uploads(s3, mount.prefix) == []
    assert "unlinked while open for writing" in mount.log()
    (out).write_bytes(b"a new file of the same name")  # independent of the dropped one
    assert _body(s3, mount.key("out.img")) == b"a new file of the same name"


def test_reopen_without_truncate_appends(mount_factory, s3, tmp_path: Path) -> None:
    mount = mount_factory(*SMALL_MOUNT)
    f = mount.path / "log"
    f.write_bytes(b"first\n")
    fd = os.open(f, os.O_RDWR)  # no O_TRUNC: continue at the end
    try:
        os.lseek(fd, 0, os.SEEK_END)
        os.write(fd, b"second\n")
    finally:
        os.close(fd)
    assert _body(s3, mount.key("log")) == b"first\nsecond\n"


APPENDER = textwrap.dedent("""
    import os, sys
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
    os.write(fd, os.urandom(6 << 20))
    sys.exit(1)              # dies with the file open, as a failing backup job does
""")


def test_an_appender_that_dies_leaves_the_old_object(mount_factory, s3, tmp_path) -> None:
    mount = mount_factory(*SMALL_MOUNT)
    old = random_file(tmp_path / "old", 12 * MiB + 7, seed=4).read_bytes()
    shutil.copyfile(tmp_path / "old", mount.path / "big")
    etag = s3.head_object(Bucket=BUCKET, Key=mount.key("big"))["ETag"]
    result = subprocess.run([sys.executable, "-c", APPENDER, str(mount.path / "big")],
                            timeout=60)
    assert result.returncode == 1
    assert s3.head_object(Bucket=BUCKET, Key=mount.key("big"))["ETag"] == etag
    assert _body(s3, mount.key("big")) == old
    assert pending_uploads(s3, mount.prefix) == []
    assert "its writer died" in mount.log()


def test_rsnapshot_probe_and_log(mount_factory, s3) -> None:
    """rsnapshot's test_cp_al creates its probe file with ``open(TT1, ">>$s/tt1")``, and it
    appends to its logfile with ``open(LOG, ">> ...")``: both as rsnapshot writes them."""
    if shutil.which("perl") is None:
        pytest.skip("perl is not installed")
    mount = mount_factory()
    probe_dir = mount.path / "cp_al1"
    probe_dir.mkdir()
    perl = ('open(T, ">>$ARGV[0]") || die "open: $!"; print T $ARGV[1]; '
            'close(T) || die "close: $!"')
    subprocess.run(["perl", "-e", perl, str(probe_dir / "tt1"), ""], check=True, timeout=30)
    for line in ("[run 1] started\n", "[run 2] started\n"):
        subprocess.run(["perl", "-e", perl, str(mount.path / "rsnapshot.log"), line],
                       check=True, timeout=30)
    assert _body(s3, mount.key("cp_al1/tt1")) == b""
    assert _body(s3, mount.key("rsnapshot.log")) == b"[run 1] started\n[run 2] started\n"
    (probe_dir / "tt1").unlink()
    probe_dir.rmdir()
