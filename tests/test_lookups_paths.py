"""The directories above the one being written, and the lookups' own client.

The kernel looks up every component of a path again once its entry expires (LOOKUP_TTL). A
listing of ``a/b/`` that finds a key proves ``a`` and ``b`` existed when it started, so
while ``b/`` is listed in the background (refresh-ahead) those lookups wait for nothing; a
directory removed elsewhere is still gone within LOOKUP_TTL. Lookups and listings go through
the client the mount gives them (their own connections, fs/mount.py), uploads through the
uploads' client. Over the in-memory S3 on trio's MockClock, the FUSE handlers called
directly, the lookups' nursery run as the mount runs it.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from chute.fs.lookups import LOOKUP_TTL, REFRESH_AHEAD
from chute.fs.namespace import ROOT_INODE
from chute.fs.operations import ChuteOperations
from chute.uploader.config import UploaderConfig
from chute.uploader.uploader import Uploader
from tests.support.held_listings import HeldListings, landed, mkdir, write_file
from tests.support.memory_mount import CTX, MiB, Mounted, errno_of, memory_mount
from tests.support.memory_s3 import MemoryS3, memory_client


@pytest.fixture
async def mounted() -> AsyncIterator[tuple[Mounted, HeldListings]]:
    store = HeldListings()
    async for m in memory_mount(store=store):
        async with trio.open_nursery() as nursery:
            await nursery.start(m.ops.lookups.run)
            yield m, store
            nursery.cancel_scope.cancel()


async def test_the_directories_above_a_stream_of_creates_never_wait(mounted, mock_clock
                                                                    ) -> None:
    """Files made in a/b/ every 50 ms for 3 TTLs, ``a`` and ``b`` looked up again each time
    their entries expire, every listing taking 200 ms: no lookup waits, and neither the root
    nor a/ is listed meanwhile."""
    m, store = mounted
    mock_clock.autojump_threshold = 0.5  # a lookup that waits fails the test, never hangs it
    a = await mkdir(m, "a")
    b = await mkdir(m, "b", a.inode)
    store.delay = 0.2
    start = len(m.store.requests)
    end = trio.current_time() + 3 * LOOKUP_TTL
    next_walk = trio.current_time() + LOOKUP_TTL
    n = 0
    while trio.current_time() < end:
        before = trio.current_time()
        if before >= next_walk:  # the kernel's entries of a and b expired: a path walk
            assert (await m.ops.lookup(ROOT_INODE, b"a", CTX)).st_ino == a.inode
            assert (await m.ops.lookup(a.inode, b"b", CTX)).st_ino == b.inode
            next_walk = before + LOOKUP_TTL
        await write_file(m.ops, b.inode, f"f{n}")
        assert trio.current_time() == before, f"file {n} waited"
        n += 1
        mock_clock.jump(0.05)
        await trio.testing.wait_all_tasks_blocked()
    listed = [r.query.get("prefix") for r in m.store.requests[start:]
              if r.operation == "ListObjectsV2"]
    assert listed and set(listed) == {"a/b/"}, listed
    assert m.ops.lookups.background_failures == 0


async def test_a_directory_removed_elsewhere_is_gone_within_the_ttl(mounted, mock_clock
                                                                   ) -> None:
    """Everything under a/ deleted by another client while a background listing of a/b/ is
    in flight: that listing finds nothing and vouches for nothing, so past LOOKUP_TTL the
    lookup of ``a`` asks the store and gets ENOENT."""
    m, store = mounted
    a = await mkdir(m, "a")
    b = await mkdir(m, "b", a.inode)
    await write_file(m.ops, b.inode, "f")
    mock_clock.jump(REFRESH_AHEAD)
    store.hold()
    assert await errno_of(m.ops.lookup(b.inode, b"g", CTX)) == errno.ENOENT  # lists behind
    for key in [k for k in m.store.objects if k.startswith("a/")]:
        del m.store.objects[key]
    store.gate.set()
    await landed(m)
    mock_clock.jump(LOOKUP_TTL)
    assert await errno_of(m.ops.lookup(ROOT_INODE, b"a", CTX)) == errno.ENOENT


async def test_a_listing_vouches_only_for_the_path_it_was_made_under(mounted, mock_clock
                                                                    ) -> None:
    """A listing found keys under a/b/: ``a`` and ``b`` are confirmed as of when it started;
    a sibling directory is not."""
    m, _store = mounted
    a = await mkdir(m, "a")
    b = await mkdir(m, "b", a.inode)
    c = await mkdir(m, "c")
    await write_file(m.ops, b.inode, "f")
    mock_clock.jump(LOOKUP_TTL + 0.1)
    started = trio.current_time()
    await m.ops.lookups.list_dir(b)
    assert a.checked_at == b.checked_at == started
    assert c.checked_at < started - LOOKUP_TTL


async def test_lookups_and_listings_use_the_lookup_client() -> None:
    """The HEAD and LIST of lookups, readdir's and rmdir's listings go through
    ``lookup_client``; uploads, directory markers and deletes (and rmdir's HEAD of a file
    of the same name, part of the removal) through the mount's client."""
    store = MemoryS3()
    seen: dict[str, list[str]] = {"main": [], "lookups": []}
    client = memory_client(store)
    lookup_client = memory_client(store)
    client.on_request = lambda op, _s, _st: seen["main"].append(op)
    lookup_client.on_request = lambda op, _s, _st: seen["lookups"].append(op)
    uploader = Uploader(UploaderConfig(slice_size=5 * MiB, ring_size=20 * MiB), client)
    async with trio.open_nursery() as nursery:
        await nursery.start(uploader.run)
        ops = ChuteOperations(uploader, client, "/nonexistent-mnt",
                              lookup_client=lookup_client)
        store.put("old", b"x")
        assert (await ops.lookup(ROOT_INODE, b"old", CTX)).st_size == 1
        d = (await ops.mkdir(ROOT_INODE, b"d", 0o755, CTX)).st_ino
        await write_file(ops, d, "f")
        fh = await ops.opendir(d, CTX)
        await ops.releasedir(fh)
        await ops.unlink(d, b"f", CTX)
        await ops.rmdir(ROOT_INODE, b"d", CTX)
        nursery.cancel_scope.cancel()
    await client.aclose()
    await lookup_client.aclose()
    assert set(seen["lookups"]) == {"HeadObject", "ListObjectsV2"}, seen
    assert "PutObject" in seen["main"] and "ListObjectsV2" not in seen["main"], seen


async def test_a_listing_of_a_directory_moved_meanwhile_vouches_for_nothing(mounted,
                                                                            mock_clock
                                                                            ) -> None:
    """a/b/ listed (keys found) while b moves under c: the listing describes a/b/, so c,
    b's parent now, is not vouched for by it."""
    m, store = mounted
    a = await mkdir(m, "a")
    b = await mkdir(m, "b", a.inode)
    c = await mkdir(m, "c")
    await write_file(m.ops, b.inode, "f")
    mock_clock.jump(LOOKUP_TTL + 0.1)
    c_checked = c.checked_at
    store.hold()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(m.ops.lookups.list_dir, b)
        await store.held.wait()
        m.ops.ns.move(b, c, "b", trio.current_time())
        store.gate.set()
    assert c.checked_at == c_checked
    assert a.checked_at == c_checked  # a's was not renewed either (nothing vouched)
