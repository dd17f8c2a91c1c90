"""The directories above the one being written, and the lookups' own client.

The kernel looks up every component of a path again once its entry expires (LOOKUP_TTL). A
listing of ``a/b/`` that finds a key proves ``a`` and ``b`` existed when it started, so
while ``b/`` is listed in the background (refresh-ahead) those lookups wait for nothing; a
directory removed elsewhere is still gone within LOOKUP_TTL. ``a/``'s own snapshot is
renewed in the background too while lookups keep hitting ``a/b/``'s (fs/refresh_ahead.py),
so ``cp -r`` entering its next directory (a lookup of a new name in ``a/``) waits for no
LIST either; a name made elsewhere in ``a/`` still shows within LOOKUP_TTL. Lookups and
listings go through the client the mount gives them (their own connections, fs/mount.py),
uploads through the uploads' client. Over the in-memory S3 on trio's MockClock, the FUSE
handlers called directly, the lookups' nursery run as the mount runs it.
"""

from __future__ import annotations

import errno

import pyfuse3
import pytest
import trio
import trio.testing

from chute.fs.lookups import LOOKUP_TTL, REFRESH_AHEAD
from chute.fs.namespace import ROOT_INODE, Node
from chute.fs.operations import ChuteOperations
from chute.uploader.config import UploaderConfig
from chute.uploader.uploader import Uploader
from tests.support.held_listings import HeldListings, landed, mkdir, write_file
from tests.support.memory_mount import CTX, MiB, Mounted, errno_of
from tests.support.memory_s3 import MemoryS3, memory_client


@pytest.fixture
def mounted(held_mount) -> tuple[Mounted, HeldListings]:
    """conftest's held_mount without its nursery."""
    m, store, _ = held_mount
    return m, store


async def test_the_directories_above_a_stream_of_creates_never_wait(mounted, mock_clock
                                                                    ) -> None:
    """Files made in a/b/ every 50 ms for 3 TTLs, ``a`` and ``b`` looked up again each time
    their entries expire, every listing taking 200 ms: no lookup waits, the root is not
    listed meanwhile, and a/ (b's parent) at most once per REFRESH_AHEAD, in the
    background."""
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
    assert listed and set(listed) == {"a/b/", "a/"}, listed
    assert listed.count("a/") <= 3 * LOOKUP_TTL / REFRESH_AHEAD + 1, listed
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


# -- the parent of a directory being written (cp -r entering its next directory) -----------


async def write_for(m: Mounted, clock: trio.testing.MockClock, d: Node, seconds: float,
                    prefix: str = "f", every: float = 0.1) -> None:
    """Files made in ``d`` one every ``every`` s for ``seconds``, as ``cp`` makes them; none
    waits (no time passes in it)."""
    end = trio.current_time() + seconds
    n = 0
    while trio.current_time() < end:
        before = trio.current_time()
        await write_file(m.ops, d.inode, f"{prefix}{n}")
        assert trio.current_time() == before, f"{prefix}{n} waited"
        n += 1
        clock.jump(every)
        await trio.testing.wait_all_tasks_blocked()


def lists_of(m: Mounted, start: int, prefix: str) -> int:
    """The ListObjectsV2 of ``prefix`` (a directory's listing) since request ``start``."""
    return sum(1 for r in m.store.requests[start:]
               if r.operation == "ListObjectsV2" and r.query.get("prefix", "") == prefix)


async def test_entering_the_next_directory_waits_for_no_listing(mounted, mock_clock) -> None:
    """cp -r: files made in tree/d00/ for 2.5 TTLs, every listing taking 200 ms. tree/'s
    snapshot would have expired long ago; it was renewed in the background meanwhile, so
    the lookup of the next directory's name in tree/ (and its mkdir) waits for no LIST.
    One level: the root, which nothing looks up in meanwhile, is not listed."""
    m, store = mounted
    mock_clock.autojump_threshold = 0.5  # a lookup that waits fails the test, never hangs it
    tree = await mkdir(m, "tree")
    d00 = await mkdir(m, "d00", tree.inode)
    created = tree.listed_at
    store.delay = 0.2
    start = len(m.store.requests)
    await write_for(m, mock_clock, d00, 2.5 * LOOKUP_TTL)
    assert tree.listed_at > created + LOOKUP_TTL
    assert 2 <= lists_of(m, start, "tree/") <= 2.5 * LOOKUP_TTL / REFRESH_AHEAD + 1
    assert lists_of(m, start, "") == 0  # the root: one level only
    before, start = trio.current_time(), len(m.store.requests)
    assert await errno_of(m.ops.lookup(tree.inode, b"d01", CTX)) == errno.ENOENT
    d01 = await mkdir(m, "d01", tree.inode)
    assert trio.current_time() == before
    assert m.ops_since(start) == ["PutObject"]  # d01's marker, nothing asked
    assert m.ops.lookups.background_failures == 0
    await write_for(m, mock_clock, d01, 0.5 * LOOKUP_TTL)


@pytest.mark.parametrize("parent", ["no snapshot", "two pages"])
async def test_a_parent_without_a_one_page_snapshot_is_not_listed_behind(
        mounted, mock_clock, parent) -> None:
    """tree/ holds no snapshot (a failed delete dropped it), or its snapshot came from a
    listing of two pages (a readdir): writing in tree/d00/ does not list tree/ at all."""
    m, _store = mounted
    tree = await mkdir(m, "tree")
    d00 = await mkdir(m, "d00", tree.inode)
    if parent == "no snapshot":
        m.ops.ns.unsure_of(tree)
    else:
        for i in range(1001):
            m.store.put(f"tree/x{i:04d}", b"x")
        await m.ops.lookups.list_dir(tree)  # readdir's listing: whole, two pages
        assert not tree.fits_one_page and m.ops.ns.listing_fresh(tree, trio.current_time())
    start = len(m.store.requests)
    await write_for(m, mock_clock, d00, 2 * LOOKUP_TTL)
    await landed(m)
    assert lists_of(m, start, "tree/") == 0
    assert lists_of(m, start, "tree/d00/") >= 2  # d00 itself was renewed


async def test_a_failed_listing_of_the_parent_is_counted_and_not_retried(
        mounted, mock_clock, caplog) -> None:
    """tree/'s background listing fails: logged at debug, counted, and tree/'s snapshot is
    not listed again in the background however many lookups hit d00/; once it expires the
    lookup of a new name in tree/ lists it (and waits), as without refresh-ahead."""
    m, store = mounted
    tree = await mkdir(m, "tree")
    d00 = await mkdir(m, "d00", tree.inode)
    listed_at = tree.listed_at
    store.fail_next(lambda r: r.operation == "ListObjectsV2"
                    and r.query.get("prefix") == "tree/", code="AccessDenied")
    start = len(m.store.requests)
    with caplog.at_level("DEBUG", logger="chute.fs.refresh_ahead"):
        await write_for(m, mock_clock, d00, 0.95 * LOOKUP_TTL)
        await landed(m)
    assert m.ops.lookups.background_failures == 1
    assert "background listing of 'tree' failed" in caplog.text
    assert not [r for r in caplog.records if r.levelname not in ("DEBUG", "INFO")]
    assert lists_of(m, start, "tree/") == 1  # the failed one, not retried
    assert lists_of(m, start, "tree/d00/") >= 1
    assert tree.listed_at == listed_at
    mock_clock.jump(0.1)  # tree/'s snapshot has expired
    start = len(m.store.requests)
    assert await errno_of(m.ops.lookup(tree.inode, b"d01", CTX)) == errno.ENOENT
    assert m.ops_since(start) == ["ListObjectsV2"] and tree.listed_at > listed_at


async def test_a_name_made_elsewhere_in_the_parent_shows_within_the_ttl(mounted, mock_clock
                                                                      ) -> None:
    """While tree/ is kept fresh by the writes in tree/d00/ (listings taking 200 ms), a file
    put in tree/ by another client: a lookup of it in tree/, tried every 100 ms, finds it
    within LOOKUP_TTL, and none of those lookups waits."""
    m, store = mounted
    mock_clock.autojump_threshold = 0.5
    tree = await mkdir(m, "tree")
    d00 = await mkdir(m, "d00", tree.inode)
    store.delay = 0.2
    await write_for(m, mock_clock, d00, 1.5 * LOOKUP_TTL)
    m.store.put("tree/outside", b"made elsewhere")
    put_at = trio.current_time()
    n = 0
    while True:
        before = trio.current_time()
        assert m.ops.ns.listing_fresh(tree, before)  # answered from a snapshot under the TTL
        try:
            await m.ops.lookup(tree.inode, b"outside", CTX)
            break  # found
        except pyfuse3.FUSEError as exc:
            assert exc.errno == errno.ENOENT
        assert trio.current_time() == before
        assert before - put_at < LOOKUP_TTL, "not shown within LOOKUP_TTL"
        await write_for(m, mock_clock, d00, 0.1, prefix=f"g{n}-")
        n += 1
    assert trio.current_time() - put_at <= LOOKUP_TTL
    assert tree.listed_at >= put_at  # from a listing that started after the put


async def test_the_parents_listing_never_replaces_a_newer_snapshot(mounted, mock_clock
                                                                 ) -> None:
    """tree/'s background listing is held; meanwhile a file is put in tree/ by another
    client and a readdir lists tree/ whole (a newer snapshot, holding the file). The
    background listing, started earlier and served before the put, lands last: it is not
    installed, and the file stays visible."""
    m, store = mounted
    tree = await mkdir(m, "tree")
    d00 = await mkdir(m, "d00", tree.inode)
    mock_clock.jump(REFRESH_AHEAD)
    store.hold()
    held = store.gate
    assert await errno_of(m.ops.lookup(d00.inode, b"f", CTX)) == errno.ENOENT
    await trio.testing.wait_all_tasks_blocked()
    assert set(m.ops.lookups.ahead.underway) == {tree.inode, d00.inode}
    m.store.put("tree/outside", b"made elsewhere")
    store.gate = trio.Event()  # the readdir's listing is answered at once
    store.gate.set()
    mock_clock.jump(0.1)
    readdir_at = trio.current_time()
    assert "outside" in await m.ops.lookups.list_dir(tree)
    assert tree.listed_at == readdir_at
    held.set()
    await landed(m)
    assert tree.listed_at == readdir_at  # the older listing was not installed
    assert (await m.ops.lookup(tree.inode, b"outside", CTX)).st_size == len(b"made elsewhere")
