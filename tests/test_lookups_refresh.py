"""Refresh-ahead (fs/lookups.py): a lookup answered from a snapshot past REFRESH_AHEAD lists
the directory again in the background and does not wait; the listing, in flight while the
mount changes the directory, is installed with those changes (fs/snapshots.py). Over the
in-memory S3 on trio's MockClock, the FUSE handlers called directly, the lookups' nursery run
as the mount runs it."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

from chute.fs.lookups import LOOKUP_TTL, REFRESH_AHEAD
from tests.support.held_listings import HeldListings, landed, mkdir, write_file
from tests.support.memory_mount import CTX, Mounted, errno_of, memory_mount


@pytest.fixture
def mounted(held_mount) -> tuple[Mounted, HeldListings, trio.Nursery]:
    """conftest's held_mount: the test may cancel the nursery (unmount)."""
    return held_mount


async def test_a_stream_of_creates_never_waits_for_a_listing(mounted, mock_clock) -> None:
    """Lookups of new names every 50 ms for 2.5 TTLs, each listing taking 200 ms: no lookup
    waits (no time passes in it), and the directory is listed about once per REFRESH_AHEAD,
    always in the background."""
    m, store, _ = mounted
    d = await mkdir(m, "d")
    store.delay = 0.2
    start = len(m.store.requests)
    end = trio.current_time() + 2.5 * LOOKUP_TTL
    n = 0
    while trio.current_time() < end:
        before = trio.current_time()
        await write_file(m.ops, d.inode, f"f{n}")
        assert trio.current_time() == before, f"file {n} waited"
        assert m.ops.ns.listing_fresh(d, trio.current_time())
        n += 1
        mock_clock.jump(0.05)
        await trio.testing.wait_all_tasks_blocked()
    lists = sum(1 for r in m.store.requests[start:]
                if r.operation == "ListObjectsV2" and r.query.get("prefix") == "d/")
    assert 2 <= lists <= 2.5 * LOOKUP_TTL / REFRESH_AHEAD + 1, lists
    assert d.listed_at > end - LOOKUP_TTL  # renewed: no answer relied on an expired one
    assert m.ops.lookups.background_failures == 0


async def test_an_expired_snapshot_waits_for_the_listing_under_way(mounted, mock_clock
                                                                 ) -> None:
    """The freshness promise holds: past LOOKUP_TTL a lookup waits for the background
    listing (no second one is sent) and is answered from what it installed."""
    m, store, _ = mounted
    d = await mkdir(m, "d")
    mock_clock.jump(REFRESH_AHEAD)
    started = trio.current_time()
    store.hold()
    assert await errno_of(m.ops.lookup(d.inode, b"a", CTX)) == errno.ENOENT  # not waiting
    await store.held.wait()
    await trio.testing.wait_all_tasks_blocked()  # the root's listing (d's parent) held too
    mock_clock.jump(LOOKUP_TTL - REFRESH_AHEAD + 0.1)  # the old snapshot has expired
    assert not m.ops.ns.listing_fresh(d, trio.current_time())
    served, start = store.served, len(m.store.requests)
    answers: list[int] = []

    async def look_up() -> None:
        answers.append(await errno_of(m.ops.lookup(d.inode, b"c", CTX)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(look_up)
        await trio.testing.wait_all_tasks_blocked()
        assert answers == []  # it waits for the listing under way
        store.gate.set()
    assert answers == [errno.ENOENT]
    assert store.served == served and m.ops_since(start) == []  # no second listing, no HEAD
    assert d.listed_at == started


async def test_changes_during_a_background_listing_are_kept(mounted, mock_clock) -> None:
    """unlink, rmdir, rename and a file written and forgotten while the background listing
    is in flight, served before all of them: the installed snapshot shows them, not the
    listing's old view."""
    m, store, _ = mounted
    d = await mkdir(m, "d")
    await write_file(m.ops, d.inode, "f")
    sub = await mkdir(m, "sub", d.inode)
    old = await mkdir(m, "old", d.inode)
    m.ops.ns.forget(sub.inode, 1)  # the kernel forgot the directories: in the snapshot
    m.ops.ns.forget(old.inode, 1)
    mock_clock.jump(REFRESH_AHEAD)
    store.hold()
    assert await errno_of(m.ops.lookup(d.inode, b"x", CTX)) == errno.ENOENT
    await store.held.wait()  # served: f, sub/ and old/ are in it, "late" is not
    await m.ops.unlink(d.inode, b"f", CTX)
    assert (await m.ops.lookup(d.inode, b"sub", CTX)).st_ino  # looked up again to rmdir
    await m.ops.rmdir(d.inode, b"sub", CTX)
    assert (await m.ops.lookup(d.inode, b"old", CTX)).st_ino
    await m.ops.rename(d.inode, b"old", d.inode, b"new", 0, CTX)
    late = await write_file(m.ops, d.inode, "late")
    m.ops.ns.forget(late, 1)
    store.gate.set()
    await landed(m)
    assert m.ops.ns.listing_fresh(d, trio.current_time())
    start = len(m.store.requests)
    for gone in (b"f", b"sub", b"old"):
        assert await errno_of(m.ops.lookup(d.inode, gone, CTX)) == errno.ENOENT
    assert m.ops.ns.child(d, "new") is not None
    found = await m.ops.lookup(d.inode, b"late", CTX)  # pruned: its record was replayed
    assert found.st_size == 1
    assert m.ops_since(start) == []  # all answered from the snapshot


async def test_unsure_during_a_background_listing_installs_nothing(mounted, mock_clock
                                                                  ) -> None:
    m, store, _ = mounted
    d = await mkdir(m, "d")
    mock_clock.jump(REFRESH_AHEAD)
    store.hold()
    assert await errno_of(m.ops.lookup(d.inode, b"x", CTX)) == errno.ENOENT
    await store.held.wait()
    m.ops.ns.unsure_of(d)  # e.g. a delete that failed: the name may still exist
    store.gate.set()
    await landed(m)
    assert d.listing is None
    served = store.served
    assert await errno_of(m.ops.lookup(d.inode, b"x", CTX)) == errno.ENOENT
    assert store.served == served + 1  # listed again, synchronously


@pytest.mark.parametrize("fault", [{"code": "AccessDenied"},
                                   {"status": 200, "body": b"<not-a-listing"}],
                         ids=["refused", "bad-answer"])
async def test_a_failed_background_listing_leaves_the_snapshot_to_expire(
        mounted, mock_clock, caplog, fault) -> None:
    m, store, _ = mounted
    d = await mkdir(m, "d")
    listed_at = d.listed_at
    mock_clock.jump(REFRESH_AHEAD)
    store.fail_next(lambda r: r.operation == "ListObjectsV2" and r.query.get("prefix") == "d/",
                    **fault)  # the root's listing (d's parent, renewed too) succeeds
    with caplog.at_level("DEBUG", logger="chute.fs.refresh_ahead"):
        assert await errno_of(m.ops.lookup(d.inode, b"x", CTX)) == errno.ENOENT
        await landed(m)
    assert m.ops.lookups.background_failures == 1
    assert "background listing of 'd' failed" in caplog.text
    assert not [r for r in caplog.records if r.levelname not in ("DEBUG", "INFO")]
    assert d.listed_at == listed_at and m.ops.ns.listing_fresh(d, trio.current_time())
    served = store.served
    await write_file(m.ops, d.inode, "still")  # answered from the old snapshot
    assert store.served == served  # not renewed in the background again: it expires
    mock_clock.jump(LOOKUP_TTL - REFRESH_AHEAD)  # expired: the next lookup lists itself
    served = store.served
    assert await errno_of(m.ops.lookup(d.inode, b"y", CTX)) == errno.ENOENT
    assert store.served == served + 1 and d.listed_at > listed_at
    assert m.store.keys("d/") == ["d/", "d/still"]


async def test_unmount_with_a_listing_in_flight_ends_cleanly(mock_clock) -> None:
    store = HeldListings()
    async for m in memory_mount(store=store):
        async with trio.open_nursery() as nursery:  # the mount's nursery (mount.py)
            await nursery.start(m.ops.lookups.run)
            d = await mkdir(m, "d")
            listed_at = d.listed_at
            mock_clock.jump(REFRESH_AHEAD)
            store.hold()
            assert await errno_of(m.ops.lookup(d.inode, b"x", CTX)) == errno.ENOENT
            await store.held.wait()
            nursery.cancel_scope.cancel()  # unmount
        assert m.ops.lookups.ahead.underway == {} and m.ops.lookups.ahead._nursery is None
        assert m.ops.ns._snapshots.in_flight(d) == 0
        assert d.listed_at == listed_at  # nothing installed
        store.gate.set()
