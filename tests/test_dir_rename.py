"""rename(2) of a non-empty directory (fs/dir_moves.py, uploader/moves.py) on the in-memory S3:
the move itself (keys, metadata and tags kept, sources gone, the namespace moved at once),
rename(2)'s rules, the limits, a failure mid-copy rolled back, and the next mount finishing
or rolling back a move its mount did not live to finish."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator

import pyfuse3
import pytest

from chute.fs.namespace import ROOT_INODE
from chute.fs.policy import MountPolicy
from chute.uploader import leftovers, moves
from chute.uploader.retry import RetryPolicy
from tests.support.memory_mount import CTX, Mounted, errno_of, memory_mount
from tests.support.memory_s3 import MemoryS3, memory_client

MiB = 1 << 20
WRITE = os.O_WRONLY | os.O_TRUNC | os.O_CREAT


@pytest.fixture
async def m() -> AsyncIterator[Mounted]:
    async for mounted in memory_mount(retry_policy=RetryPolicy(budget=5)):
        yield mounted


async def rename(m: Mounted, old: bytes, new: bytes, flags: int = 0) -> None:
    await m.ops.rename(ROOT_INODE, old, ROOT_INODE, new, flags, CTX)


def plant_tree(store: MemoryS3, top: str) -> dict[str, bytes]:
    """A small tree as another client (or an earlier mount) left it: a marker, files with
    metadata and tags, a subdirectory."""
    tree = {f"{top}/": b"", f"{top}/a": b"alpha", f"{top}/sub/": b"", f"{top}/sub/b": b"b" * 3000,
            f"{top}/sub/c": b""}
    for key, body in tree.items():
        store.put(key, body, {"chute-mode": "0640"} if body else {}, {"t": key[-1]})
    return tree


def moves_markers(store: MemoryS3, prefix: str = "") -> list[str]:
    return store.keys(f"{prefix}{moves.MARKER_DIR}/")


# -- the move -----------------------------------------------------------------------------


async def test_a_small_tree_moves_with_metadata_and_tags(m: Mounted) -> None:
    tree = plant_tree(m.store, "d")
    d = await m.ops.lookup(ROOT_INODE, b"d", CTX)
    sub = await m.ops.lookup(d.st_ino, b"sub", CTX)
    b = await m.ops.lookup(sub.st_ino, b"b", CTX)
    await rename(m, b"d", b"e")
    assert m.store.keys() == sorted("e" + k[1:] for k in tree)
    for key, body in tree.items():
        moved = m.store.objects["e" + key[1:]]
        assert moved.body == body and moved.tags == {"t": key[-1]}
        assert moved.metadata == ({"chute-mode": "0640"} if body else {})
    assert moves_markers(m.store) == []
    copies = [r.key for r in m.store.requests if r.operation == "CopyObject"]
    assert sorted(copies) == ["e/a", "e/sub/b", "e/sub/c"]  # markers are written anew
    # the namespace shows it at once: the attached nodes moved, the old name is gone
    assert m.ops.ns.path(m.ops.ns.node(b.st_ino)) == "e/sub/b"
    assert (await m.ops.lookup(ROOT_INODE, b"e", CTX)).st_ino == d.st_ino
    assert await errno_of(m.ops.lookup(ROOT_INODE, b"d", CTX)) == errno.ENOENT
    assert (await m.ops.getattr(b.st_ino, CTX)).st_size == 3000


async def test_a_directory_made_through_the_mount_moves(m: Mounted) -> None:
    """borg's lock: mkdir, one empty file in it, rename the directory onto a free name."""
    tmp = await m.ops.mkdir(ROOT_INODE, b"lock.tmp", 0o700, CTX)
    info, _ = await m.ops.create(tmp.st_ino, b"host.1-2", 0o600, WRITE, CTX)
    await m.ops.flush(info.fh)
    await m.ops.release(info.fh)
    await rename(m, b"lock.tmp", b"lock.exclusive")
    assert m.store.keys() == ["lock.exclusive/", "lock.exclusive/host.1-2"]
    lock = await m.ops.lookup(ROOT_INODE, b"lock.exclusive", CTX)
    assert (await m.ops.lookup(lock.st_ino, b"host.1-2", CTX)).st_size == 0


async def test_directories_without_markers_are_deleted_deepest_last(m: Mounted) -> None:
    """Keys another client wrote with no directory markers: SeaweedFS keeps (and lists) a
    directory it made for them until its ``dir/`` key is deleted, after its contents."""
    m.store.put("x/a", b"1")
    m.store.put("x/sub/deep/b", b"2")
    await rename(m, b"x", b"y")
    assert m.store.keys() == ["y/a", "y/sub/deep/b"]
    deletes = [r.key for r in m.store.requests if r.operation == "DeleteObject"
               and not r.key.startswith(moves.MARKER_DIR)]
    assert sorted(deletes[:2]) == ["x/a", "x/sub/deep/b"]
    assert deletes[2:] == ["x/sub/deep/", "x/sub/", "x/"]


# -- rename(2)'s rules ----------------------------------------------------------------------


async def test_rename2_rules(m: Mounted) -> None:
    plant_tree(m.store, "d")
    plant_tree(m.store, "full")
    m.store.put("file", b"x")
    m.store.put("empty/")
    before = m.store.keys()
    assert await errno_of(rename(m, b"d", b"full")) == errno.ENOTEMPTY  # borg's "locked"
    assert await errno_of(rename(m, b"d", b"file")) == errno.ENOTDIR
    await m.ops.lookup(ROOT_INODE, b"empty", CTX)  # as the kernel does before a rename
    assert await errno_of(rename(m, b"d", b"empty", pyfuse3.RENAME_NOREPLACE)) == errno.EEXIST
    d = await m.ops.lookup(ROOT_INODE, b"d", CTX)
    sub = await m.ops.lookup(d.st_ino, b"sub", CTX)
    assert await errno_of(m.ops.rename(ROOT_INODE, b"d", sub.st_ino, b"x", 0, CTX)) == \
        errno.EINVAL
    assert await errno_of(m.ops.rename(ROOT_INODE, b"d", d.st_ino, b"x", 0, CTX)) == \
        errno.EINVAL
    assert m.store.keys() == before
    await rename(m, b"d", b"empty")  # an existing empty directory is replaced
    assert m.store.keys("d") == [] and "empty/sub/b" in m.store.objects
    assert m.store.objects["empty/a"].body == b"alpha"


async def test_policies_hold_for_directories() -> None:
    async for m in memory_mount(MountPolicy(no_delete=True), retry_policy=RetryPolicy(budget=5)):
        plant_tree(m.store, "d")
        assert await errno_of(rename(m, b"d", b"e")) == errno.EPERM
    async for m in memory_mount(MountPolicy(no_overwrite=True),
                                retry_policy=RetryPolicy(budget=5)):
        plant_tree(m.store, "d")
        m.store.put("empty/")
        assert await errno_of(rename(m, b"d", b"empty")) == errno.EEXIST
        await rename(m, b"d", b"free")
        assert m.store.keys("d") == [] and "free/a" in m.store.objects


async def test_beyond_the_limits_is_eopnotsupp_naming_the_option(caplog) -> None:
    for policy, option in ((MountPolicy(rename_dir_max_objects=4), "--rename-dir-max-objects"),
                           (MountPolicy(rename_dir_max_bytes=3000), "--rename-dir-max-bytes")):
        async for m in memory_mount(policy, retry_policy=RetryPolicy(budget=5)):
            tree = plant_tree(m.store, "d")  # 5 objects, 3005 bytes
            caplog.clear()
            assert await errno_of(rename(m, b"d", b"e")) == errno.EOPNOTSUPP
            assert option in caplog.text
            assert m.store.keys() == sorted(tree)
            assert "CopyObject" not in m.store.operations()


async def test_a_file_being_written_below_is_ebusy(m: Mounted) -> None:
    plant_tree(m.store, "d")
    d = await m.ops.lookup(ROOT_INODE, b"d", CTX)
    sub = await m.ops.lookup(d.st_ino, b"sub", CTX)
    info, _ = await m.ops.create(sub.st_ino, b"new", 0o600, WRITE, CTX)
    await m.ops.write(info.fh, 0, b"being written")
    assert await errno_of(rename(m, b"d", b"e")) == errno.EBUSY
    assert m.store.keys("e") == []
    await m.ops.flush(info.fh)
    await m.ops.release(info.fh)
    await rename(m, b"d", b"e")
    assert m.store.objects["e/sub/new"].body == b"being written"


async def test_a_failure_mid_copy_rolls_back(m: Mounted) -> None:
    tree = plant_tree(m.store, "d")
    copies = 0

    def third_copy(request) -> bool:  # type: ignore[no-untyped-def]
        nonlocal copies
        if request.operation != "CopyObject":
            return False
        copies += 1
        return copies == 3

    m.store.fail_next(third_copy, code="AccessDenied")
    assert await errno_of(rename(m, b"d", b"e")) == errno.EIO
    assert m.store.keys() == sorted(tree)  # sources untouched, copies and marker gone
    assert m.store.objects["d/sub/b"].tags == {"t": "b"}
    assert (await m.ops.lookup(ROOT_INODE, b"d", CTX)).st_ino
    assert await errno_of(m.ops.lookup(ROOT_INODE, b"e", CTX)) == errno.ENOENT


# -- recovery at the next mount -------------------------------------------------------------


def dead_owner() -> str:
    me = leftovers.this_process()
    return dataclasses.replace(me, start=me.start + 1).encode()  # pid reused: dead


def plant_marker(store: MemoryS3, prefix: str, source: str, dest: str, keys: list[str],
                 phase: str, owner: str | None = None, dest_existed: bool = False) -> str:
    key = f"{prefix}{moves.MARKER_DIR}/{uuid.uuid4().hex}"
    store.put(key, json.dumps({
        "version": 1, "owner": owner or dead_owner(), "source": source, "dest": dest,
        "keys": keys, "dest_existed": dest_existed, "phase": phase}).encode())
    return key


REL = ["", "a", "sub/", "sub/b", "sub/c"]


async def test_recovery_finishes_a_move_whose_copies_landed() -> None:
    store = MemoryS3()
    tree = plant_tree(store, "p/d")
    for key, body in tree.items():  # every copy landed, then the mount died
        store.put("p/e" + key[3:], body)
    del store.objects["p/d/a"]  # some sources were deleted already
    marker = plant_marker(store, "p/", "p/d/", "p/e/", REL, "copied")
    client = memory_client(store, prefix="p/")
    assert await moves.recover(client) == 1
    await client.aclose()
    assert store.keys() == sorted("p/e" + k[3:] for k in tree)
    assert marker not in store.objects


async def test_recovery_rolls_back_a_move_cut_while_copying() -> None:
    store = MemoryS3()
    tree = plant_tree(store, "p/d")
    store.put("p/e/")  # the empty directory it was to replace
    store.put("p/e/a", b"alpha")  # two copies had landed
    store.put("p/e/sub/b", b"b" * 3000)
    marker = plant_marker(store, "p/", "p/d/", "p/e/", REL, "copying", dest_existed=True)
    client = memory_client(store, prefix="p/")
    assert await moves.recover(client) == 1
    await client.aclose()
    assert store.keys() == sorted([*tree, "p/e/"])
    assert marker not in store.objects


async def test_recovery_leaves_live_foreign_and_malformed_markers(caplog) -> None:
    store = MemoryS3()
    plant_tree(store, "p/d")
    plant_tree(store, "q/d")
    store.put("q/e/a", b"alpha")
    live = plant_marker(store, "p/", "p/d/", "p/e/", REL, "copied",
                        owner=leftovers.this_process().encode())
    foreign = plant_marker(store, "p/", "q/d/", "q/e/", REL, "copied")
    escaping = plant_marker(store, "p/", "p/d/", "p/../q/d/", REL, "copying")
    garbage = f"p/{moves.MARKER_DIR}/{uuid.uuid4().hex}"
    store.put(garbage, b"\xff not json")
    before = {k: v.body for k, v in store.objects.items()}
    client = memory_client(store, prefix="p/")
    with caplog.at_level(logging.WARNING):
        assert await moves.recover(client) == 0
    await client.aclose()
    assert {k: v.body for k, v in store.objects.items()} == before
    for marker in (foreign, escaping, garbage):
        assert marker in caplog.text
    assert live not in caplog.text  # alive: info, not a warning


async def test_the_marker_directory_is_reserved_and_hidden(m: Mounted) -> None:
    m.store.put(f"{moves.MARKER_DIR}/{uuid.uuid4().hex}", b"{}")
    assert await errno_of(m.ops.mkdir(ROOT_INODE, moves.MARKER_DIR.encode(), 0o755, CTX)) \
        == errno.EPERM
    listing = await m.ops.lookups.list_dir(m.ops.ns.root)
    assert moves.MARKER_DIR not in listing


async def test_an_object_changed_during_the_move_is_estale_and_rolled_back(m: Mounted) -> None:
    plant_tree(m.store, "d")
    await m.ops.lookup(ROOT_INODE, b"d", CTX)

    def change_after_listing(request) -> bool:  # type: ignore[no-untyped-def]
        if request.operation == "PutObject" and request.key.startswith(moves.MARKER_DIR):
            m.store.put("d/sub/b", b"changed by another client")
        return False

    m.store.fail_next(change_after_listing)
    assert await errno_of(rename(m, b"d", b"e")) == errno.ESTALE
    assert m.store.keys("e") == [] and moves_markers(m.store) == []
    assert m.store.body("d/sub/b") == b"changed by another client"


async def test_a_failed_delete_of_a_source_leaves_the_marker_for_the_next_mount(
        m: Mounted) -> None:
    tree = plant_tree(m.store, "d")
    m.store.fail_next(lambda r: r.operation == "DeleteObject" and r.key == "d/a",
                      code="AccessDenied")
    assert await errno_of(rename(m, b"d", b"e")) == errno.EIO
    assert m.store.objects["e/sub/b"].body == tree["d/sub/b"]  # every copy landed
    assert "d/a" in m.store.objects
    [marker] = moves_markers(m.store)
    assert json.loads(m.store.body(marker))["phase"] == "copied"
    assert (await m.ops.lookup(ROOT_INODE, b"e", CTX)).st_ino  # shown under the new name


def test_the_limits_reach_the_policy_from_flags_and_the_toml_file(tmp_path) -> None:
    from chute.fs import cli

    config = tmp_path / "chute.toml"
    config.write_text('rename_dir_max_objects = 7\nrename_dir_max_bytes = "2MiB"\n')
    policy = cli.mount_policy(cli.parse_args(["mount", "/mnt", "--config", str(config)]))
    assert (policy.rename_dir_max_objects, policy.rename_dir_max_bytes) == (7, 2 * MiB)
    policy = cli.mount_policy(cli.parse_args(["mount", "/mnt", "--rename-dir-max-objects",
                                              "0"]))
    assert (policy.rename_dir_max_objects, policy.rename_dir_max_bytes) == (0, 1 << 30)
    with pytest.raises(SystemExit):
        cli.parse_args(["mount", "/mnt", "--rename-dir-max-objects", "10001"])


async def test_a_file_opened_for_writing_below_while_copying_rolls_back(m: Mounted) -> None:
    tree = plant_tree(m.store, "d")
    d = await m.ops.lookup(ROOT_INODE, b"d", CTX)
    a = m.ops.ns.node((await m.ops.lookup(d.st_ino, b"a", CTX)).st_ino)

    def writer_starts(request) -> bool:  # type: ignore[no-untyped-def]
        if request.operation == "CopyObject":
            a.upload = object()  # as an open for writing would, while the copies run
        return False

    m.store.fail_next(writer_starts)
    assert await errno_of(rename(m, b"d", b"e")) == errno.EBUSY
    a.upload = None
    assert m.store.keys() == sorted(tree)
    assert m.ops.ns.path(a) == "d/a"
