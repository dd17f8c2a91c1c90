"""A HEAD beside the listing (fs/head_beside.py): a lookup of a name in a directory the mount
has never listed, or of a file its expired snapshot shows by name, sends the name's HEAD
together with the directory's LIST, so opening a file the mount has not seen costs one round
trip, not two; the HEAD's answer is used only if the listing shows the same object, else the
name is asked about again as before. A lookup answered from a snapshot, or of a name the
expired snapshot did not show (the create path), sends no HEAD.
Over the in-memory S3 on trio's MockClock, the FUSE handlers called directly, the lookups'
nursery run as the mount runs it."""

from __future__ import annotations

import errno
import stat

import pytest
import trio
import trio.testing

from chute.fs.lookups import LOOKUP_TTL
from chute.fs.namespace import ROOT_INODE
from tests.support.held_listings import HeldListings, mkdir
from tests.support.memory_mount import CTX, Mounted, errno_of

MTIME_NS = 1_500_000_000_123_456_789
META = {"chute-mode": "640", "chute-mtime-ns": str(MTIME_NS)}


@pytest.fixture
def mounted(held_mount) -> tuple[Mounted, HeldListings]:
    """conftest's held_mount without its nursery."""
    m, store, _ = held_mount
    return m, store


async def test_an_unseen_file_costs_one_round_trip(mounted, mock_clock) -> None:
    """Both requests are sent before either is answered (each held until the other
    arrived), the lookup takes one 200 ms round trip, not two, and its attributes are the
    HEAD's (mode and mtime from the object's metadata, which listings do not carry)."""
    m, store = mounted
    m.store.put("f", b"hello", metadata=META)
    start = len(m.store.requests)
    store.hold()
    store.hold_heads()
    answers = []

    async def look_up() -> None:
        answers.append(await m.ops.lookup(ROOT_INODE, b"f", CTX))

    mock_clock.autojump_threshold = 0.5  # one request waiting for the other fails, not hangs
    async with trio.open_nursery() as nursery:
        nursery.start_soon(look_up)
        with trio.fail_after(1):
            await store.held.wait()  # the LIST is held: the HEAD was sent all the same
            await store.head_held.wait()  # the HEAD is held: the LIST was sent all the same
        assert sorted(m.ops_since(start)) == ["ListObjectsV2"]  # a held HEAD: not logged yet
        store.gate.set()
        store.head_gate.set()
    assert sorted(m.ops_since(start)) == ["HeadObject", "ListObjectsV2"]

    mock_clock.autojump_threshold = 0
    store.delay = store.head_delay = 0.2
    m.store.put("g", b"world", metadata=META)
    m.ops.ns.unsure_of(m.ops.ns.root)  # never listed again, as in a new mount
    start, before = len(m.store.requests), trio.current_time()
    attrs = await m.ops.lookup(ROOT_INODE, b"g", CTX)
    assert trio.current_time() - before == pytest.approx(0.2)
    assert sorted(m.ops_since(start)) == ["HeadObject", "ListObjectsV2"]
    for a in (answers[0], attrs):
        assert stat.S_IMODE(a.st_mode) == 0o640 and stat.S_ISREG(a.st_mode)
        assert a.st_mtime_ns == MTIME_NS and a.st_size == 5


async def test_an_object_replaced_between_the_two_is_asked_about_again(mounted, mock_clock
                                                                      ) -> None:
    """The listing shows one object, the HEAD (served after it) another: the HEAD is not
    used, a fresh HEAD is sent and its answer (the new object) is the lookup's."""
    m, store = mounted
    m.store.put("f", b"old", metadata=META)
    start = len(m.store.requests)
    store.hold_heads()
    answers = []

    async def look_up() -> None:
        answers.append(await m.ops.lookup(ROOT_INODE, b"f", CTX))

    mock_clock.autojump_threshold = 0.5
    async with trio.open_nursery() as nursery:
        nursery.start_soon(look_up)
        with trio.fail_after(1):
            await store.head_held.wait()
        await trio.testing.wait_all_tasks_blocked()  # the listing has landed
        assert m.ops_since(start) == ["ListObjectsV2"]
        new = m.store.put("f", b"replaced", metadata={"chute-mode": "600"})
        store.head_gate.set()
    assert m.ops_since(start) == ["ListObjectsV2", "HeadObject", "HeadObject"]
    node = m.ops.ns.node(answers[0].st_ino)
    assert node.etag == new.etag and node.size == len(b"replaced")
    assert stat.S_IMODE(answers[0].st_mode) == 0o600


async def test_a_failed_head_is_asked_about_again(mounted) -> None:
    """The HEAD beside the listing fails: the lookup does not, it asks again."""
    m, store = mounted
    m.store.put("f", b"x", metadata=META)
    store.fail_next(lambda r: r.operation == "HeadObject", code="AccessDenied")
    start = len(m.store.requests)
    attrs = await m.ops.lookup(ROOT_INODE, b"f", CTX)
    assert sorted(m.ops_since(start)) == ["HeadObject", "HeadObject", "ListObjectsV2"]
    assert stat.S_IMODE(attrs.st_mode) == 0o640


async def test_a_name_that_is_also_a_directory_is_the_directory(mounted) -> None:
    """The HEAD finds a file ``n``, the listing a directory ``n/`` too: the directory."""
    m, _ = mounted
    m.store.put("n", b"file", metadata=META)
    m.store.put("n/inner", b"x")
    start = len(m.store.requests)
    attrs = await m.ops.lookup(ROOT_INODE, b"n", CTX)
    assert stat.S_ISDIR(attrs.st_mode)
    assert sorted(m.ops_since(start)) == ["HeadObject", "ListObjectsV2"]


async def test_a_missing_name_and_a_fresh_snapshot(mounted, mock_clock) -> None:
    """A name missing from a directory never listed: ENOENT after the LIST and HEAD. Then,
    from the fresh snapshot, no request at all; in a directory made here (its snapshot
    made with it) and, once that expired, the create path lists again without a HEAD."""
    m, _ = mounted
    start = len(m.store.requests)
    assert await errno_of(m.ops.lookup(ROOT_INODE, b"nothing", CTX)) == errno.ENOENT
    assert sorted(m.ops_since(start)) == ["HeadObject", "ListObjectsV2"]
    start = len(m.store.requests)
    assert await errno_of(m.ops.lookup(ROOT_INODE, b"other", CTX)) == errno.ENOENT
    d = await mkdir(m, "d")
    assert await errno_of(m.ops.lookup(d.inode, b"new", CTX)) == errno.ENOENT
    assert "HeadObject" not in m.ops_since(start)
    mock_clock.jump(LOOKUP_TTL + 0.1)
    start = len(m.store.requests)
    assert await errno_of(m.ops.lookup(d.inode, b"new", CTX)) == errno.ENOENT
    assert m.ops_since(start) == ["ListObjectsV2"]


async def test_a_file_of_an_expired_snapshot_costs_one_round_trip(mounted, mock_clock
                                                                 ) -> None:
    """A directory listed a while ago: opening a file its old snapshot shows by name sends
    the HEAD beside the new LIST (one round trip); a name it did not show gets none."""
    m, store = mounted
    m.store.put("f", b"hello", metadata=META)
    m.store.put("g", b"world", metadata=META)
    await m.ops.lookup(ROOT_INODE, b"f", CTX)  # lists the root; g is known by name only
    mock_clock.jump(LOOKUP_TTL + 0.1)
    mock_clock.autojump_threshold = 0
    store.delay = store.head_delay = 0.2
    start, before = len(m.store.requests), trio.current_time()
    attrs = await m.ops.lookup(ROOT_INODE, b"g", CTX)
    assert trio.current_time() - before == pytest.approx(0.2)
    assert sorted(m.ops_since(start)) == ["HeadObject", "ListObjectsV2"]
    assert stat.S_IMODE(attrs.st_mode) == 0o640 and attrs.st_mtime_ns == MTIME_NS
    mock_clock.jump(LOOKUP_TTL + 0.1)
    start = len(m.store.requests)
    assert await errno_of(m.ops.lookup(ROOT_INODE, b"new", CTX)) == errno.ENOENT
    assert m.ops_since(start) == ["ListObjectsV2"]
