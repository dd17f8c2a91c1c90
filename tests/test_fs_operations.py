"""The FUSE operations without FUSE: handlers called directly over the in-memory S3
(tests/support/memory_s3.py). Lookups and listing freshness, object operations, policies,
the handle table's last-close rule and lookup counts. No root, no kernel, no SeaweedFS."""

from __future__ import annotations

import errno
import os

import pyfuse3
import pytest
import trio
import trio.testing

from chute.fs import handles as handles_module
from chute.fs import writer_exit
from chute.fs.lookups import LOOKUP_TTL
from chute.fs.metadata import MODE_META, MTIME_META
from chute.fs.mountinfo import MountEntry
from chute.fs.namespace import ROOT_INODE, Node
from chute.fs.operations import ChuteOperations
from chute.fs.policy import MountPolicy
from tests.support.memory_mount import CTX, WRITE, Mounted, errno_of, memory_mount
from tests.support.memory_s3 import MemoryS3, memory_client

MiB = 1 << 20



async def write_file(ops: ChuteOperations, parent: int, name: str, data: bytes) -> Node:
    info, attrs = await ops.create(parent, name.encode(), 0o600, WRITE | os.O_CREAT, CTX)
    await ops.write(info.fh, 0, data)
    await ops.flush(info.fh)
    await ops.release(info.fh)
    return ops.ns.node(attrs.st_ino)


# -- lookups ------------------------------------------------------------------------------


async def test_fresh_listing_answers_absence_without_a_request(m: Mounted,
                                                               mock_clock) -> None:
    attrs = await m.ops.mkdir(ROOT_INODE, b"d", 0o755, CTX)
    start = len(m.store.requests)
    for name in (b"a", b"b", b"c"):
        assert await errno_of(m.ops.lookup(attrs.st_ino, name, CTX)) == errno.ENOENT
    assert m.ops_since(start) == []
    mock_clock.jump(LOOKUP_TTL)
    assert await errno_of(m.ops.lookup(attrs.st_ino, b"a", CTX)) == errno.ENOENT
    assert m.ops_since(start) == ["ListObjectsV2"]  # relisted once, then fresh again
    assert await errno_of(m.ops.lookup(attrs.st_ino, b"b", CTX)) == errno.ENOENT
    assert m.ops_since(start) == ["ListObjectsV2"]


async def test_names_from_outside_show_up_after_the_ttl(m: Mounted, mock_clock) -> None:
    attrs = await m.ops.mkdir(ROOT_INODE, b"d", 0o755, CTX)
    m.store.put("d/late", b"xyz", {MODE_META: "0640", MTIME_META: "1000"})
    assert await errno_of(m.ops.lookup(attrs.st_ino, b"late", CTX)) == errno.ENOENT
    mock_clock.jump(LOOKUP_TTL)
    start = len(m.store.requests)
    found = await m.ops.lookup(attrs.st_ino, b"late", CTX)
    assert m.ops_since(start) == ["ListObjectsV2", "HeadObject"]  # listed, then its metadata
    assert found.st_size == 3 and found.attr_timeout == LOOKUP_TTL
    assert found.st_mode & 0o777 == 0o640 and found.st_mtime_ns == 1000
    start = len(m.store.requests)
    assert (await m.ops.getattr(found.st_ino, CTX)).st_size == 3
    assert m.ops_since(start) == []


async def test_a_large_directory_is_asked_name_by_name(m: Mounted, mock_clock,
                                                       monkeypatch) -> None:
    from chute.fs import lookups

    monkeypatch.setattr(lookups, "RELIST_MAX_KEYS", 2)
    for name in ("a", "b", "c"):
        m.store.put(f"big/{name}", b"1")
    big = await m.ops.lookup(ROOT_INODE, b"big", CTX)
    fh = await m.ops.opendir(big.st_ino, CTX)  # three keys: more than one page
    await m.ops.releasedir(fh)
    mock_clock.jump(LOOKUP_TTL)
    start = len(m.store.requests)
    assert await errno_of(m.ops.lookup(big.st_ino, b"zz", CTX)) == errno.ENOENT
    assert m.ops_since(start) == ["HeadObject", "ListObjectsV2"]


# -- object operations --------------------------------------------------------------------


async def test_chmod_is_a_self_copy_guarded_by_the_etag(m: Mounted) -> None:
    node = await write_file(m.ops, ROOT_INODE, "f", b"hello")
    start = len(m.store.requests)
    etag = m.store.objects["f"].etag
    await m.ops.objects.change_mode_mtime(node, 0o640 | 0o100000, None)
    [copy] = m.store.requests[start:]
    assert copy.operation == "CopyObject"
    assert copy.headers["x-amz-copy-source-if-match"].strip('"') == etag.strip('"')
    assert m.store.objects["f"].metadata[MODE_META] == "0640"
    assert m.store.body("f") == b"hello"
    m.store.put("f", b"changed behind our back")
    with pytest.raises(Exception) as caught:
        await m.ops.objects.change_mode_mtime(node, 0o644, None)
    assert getattr(caught.value, "errno", None) == errno.ESTALE
    assert m.store.body("f") == b"changed behind our back"


async def test_rename_file_and_empty_dir(m: Mounted) -> None:
    await write_file(m.ops, ROOT_INODE, "f", b"data")
    await m.ops.rename(ROOT_INODE, b"f", ROOT_INODE, b"g", 0, CTX)
    assert m.store.keys() == ["g"] and m.store.body("g") == b"data"
    d = await m.ops.mkdir(ROOT_INODE, b"d", 0o755, CTX)
    await m.ops.rename(ROOT_INODE, b"d", ROOT_INODE, b"e", 0, CTX)
    assert m.store.keys() == ["e/", "g"]
    assert m.ops.ns.path(m.ops.ns.node(d.st_ino)) == "e"
    assert await errno_of(m.ops.rename(ROOT_INODE, b"g", ROOT_INODE, b"e", 0, CTX)) == \
        errno.EISDIR
    assert await errno_of(m.ops.rename(ROOT_INODE, b"g", ROOT_INODE, b"h",
                                       pyfuse3.RENAME_EXCHANGE, CTX)) == errno.EINVAL


async def test_unlink_and_rmdir(m: Mounted) -> None:
    d = await m.ops.mkdir(ROOT_INODE, b"d", 0o755, CTX)
    await write_file(m.ops, d.st_ino, "f", b"x")
    assert await errno_of(m.ops.rmdir(ROOT_INODE, b"d", CTX)) == errno.ENOTEMPTY
    assert await errno_of(m.ops.unlink(ROOT_INODE, b"d", CTX)) == errno.EISDIR
    await m.ops.unlink(d.st_ino, b"f", CTX)
    assert await errno_of(m.ops.lookup(d.st_ino, b"f", CTX)) == errno.ENOENT
    await m.ops.rmdir(ROOT_INODE, b"d", CTX)
    assert m.store.keys() == []
    assert await errno_of(m.ops.getattr(d.st_ino, CTX)) == errno.ENOENT


async def test_policies() -> None:
    async for m in memory_mount(MountPolicy(no_overwrite=True, no_delete=True)):
        node = await write_file(m.ops, ROOT_INODE, "f", b"x")
        assert await errno_of(m.ops.open(node.inode, WRITE, CTX)) == errno.EEXIST
        assert await errno_of(m.ops.unlink(ROOT_INODE, b"f", CTX)) == errno.EPERM
        assert await errno_of(m.ops.rename(ROOT_INODE, b"f", ROOT_INODE, b"g", 0, CTX)) \
            == errno.EPERM
        await m.ops.mkdir(ROOT_INODE, b"d", 0o755, CTX)
        assert await errno_of(m.ops.rmdir(ROOT_INODE, b"d", CTX)) == errno.EPERM
        assert m.store.keys() == ["d/", "f"]
        put = [r for r in m.store.requests if r.operation == "PutObject" and r.key == "f"]
        assert put[0].headers.get("if-none-match") == "*"  # no_clobber reached the upload


async def test_write_only_and_whole_objects(m: Mounted) -> None:
    node = await write_file(m.ops, ROOT_INODE, "f", b"x")
    info = await m.ops.open(node.inode, os.O_RDONLY, CTX)  # reads off: read() is EACCES
    assert await errno_of(m.ops.read(info.fh, 0, 1)) == errno.EACCES
    await m.ops.release(info.fh)
    # opens without O_TRUNC and O_APPEND continue the object: tests/test_append_unlink.py
    assert await errno_of(m.ops.lookup(ROOT_INODE, b"\xff", CTX)) == errno.EINVAL


async def test_a_file_unchanged_since_its_put_closes_without_the_metadata_lock(
        m: Mounted) -> None:
    """The fix-up after the close finds nothing to store: it neither copies nor waits for
    the node's metadata lock (held here as a rename in flight would hold it)."""
    info, attrs = await m.ops.create(ROOT_INODE, b"f", 0o640, WRITE | os.O_CREAT, CTX)
    node = m.ops.ns.node(attrs.st_ino)
    await m.ops.write(info.fh, 0, b"small")
    held = trio.Event()
    async with trio.open_nursery() as nursery:
        async def hold() -> None:
            async with m.ops.objects.locked(node):
                held.set()
                await trio.sleep_forever()
        nursery.start_soon(hold)
        await held.wait()
        with trio.fail_after(5):
            await m.ops.flush(info.fh)
        nursery.cancel_scope.cancel()
    await m.ops.release(info.fh)
    assert m.store.operations() == ["PutObject"]
    assert m.store.objects["f"].metadata[MODE_META] == "0640"


async def test_a_chmod_after_the_create_was_sent_is_copied_at_close(m: Mounted) -> None:
    info, attrs = await m.ops.create(ROOT_INODE, b"f", 0o644, WRITE | os.O_CREAT, CTX)
    await m.ops.write(info.fh, 0, b"x" * (16 * MiB))  # full slices: the Create goes out
    await trio.testing.wait_all_tasks_blocked()
    assert m.store.operations()[0] == "CreateMultipartUpload"
    node = m.ops.ns.node(attrs.st_ino)
    await m.ops.objects.change_mode_mtime(node, 0o600, None)
    await m.ops.flush(info.fh)
    await m.ops.release(info.fh)
    assert m.store.operations()[-1] == "CopyObject"
    assert m.store.objects["f"].metadata[MODE_META] == "0600"


# -- the handle table and the last close --------------------------------------------------


async def test_the_last_close_finishes_the_file(m: Mounted, monkeypatch) -> None:
    held = [True]
    monkeypatch.setattr(handles_module.mountinfo, "find",
                        lambda path: MountEntry(77, path, "fuse.chute", "chute"))
    monkeypatch.setattr(handles_module.openers, "holder",
                        lambda *args, **kwargs: 4242 if held[0] else None)
    info, _ = await m.ops.create(ROOT_INODE, b"f", 0o644, WRITE | os.O_CREAT, CTX)
    await m.ops.write(info.fh, 0, b"abc")
    await m.ops.flush(info.fh)  # a dup's close: another descriptor still holds the file
    assert m.store.keys() == []
    held[0] = False
    await m.ops.flush(info.fh)  # the last close
    assert m.store.body("f") == b"abc"
    await m.ops.release(info.fh)
    assert len(m.ops.handles) == 0


def _closes_seen_from(monkeypatch, holders: list[int | None],
                      ending: dict[int, writer_exit.ProcessEnd]) -> None:
    """The last-close check answers from ``holders`` (one answer per flush) and the kernel's
    view of exiting processes from ``ending``."""
    monkeypatch.setattr(handles_module.mountinfo, "find",
                        lambda path: MountEntry(77, path, "fuse.chute", "chute"))
    monkeypatch.setattr(handles_module.openers, "holder",
                        lambda *args, **kwargs: holders.pop(0))
    monkeypatch.setattr(writer_exit, "ending", ending.get)


async def test_a_writer_killed_with_the_file_open_leaves_no_object(m: Mounted,
                                                                   monkeypatch) -> None:
    m.store.put("f", b"the last good copy")
    _closes_seen_from(monkeypatch, [None], {CTX.pid: writer_exit.ProcessEnd(CTX.pid, "cat", 9)})
    attrs = await m.ops.lookup(ROOT_INODE, b"f", CTX)
    info = await m.ops.open(attrs.st_ino, WRITE, CTX)
    await m.ops.write(info.fh, 0, b"trunc")
    assert await errno_of(m.ops.flush(info.fh)) == errno.EIO
    await m.ops.release(info.fh)
    assert m.store.body("f") == b"the last good copy"
    assert m.store.uploads == {}
    totals = m.ops.handles.uploader.statistics().totals
    assert (totals.files_writer_died, totals.files_abandoned) == (1, 0)


async def test_a_forked_holder_killed_last_leaves_no_object(m: Mounted, monkeypatch) -> None:
    """The opener exits 0 while a child still holds the file; the child is then killed."""
    child = 4242
    ending = {CTX.pid: writer_exit.ProcessEnd(CTX.pid, "sh", 0)}
    _closes_seen_from(monkeypatch, [child, None], ending)
    info, _ = await m.ops.create(ROOT_INODE, b"f", 0o644, WRITE | os.O_CREAT, CTX)
    await m.ops.write(info.fh, 0, b"abc")
    await m.ops.flush(info.fh)  # the opener's exit: the child still holds it
    ending[child] = writer_exit.ProcessEnd(child, "sh", 9)
    assert await errno_of(m.ops.flush(info.fh)) == errno.EIO
    await m.ops.release(info.fh)
    assert m.store.keys() == []


async def test_a_writer_exiting_0_lands_its_file(m: Mounted, monkeypatch) -> None:
    _closes_seen_from(monkeypatch, [None], {CTX.pid: writer_exit.ProcessEnd(CTX.pid, "sh", 0)})
    info, _ = await m.ops.create(ROOT_INODE, b"f", 0o644, WRITE | os.O_CREAT, CTX)
    await m.ops.write(info.fh, 0, b"abc")
    await m.ops.flush(info.fh)
    await m.ops.release(info.fh)
    assert m.store.body("f") == b"abc"


async def test_commit_partial_finishes_a_dying_writers_file(monkeypatch) -> None:
    _closes_seen_from(monkeypatch, [None], {CTX.pid: writer_exit.ProcessEnd(CTX.pid, "sh", 256)})
    async for mounted in memory_mount(MountPolicy(commit_partial=True)):
        info, _ = await mounted.ops.create(ROOT_INODE, b"f", 0o644, WRITE | os.O_CREAT, CTX)
        await mounted.ops.write(info.fh, 0, b"abc")
        await mounted.ops.flush(info.fh)
        await mounted.ops.release(info.fh)
        assert mounted.store.body("f") == b"abc"


async def test_without_mountinfo_joined_handles_are_counted(m: Mounted) -> None:
    info, attrs = await m.ops.create(ROOT_INODE, b"f", 0o644, WRITE | os.O_CREAT, CTX)
    joined = await m.ops.open(attrs.st_ino, os.O_WRONLY, CTX)  # truncate -s while written
    await m.ops.write(info.fh, 0, b"abc")
    await m.ops.flush(joined.fh)
    await m.ops.release(joined.fh)
    assert m.store.keys() == []
    await m.ops.flush(info.fh)
    assert m.store.body("f") == b"abc"
    await m.ops.release(info.fh)


async def test_release_finishes_what_no_flush_did(m: Mounted) -> None:
    info, _ = await m.ops.create(ROOT_INODE, b"f", 0o644, WRITE | os.O_CREAT, CTX)
    await m.ops.write(info.fh, 0, b"abc")
    await m.ops.release(info.fh)
    assert m.store.body("f") == b"abc"


# -- lookup counts ------------------------------------------------------------------------


async def test_forget_empties_the_table(m: Mounted) -> None:
    d = await m.ops.mkdir(ROOT_INODE, b"d", 0o755, CTX)
    inodes = [(await write_file(m.ops, d.st_ino, f"f{i}", b"x")).inode for i in range(50)]
    assert len(m.ops.ns) == 52
    looked = await m.ops.lookup(d.st_ino, b"f0", CTX)
    await m.ops.forget([(inode, 1) for inode in inodes])
    assert len(m.ops.ns) == 3  # root, d, f0 (looked up twice)
    await m.ops.forget([(looked.st_ino, 1), (d.st_ino, 1)])
    assert len(m.ops.ns) == 1
    # Forgotten but still there: found again from the listing, without a request.
    start = len(m.store.requests)
    again = await m.ops.lookup(ROOT_INODE, b"d", CTX)
    assert (await m.ops.lookup(again.st_ino, b"f7", CTX)).st_size == 1
    assert again.st_ino not in inodes and len(m.ops.ns) == 3
    # d from the root's fresh snapshot (its full record); f7 by one listing of d (d's own
    # snapshot left with its node), which knows f7 by name only, then a HEAD for its attributes.
    assert [(r.operation, r.query.get("prefix", r.key)) for r in m.store.requests[start:]] \
        == [("ListObjectsV2", "d/"), ("HeadObject", "d/f7")]


async def test_readdir_counts_each_entry_it_replies(m: Mounted, monkeypatch) -> None:
    for name in ("a", "b", "c"):
        m.store.put(name, b"1")
    replied: list[bytes] = []

    def reply(token, name, attrs, next_id):  # type: ignore[no-untyped-def]
        if len(replied) == 2:
            return False  # the kernel's buffer is full
        replied.append(name)
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    fh = await m.ops.opendir(ROOT_INODE, CTX)
    await m.ops.readdir(fh, 0, None)  # type: ignore[arg-type]
    await m.ops.releasedir(fh)
    assert replied == [b"a", b"b"]
    a, b = (m.ops.ns.child(m.ops.ns.root, n) for n in ("a", "b"))
    assert a is not None and b is not None and a.lookups == b.lookups == 1
    assert m.ops.ns.child(m.ops.ns.root, "c") is None  # not replied: not in the table
    await m.ops.forget([(a.inode, 1), (b.inode, 1)])
    assert len(m.ops.ns) == 1


async def test_requests_for_forgotten_inodes_are_enoent(m: Mounted) -> None:
    node = await write_file(m.ops, ROOT_INODE, "f", b"x")
    inode = node.inode
    await m.ops.forget([(inode, 1)])
    assert await errno_of(m.ops.getattr(inode, CTX)) == errno.ENOENT
    assert await errno_of(m.ops.open(inode, WRITE, CTX)) == errno.ENOENT
    await m.ops.forget([(inode, 1)])  # again: ignored


# -- failures -----------------------------------------------------------------------------


async def test_a_failed_mkdir_leaves_no_directory(m: Mounted) -> None:
    m.store.fail_next("PutObject", code="AccessDenied")
    assert await errno_of(m.ops.mkdir(ROOT_INODE, b"d", 0o755, CTX)) == errno.EIO
    assert await errno_of(m.ops.lookup(ROOT_INODE, b"d", CTX)) == errno.ENOENT
    assert m.ops.ns.child(m.ops.ns.root, "d") is None


async def test_a_failed_new_file_disappears(m: Mounted) -> None:
    m.store.fail_next("PutObject", code="AccessDenied")
    info, _ = await m.ops.create(ROOT_INODE, b"f", 0o644, WRITE | os.O_CREAT, CTX)
    await m.ops.write(info.fh, 0, b"abc")
    assert await errno_of(m.ops.flush(info.fh)) == errno.EIO
    await m.ops.release(info.fh)
    assert m.ops.ns.child(m.ops.ns.root, "f") is None
    assert m.ops.ns.root.listing is None  # unsure: the next lookup asks the store
    assert await errno_of(m.ops.lookup(ROOT_INODE, b"f", CTX)) == errno.ENOENT


async def test_no_overwrite_rename_asks_the_store_about_the_target() -> None:
    async for m in memory_mount(MountPolicy(no_overwrite=True)):
        await write_file(m.ops, ROOT_INODE, "f", b"x")
        m.store.put("late", b"appeared meanwhile")
        assert await errno_of(m.ops.rename(ROOT_INODE, b"f", ROOT_INODE, b"late", 0, CTX)) \
            == errno.EEXIST
        assert m.store.body("late") == b"appeared meanwhile" and m.store.body("f") == b"x"
        await m.ops.rename(ROOT_INODE, b"f", ROOT_INODE, b"free", 0, CTX)
        assert m.store.keys() == ["free", "late"]


# -- hostile names and neighbours (issue 13) ----------------------------------------------


async def test_names_this_mount_wrote_expire_like_any_other(m: Mounted, mock_clock) -> None:
    """A file this mount made and another client deleted is gone after LOOKUP_TTL: from
    lookups (so rsync sends it again) and from listings (ls)."""
    d = await m.ops.mkdir(ROOT_INODE, b"rs", 0o755, CTX)
    for name in ("f1", "f2"):
        await write_file(m.ops, d.st_ino, name, b"data")
    f2 = await m.ops.lookup(d.st_ino, b"f2", CTX)  # the kernel still holds it
    del m.store.objects["rs/f2"]  # another client deletes it
    fh = await m.ops.opendir(d.st_ino, CTX)
    assert [n for n, _ in m.ops.handles.dir_entries(fh)] == ["f1", "f2"]  # within the TTL
    await m.ops.releasedir(fh)
    mock_clock.jump(LOOKUP_TTL)
    assert await errno_of(m.ops.lookup(d.st_ino, b"f2", CTX)) == errno.ENOENT
    await m.ops.forget([(f2.st_ino, 2)])  # the kernel lets go of it: still gone
    assert await errno_of(m.ops.lookup(d.st_ino, b"f2", CTX)) == errno.ENOENT
    assert (await m.ops.lookup(d.st_ino, b"f1", CTX)).st_size == 4
    fh = await m.ops.opendir(d.st_ino, CTX)
    assert [n for n, _ in m.ops.handles.dir_entries(fh)] == ["f1"]
    await m.ops.releasedir(fh)
    # A directory this mount made and another client removed goes the same way.
    await m.ops.mkdir(d.st_ino, b"sub", 0o755, CTX)
    del m.store.objects["rs/sub/"]
    mock_clock.jump(LOOKUP_TTL)
    assert await errno_of(m.ops.lookup(d.st_ino, b"sub", CTX)) == errno.ENOENT


async def test_with_the_store_away_names_made_here_keep_their_state(m: Mounted,
                                                                   autojump_clock) -> None:
    """Expiry asks the store; if it cannot answer, a name this mount made keeps what the
    mount knows, while a name learned from the store is EIO (not guessed)."""
    import httpx

    await write_file(m.ops, ROOT_INODE, "mine", b"data")
    m.store.put("theirs", b"x")
    await m.ops.lookup(ROOT_INODE, b"theirs", CTX)
    await trio.sleep(LOOKUP_TTL)
    m.store.fail_next(None, error=httpx.ConnectError, times=10_000)
    assert (await m.ops.lookup(ROOT_INODE, b"mine", CTX)).st_size == 4
    assert await errno_of(m.ops.lookup(ROOT_INODE, b"theirs", CTX)) == errno.EIO


async def test_keys_that_cannot_be_names_are_not_listed(m: Mounted, caplog) -> None:
    """Keys made outside whose last component cannot be a file name here are skipped with
    one quoted log line per listing: no phantom entry, no EIO for the directory."""
    for key in ("d/ok", "d/ctl\x01x", "d/nl\nx", "d/esc\x1b[31mx", "d/sub//x", "d/./y"):
        m.store.put(key, b"1")
    d = await m.ops.lookup(ROOT_INODE, b"d", CTX)
    with caplog.at_level("WARNING"):
        fh = await m.ops.opendir(d.st_ino, CTX)
    assert [n for n, _ in m.ops.handles.dir_entries(fh)] == ["ok", "sub"]
    lines = [r.getMessage() for r in caplog.records if "not shown" in r.getMessage()]
    assert len(lines) == 1 and "'d/ctl\\x01x'" in lines[0]
    assert all("\n" not in line and "\x1b" not in line for line in lines)
    for name in (b"ctl\x01x", b"nl\nx"):  # lookups agree with the listing: no such name
        assert await errno_of(m.ops.lookup(d.st_ino, name, CTX)) == errno.ENOENT


async def test_control_characters_are_refused_at_create(m: Mounted, caplog) -> None:
    """create, mkdir and a rename target with a control character: EINVAL, one quoted log
    line, no request. The log line cannot be forged by a newline or ANSI escape."""
    await write_file(m.ops, ROOT_INODE, "f", b"x")
    start = len(m.store.requests)
    evil = b"evil\n2026-01-01 ERROR forged\x1b[31mred\x7f"
    with caplog.at_level("WARNING"):
        assert await errno_of(m.ops.create(ROOT_INODE, evil, 0o644, WRITE | os.O_CREAT,
                                           CTX)) == errno.EINVAL
        assert await errno_of(m.ops.mkdir(ROOT_INODE, b"d\x01", 0o755, CTX)) == errno.EINVAL
        assert await errno_of(m.ops.rename(ROOT_INODE, b"f", ROOT_INODE, b"g\x1f", 0,
                                           CTX)) == errno.EINVAL
    assert m.ops_since(start) == [] and m.store.keys() == ["f"]
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(messages) == 3 and all("control character" in line for line in messages)
    assert all("\n" not in line and "\x1b" not in line and "\x7f" not in line
               for line in messages)
    assert "'evil\\n2026-01-01 ERROR forged\\x1b[31mred\\x7f'" in messages[0]


async def test_backslashes_follow_what_the_store_keeps() -> None:
    """On a store that rewrites a backslash (SeaweedFS), the mount's probe says so and names
    with one are refused (EINVAL, nothing sent); on one that keeps it they are ordinary."""
    from chute.fs import store_probe

    rewriting = MemoryS3(rewrite_backslash=True)
    client = memory_client(rewriting)
    assert await store_probe.keeps_backslash(client) is False
    assert rewriting.keys() == []  # the probe left nothing behind
    await client.aclose()
    async for m in memory_mount(store=rewriting):
        m.ops.ns.keeps_backslash = False
        start = len(m.store.requests)
        assert await errno_of(m.ops.create(ROOT_INODE, b"trail\\", 0o644,
                                           WRITE | os.O_CREAT, CTX)) == errno.EINVAL
        assert await errno_of(m.ops.mkdir(ROOT_INODE, b"a\\b", 0o755, CTX)) == errno.EINVAL
        # A lookup of such a name is not asked either: the store would answer for a/b.
        m.store.put("a/b", b"root only")
        assert await errno_of(m.ops.lookup(ROOT_INODE, b"a\\b", CTX)) == errno.ENOENT
        assert m.ops_since(start) == [] and m.store.keys() == ["a/b"]
    keeping = MemoryS3()
    client = memory_client(keeping)
    assert await store_probe.keeps_backslash(client) is True
    assert keeping.keys() == []
    await client.aclose()
    async for m in memory_mount(store=keeping):
        m.ops.ns.keeps_backslash = True
        await write_file(m.ops, ROOT_INODE, "a\\b", b"kept")
        assert m.store.keys() == ["a\\b"]


async def test_a_probe_that_cannot_run_refuses_backslashes(autojump_clock) -> None:
    from chute.fs import store_probe
    from chute.uploader.retry import RetryPolicy

    store = MemoryS3()
    store.fail_next("PutObject", code="AccessDenied")
    client = memory_client(store, policy=RetryPolicy(max_attempts=1, budget=1))
    assert await store_probe.keeps_backslash(client) is False
    await client.aclose()


async def test_a_commit_under_another_key_is_a_failure(caplog) -> None:
    """Should a name the store rewrites get through anyway, the key
    CompleteMultipartUpload reports is checked: not the key sent, EIO."""
    async for m in memory_mount(store=MemoryS3(rewrite_backslash=True)):
        m.ops.ns.keeps_backslash = True  # as if the probe had been wrong
        info, _ = await m.ops.create(ROOT_INODE, b"x\\y", 0o644, WRITE | os.O_CREAT, CTX)
        await m.ops.write(info.fh, 0, b"z" * (6 * MiB))  # more than a slice: multipart
        assert await errno_of(m.ops.flush(info.fh)) == errno.EIO
        await m.ops.release(info.fh)
    assert any("KeyMismatch" in r.getMessage() for r in caplog.records)


async def test_a_name_both_file_and_directory_shows_the_directory(m: Mounted,
                                                                  mock_clock) -> None:
    """Keys coll and coll/inner made outside: the directory is shown (the file named in a
    log line); rm -rf coll removes coll/inner, then rmdir answers ENOTEMPTY (the file is
    still there, so rm exits non-zero) and the file shows; a second rm -rf removes it."""
    m.store.put("coll", b"file")
    m.store.put("coll/inner", b"inner")
    fh = await m.ops.opendir(ROOT_INODE, CTX)
    [(name, node)] = m.ops.handles.dir_entries(fh)
    assert name == "coll" and node.is_dir
    await m.ops.releasedir(fh)
    coll = await m.ops.lookup(ROOT_INODE, b"coll", CTX)
    assert m.ops.ns.node(coll.st_ino).is_dir
    mock_clock.jump(LOOKUP_TTL)  # asked again: still the directory
    coll = await m.ops.lookup(ROOT_INODE, b"coll", CTX)
    assert m.ops.ns.node(coll.st_ino).is_dir
    await m.ops.unlink(coll.st_ino, b"inner", CTX)
    assert await errno_of(m.ops.rmdir(ROOT_INODE, b"coll", CTX)) == errno.ENOTEMPTY
    again = await m.ops.lookup(ROOT_INODE, b"coll", CTX)
    assert not m.ops.ns.node(again.st_ino).is_dir and again.st_size == 4
    await m.ops.unlink(ROOT_INODE, b"coll", CTX)
    assert m.store.keys() == []


async def test_a_directory_rename_checks_the_marker_key_length() -> None:
    """The new marker key (with its slash) over 1024 bytes: ENAMETOOLONG before any
    request, by the same rule as mkdir."""
    async for m in memory_mount(prefix="p/"):
        parent = ROOT_INODE
        for level in "abc":
            parent = (await m.ops.mkdir(parent, level.encode() * 255, 0o755, CTX)).st_ino
        await m.ops.mkdir(ROOT_INODE, b"e", 0o755, CTX)
        name = b"n" * 254  # p/ + 3 x 256 + 254 = 1024 bytes: a file fits, a marker does not
        assert await errno_of(m.ops.mkdir(parent, name, 0o755, CTX)) == errno.ENAMETOOLONG
        start = len(m.store.requests)
        assert await errno_of(m.ops.rename(ROOT_INODE, b"e", parent, name, 0, CTX)) == \
            errno.ENAMETOOLONG
        assert m.ops_since(start) == []
        await write_file(m.ops, parent, name.decode(), b"fits")  # a file of that name fits
