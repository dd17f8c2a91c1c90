"""Symbolic links over the in-memory S3, handlers called without FUSE (fs/symlinks.py):
one PutObject in s3fs-fuse's convention, readlink from the cache or one bounded GET, the
kind an inode was shown with never changes, s3fs-fuse's links show as links."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pyfuse3
import pytest
import trio

from chute.fs.lookups import LOOKUP_TTL
from chute.fs.metadata import MAX_LINK_TARGET, MODE_META, MTIME_META
from chute.fs.namespace import ROOT_INODE
from chute.fs.operations import ChuteOperations
from chute.fs.policy import MountPolicy
from chute.uploader.config import UploaderConfig
from chute.uploader.uploader import Uploader
from tests.support.memory_mount import CTX
from tests.support.memory_s3 import MemoryS3, memory_client

MiB = 1 << 20


@contextlib.asynccontextmanager
async def _mount(store: MemoryS3) -> AsyncIterator[ChuteOperations]:
    client = memory_client(store)
    uploader = Uploader(UploaderConfig(slice_size=5 * MiB, ring_size=20 * MiB), client)
    async with trio.open_nursery() as nursery:
        await nursery.start(uploader.run)
        yield ChuteOperations(uploader, client, "/nonexistent-mnt", MountPolicy())
        nursery.cancel_scope.cancel()
    await client.aclose()


@pytest.fixture
def store() -> MemoryS3:
    return MemoryS3()


@pytest.fixture
async def ops(store: MemoryS3) -> AsyncIterator[ChuteOperations]:
    async with _mount(store) as mounted:
        yield mounted


async def errno_of(awaitable) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await awaitable
    return caught.value.errno


def _fields(**wanted: bool) -> pyfuse3.SetattrFields:
    """pyfuse3's SetattrFields cannot be built from Python: what setattr reads of it."""
    names = ("update_mode", "update_mtime", "update_size", "update_uid", "update_gid")
    return SimpleNamespace(**{n: wanted.get(n, False) for n in names})  # type: ignore


def ops_since(store: MemoryS3, start: int) -> list[str]:
    return store.operations()[start:]


async def test_a_link_is_one_put_in_s3fs_convention(ops: ChuteOperations,
                                                    store: MemoryS3) -> None:
    start = len(store.requests)
    attrs = await ops.symlink(ROOT_INODE, b"l", b"../some/where", CTX)
    assert ops_since(store, start) == ["ListObjectsV2", "PutObject"]  # is the name free?
    assert stat.S_ISLNK(attrs.st_mode) and attrs.st_mode & 0o777 == 0o777
    assert attrs.st_size == len(b"../some/where")
    stored = store.objects["l"]
    assert stored.body == b"../some/where"
    assert stored.metadata[MODE_META] == "120777"
    assert stored.metadata["mode"] == str(stat.S_IFLNK | 0o777)  # s3fs-fuse's key
    assert int(stored.metadata["mtime"]) == int(stored.metadata[MTIME_META]) // 10**9
    start = len(store.requests)
    assert await ops.readlink(attrs.st_ino, CTX) == b"../some/where"  # from memory
    assert stat.S_ISLNK((await ops.getattr(attrs.st_ino, CTX)).st_mode)
    assert await ops.listxattr(attrs.st_ino, CTX) == []  # no xxh3 tag: not file data
    assert ops_since(store, start) == []
    assert await errno_of(ops.symlink(ROOT_INODE, b"l", b"x", CTX)) == errno.EEXIST


async def test_dangling_and_directory_links_are_just_objects(ops: ChuteOperations,
                                                             store: MemoryS3) -> None:
    d = await ops.mkdir(ROOT_INODE, b"d", 0o755, CTX)
    await ops.symlink(d.st_ino, b"up", b"..", CTX)
    await ops.symlink(d.st_ino, b"abs", b"/etc", CTX)
    await ops.symlink(d.st_ino, b"dangling", b"/no/such/file", CTX)
    assert sorted(store.keys()) == ["d/", "d/abs", "d/dangling", "d/up"]
    assert store.body("d/dangling") == b"/no/such/file"


async def test_target_length_is_bounded(ops: ChuteOperations, store: MemoryS3,
                                        mock_clock) -> None:
    start = len(store.requests)
    too_long = b"x" * (MAX_LINK_TARGET + 1)
    assert await errno_of(ops.symlink(ROOT_INODE, b"l", too_long, CTX)) == errno.ENAMETOOLONG
    assert ops_since(store, start) == []
    longest = await ops.symlink(ROOT_INODE, b"longest", b"y" * MAX_LINK_TARGET, CTX)
    assert longest.st_size == MAX_LINK_TARGET
    # A longer object is a file, whatever its metadata says.
    store.put("big", too_long, {MODE_META: "120777"})
    mock_clock.jump(LOOKUP_TTL)
    big = await ops.lookup(ROOT_INODE, b"big", CTX)
    assert stat.S_ISREG(big.st_mode) and big.st_size == MAX_LINK_TARGET + 1
    assert await errno_of(ops.readlink(big.st_ino, CTX)) == errno.EINVAL


async def test_after_forget_a_head_says_it_is_a_link_and_a_get_reads_it(
        ops: ChuteOperations, store: MemoryS3, mock_clock) -> None:
    attrs = await ops.symlink(ROOT_INODE, b"l", b"target", CTX)
    await ops.forget([(attrs.st_ino, 1)])
    assert len(ops.ns) == 1
    mock_clock.jump(LOOKUP_TTL)
    start = len(store.requests)
    again = await ops.lookup(ROOT_INODE, b"l", CTX)
    assert stat.S_ISLNK(again.st_mode) and again.st_size == 6
    assert ops_since(store, start) == ["ListObjectsV2", "HeadObject"]
    assert await ops.readlink(again.st_ino, CTX) == b"target"
    [get] = store.requests[start + 2:]
    assert get.operation == "GetObject" and get.headers["range"] == "bytes=0-5"
    assert "if-match" in get.headers
    assert await ops.readlink(again.st_ino, CTX) == b"target"  # cached now
    assert len(store.requests) == start + 3


async def test_a_link_listed_as_a_file_gets_a_new_inode(ops: ChuteOperations,
                                                        store: MemoryS3) -> None:
    """readdir shows a listed key as a file (listings carry no metadata); the HEAD of the
    lookup that follows finds a link: a new node, never the same inode changing type."""
    store.put("l", b"t", {MODE_META: "120777"})
    fh = await ops.opendir(ROOT_INODE, CTX)
    listed = ops.ns.attach(ops.handles.dir_entries(fh)[0][1])
    await ops.releasedir(fh)
    assert listed.needs_head and not listed.is_link
    found = await ops.lookup(ROOT_INODE, b"l", CTX)
    assert stat.S_ISLNK(found.st_mode) and found.st_ino != listed.inode
    assert await ops.readlink(found.st_ino, CTX) == b"t"
    # The other way round: a getattr of an inode shown as a file is ESTALE (the kernel
    # looks the path up again), not a file turned into a link.
    store.put("m", b"u", {MODE_META: "120777"})
    fh = await ops.opendir(ROOT_INODE, CTX)
    stale = ops.ns.looked_up(dict(ops.handles.dir_entries(fh))["m"])
    await ops.releasedir(fh)
    assert await errno_of(ops.getattr(stale.inode, CTX)) == errno.ESTALE
    assert stat.S_ISLNK((await ops.lookup(ROOT_INODE, b"m", CTX)).st_mode)


async def test_unlink_rename_and_times(ops: ChuteOperations, store: MemoryS3) -> None:
    attrs = await ops.symlink(ROOT_INODE, b"l", b"target", CTX)
    await ops.rename(ROOT_INODE, b"l", ROOT_INODE, b"renamed", 0, CTX)
    assert store.keys() == ["renamed"]
    assert store.objects["renamed"].metadata[MODE_META] == "120777"
    assert await ops.readlink(attrs.st_ino, CTX) == b"target"
    # touch -h / rsync -a: utimensat(AT_SYMLINK_NOFOLLOW) stores the link's own mtime.
    new = pyfuse3.EntryAttributes()
    new.st_mtime_ns = 1_500_000_000_123_456_789
    new.st_mode = stat.S_IFLNK | 0o600
    # update_mode: never sent for a link by Linux (notify_change refuses); ignored if it were
    fields = _fields(update_mtime=True, update_mode=True)
    shown = await ops.setattr(attrs.st_ino, new, fields, None, CTX)
    assert shown.st_mtime_ns == new.st_mtime_ns and shown.st_mode == stat.S_IFLNK | 0o777
    meta = store.objects["renamed"].metadata
    assert meta[MTIME_META] == str(new.st_mtime_ns) and meta["mtime"] == "1500000000"
    assert meta[MODE_META] == "120777" and store.body("renamed") == b"target"
    await ops.unlink(ROOT_INODE, b"renamed", CTX)
    assert store.keys() == []
    assert await errno_of(ops.lookup(ROOT_INODE, b"renamed", CTX)) == errno.ENOENT


async def test_links_survive_a_remount(store: MemoryS3) -> None:
    async with _mount(store) as first:
        link = await first.symlink(ROOT_INODE, b"l", b"/abs/target", CTX)
        new = pyfuse3.EntryAttributes()
        new.st_mtime_ns = 1_000_000_000_000_000_001
        fields = _fields(update_mtime=True)
        await first.setattr(link.st_ino, new, fields, None, CTX)
    async with _mount(store) as second:
        again = await second.lookup(ROOT_INODE, b"l", CTX)
        assert stat.S_ISLNK(again.st_mode) and again.st_mtime_ns == 1_000_000_000_000_000_001
        assert await second.readlink(again.st_ino, CTX) == b"/abs/target"


async def test_an_s3fs_link_shows_as_a_link(ops: ChuteOperations, store: MemoryS3) -> None:
    store.put("s3fs-link", b"dir/file", {"mode": str(stat.S_IFLNK | 0o777),
                                          "mtime": "1600000000.5"})
    store.put("s3fs-file", b"dir/file", {"mode": str(stat.S_IFREG | 0o644),
                                          "mtime": "1600000000"})
    link = await ops.lookup(ROOT_INODE, b"s3fs-link", CTX)
    assert stat.S_ISLNK(link.st_mode) and link.st_mtime_ns == 1_600_000_000_500_000_000
    assert await ops.readlink(link.st_ino, CTX) == b"dir/file"
    assert stat.S_ISREG((await ops.lookup(ROOT_INODE, b"s3fs-file", CTX)).st_mode)


async def test_a_link_replaced_behind_our_back_is_estale(ops: ChuteOperations,
                                                         store: MemoryS3, mock_clock) -> None:
    attrs = await ops.symlink(ROOT_INODE, b"l", b"one", CTX)
    await ops.forget([(attrs.st_ino, 1)])
    mock_clock.jump(LOOKUP_TTL)
    again = await ops.lookup(ROOT_INODE, b"l", CTX)
    store.put("l", b"two", {MODE_META: "120777"})
    assert await errno_of(ops.readlink(again.st_ino, CTX)) == errno.ESTALE


async def test_hard_links_stay_refused(ops: ChuteOperations) -> None:
    f, _ = await ops.create(ROOT_INODE, b"f", 0o644, os.O_WRONLY | os.O_CREAT, CTX)
    await ops.release(f.fh)
    assert await errno_of(ops.link(2, ROOT_INODE, b"g", CTX)) == errno.EOPNOTSUPP
