"""Reading finished objects back through a mount (``--allow-read``, issue 15), end to end.

Real mounts of the embedded SeaweedFS, real tools (``cp -r``, ``cmp``), the bucket checked and
changed behind the mount's back with boto3. What is shown:

- reads off (the default): an open for reading succeeds, read() fails with EACCES, and the
  refusal is logged once per mount naming ``--allow-read``;
- ``cmp`` of every file of a ``cp -r`` tree (0 B, 1 B, slice±1, several slices) read back;
- a file being written is EBUSY to an open for reading until its last close;
- O_RDWR is a write open (it continues the object): read() through it is EACCES;
- concurrent readers and writers on one mount;
- a store outage in the middle of a read is ridden out (right bytes) or EIO, never wrong bytes;
- an object replaced mid-read (boto3): the reader gets ESTALE or EIO, never a mix; a new open
  sees the new version (the kernel's pages of the old one are dropped).
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.faultproxy import FaultProxy, Kind, Outage
from tests.support.files import random_file, sha256_file
from tests.support.mounts import requires_fuse
from tests.support.observe import chute, status
from tests.support.store import BUCKET

pytestmark = [pytest.mark.e2e, requires_fuse]

MiB = 1 << 20
SLICE = 5 * MiB
READS = ("--allow-read", "--slice-size", "5MiB", "--ring-size", "20MiB")


def _read_all(path: Path, block: int = MiB) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_reads_off_open_succeeds_read_is_eacces_logged_once(mount_factory, tmp_path):
    mount = mount_factory("--slice-size", "5MiB", "--ring-size", "20MiB")
    for name in ("a", "b", "c"):
        (mount.path / name).write_bytes(b"x" * 100)
    for name in ("a", "b", "c"):
        fd = os.open(mount.path / name, os.O_RDONLY)  # rsync opens received files like this
        try:
            os.fchmod(fd, 0o640)
            with pytest.raises(OSError) as caught:
                os.read(fd, 10)
            assert caught.value.errno == errno.EACCES
        finally:
            os.close(fd)
    assert (mount.path / "a").stat().st_mode & 0o777 == 0o640
    assert status(mount.path)["reads"] is None  # no read budget without --allow-read
    assert mount.log().count("--allow-read") == 1, mount.log()


def test_cp_tree_read_back_with_cmp(mount_factory, tmp_path):
    mount = mount_factory(*READS)
    src = tmp_path / "src"
    (src / "deep" / "er").mkdir(parents=True)
    sizes = {"empty": 0, "one": 1, "below": SLICE - 1, "slice": SLICE, "above": SLICE + 1,
             "deep/several": 3 * SLICE + 12345, "deep/er/small": 4097}
    for index, (name, size) in enumerate(sizes.items()):
        random_file(src / name, size, seed=index)
    subprocess.run(["cp", "-r", str(src), str(mount.path / "tree")], check=True)
    for name in sizes:
        result = subprocess.run(["cmp", str(src / name), str(mount.path / "tree" / name)],
                                capture_output=True, text=True)
        assert result.returncode == 0, (name, result.stdout, result.stderr)
    reads = status(mount.path)["reads"]
    total = sum(sizes.values())
    assert reads["bytes_served"] >= total and reads["budget"] == 128 << 20, reads  # default
    assert reads["readers"] == 0 and reads["in_use"] == 0, reads
    assert reads["peak_in_use"] <= reads["budget"], reads
    assert "reads: 0 open" in chute("status", mount.path).stdout
    # and again, from a fresh mount of the same prefix (nothing known but the bucket)
    again = mount_factory(*READS, prefix=mount.prefix)
    result = subprocess.run(["diff", "-r", str(src), str(again.path / "tree")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_file_being_written_is_ebusy_until_closed(mount_factory):
    mount = mount_factory(*READS)
    path = mount.path / "growing"
    with open(path, "wb") as writer:
        writer.write(b"a" * 1000)
        writer.flush()
        with pytest.raises(OSError) as caught:
            os.open(path, os.O_RDONLY)
        assert caught.value.errno == errno.EBUSY
    assert path.read_bytes() == b"a" * 1000
    assert "is being written" in mount.log()


def test_o_rdwr_is_a_write_open_never_readable(mount_factory, s3):
    """O_RDWR without O_TRUNC continues the object (issue 16): read() through it is EACCES,
    the object stays as it was until the close; O_RDWR | O_TRUNC replaces it."""
    mount = mount_factory(*READS)
    path = mount.path / "obj"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(OSError) as caught:
            os.pread(fd, 4, 3)
        assert caught.value.errno == errno.EACCES
        os.pwrite(fd, b"ab", 10)
        assert s3.get_object(Bucket=BUCKET, Key=mount.key("obj"))["Body"].read() \
            == b"0123456789"
    finally:
        os.close(fd)
    assert path.read_bytes() == b"0123456789ab"
    fd = os.open(path, os.O_RDWR | os.O_TRUNC)
    try:
        os.write(fd, b"new")
    finally:
        os.close(fd)
    assert path.read_bytes() == b"new"


def test_concurrent_readers_and_writers(mount_factory, tmp_path):
    mount = mount_factory(*READS)
    sources = []
    for index in range(3):
        source = random_file(tmp_path / f"src{index}", 12 * MiB + index, seed=100 + index)
        (mount.path / f"in{index}").write_bytes(source.read_bytes())
        sources.append(source)
    digests = [sha256_file(s) for s in sources]
    failures: list[str] = []

    def reader(index: int) -> None:
        for _ in range(3):
            digest = hashlib.sha256(_read_all(mount.path / f"in{index % 3}")).hexdigest()
            if digest != digests[index % 3]:
                failures.append(f"reader {index} read wrong bytes")

    def writer(index: int) -> None:
        data = random_file(tmp_path / f"w{index}", 9 * MiB, seed=200 + index).read_bytes()
        (mount.path / f"out{index}").write_bytes(data)
        if _read_all(mount.path / f"out{index}") != data:
            failures.append(f"writer {index} read back wrong bytes")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not failures, failures


@pytest.mark.parametrize("seconds,budget", [(3, "60"), (12, "3")])
def test_store_outage_mid_read(mount_factory, store, tmp_path, seconds, budget):
    """An outage within the retry budget is ridden out; one past it makes the mount answer
    EIO (the kernel may ask again after the outage and then get the right bytes). Either way
    the reader never gets wrong bytes."""
    source = random_file(tmp_path / "src", 40 * MiB, seed=7)
    with FaultProxy.for_store(store) as proxy:
        mount = mount_factory(*READS, "--retry-budget", budget, server=proxy)
        subprocess.run(["cp", str(source), str(mount.path / "big")], check=True)
        proxy.set_scenario([Outage(seconds, kind=Kind.GET_OBJECT, after=4)])
        digest = hashlib.sha256()
        error = None
        try:
            with open(mount.path / "big", "rb") as f:
                while chunk := f.read(MiB):
                    digest.update(chunk)
        except OSError as exc:
            error = exc
        assert proxy.stats[Kind.GET_OBJECT].injected >= 1
        if error is None:
            assert digest.hexdigest() == sha256_file(source), "wrong bytes after an outage"
        else:
            assert error.errno == errno.EIO, error
        if float(budget) > seconds:
            assert error is None, f"an outage of {seconds} s was not ridden out: {error}"
            assert "returning EIO" not in mount.log()
        else:
            assert "read: returning EIO" in mount.log(), mount.log()
        time.sleep(seconds)  # the outage is over: the object reads whole again
        assert sha256_file(mount.path / "big") == sha256_file(source)


def test_object_replaced_mid_read_is_an_error_never_a_mix(mount_factory, s3, tmp_path):
    mount = mount_factory(*READS)
    old = random_file(tmp_path / "old", 64 * MiB, seed=1).read_bytes()
    new = random_file(tmp_path / "new", 64 * MiB, seed=2).read_bytes()
    (mount.path / "obj").write_bytes(old)
    got = bytearray()
    with open(mount.path / "obj", "rb", buffering=0) as f:
        # A small first read: a 1 MiB one from the first byte streams, and on loopback the
        # whole 64 MiB (within the window) would be fetched, all of the old version, before
        # the PUT below.
        got += f.read(64 * 1024)
        s3.put_object(Bucket=BUCKET, Key=mount.key("obj"), Body=new)
        with pytest.raises(OSError) as caught:
            while chunk := f.read(MiB):
                got += chunk
    assert caught.value.errno in (errno.ESTALE, errno.EIO), caught.value
    assert bytes(got) == old[:len(got)], "bytes of two versions were mixed"
    assert len(got) < len(old)
    time.sleep(1.2)  # the node's attributes are trusted for LOOKUP_TTL
    assert _read_all(mount.path / "obj") == new


def test_page_cache_dropped_when_the_object_changes(mount_factory, s3):
    mount = mount_factory(*READS)
    path = mount.path / "same-size"
    path.write_bytes(b"A" * 8192)
    assert path.read_bytes() == b"A" * 8192
    assert path.read_bytes() == b"A" * 8192  # second open: the kernel may keep its pages
    s3.put_object(Bucket=BUCKET, Key=mount.key("same-size"), Body=b"B" * 8192)
    time.sleep(1.2)
    assert path.read_bytes() == b"B" * 8192


def test_direct_reads_bypass_the_page_cache(mount_factory, tmp_path):
    """``--direct-reads``: every read() reaches the mount (a second read of the same file is
    served again, not from the kernel's pages), in the reader's own sizes, byte-exact; a
    private mapping still works, a shared one is ENODEV (the kernel's rule for direct I/O)."""
    mount = mount_factory(*READS, "--direct-reads")
    src = tmp_path / "src"
    random_file(src, 3 * SLICE + 777, seed=7)
    subprocess.run(["cp", str(src), str(mount.path / "f")], check=True)
    expected = src.read_bytes()
    for block in (MiB, 10 * 1024):  # dd's 1 MiB, tar's 10 KiB records
        with open(mount.path / "f", "rb", buffering=0) as f:
            got = bytearray()
            while chunk := f.read(block):
                got += chunk
        assert bytes(got) == expected, block
    reads = status(mount.path)["reads"]
    assert reads["bytes_served"] >= 2 * len(expected), reads  # nothing kept between opens
    import mmap
    with open(mount.path / "f", "rb") as f:
        with mmap.mmap(f.fileno(), MiB, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) as m:
            assert m[:4096] == expected[:4096]
        with pytest.raises(OSError) as caught:
            mmap.mmap(f.fileno(), MiB, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        assert caught.value.errno == errno.ENODEV


def test_direct_reads_without_allow_read_is_refused(tmp_path):
    """``--direct-reads`` alone says what it needs, and mounts nothing."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    done = chute("mount", str(mountpoint), "s3://bucket/p", "--direct-reads")
    assert done.returncode != 0
    assert "--direct-reads applies to reads, which need --allow-read" in done.stderr
    assert not os.path.ismount(mountpoint)
