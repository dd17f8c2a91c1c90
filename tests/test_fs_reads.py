"""Read handles (fs/reads.py) without FUSE: the FUSE handlers called directly over the
in-memory S3. Reads off and on, EBUSY for a file being written, O_RDWR (a write open),
ESTALE when the object is replaced, and when the kernel may keep its pages (keep_cache)."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pyfuse3
import pytest
import trio

from chute.fs.lookups import LOOKUP_TTL
from chute.fs.namespace import ROOT_INODE
from chute.fs.operations import ChuteOperations
from chute.fs.reads import READ_FH_BASE, ReadSetup, mount_tuning
from chute.uploader.config import UploaderConfig
from chute.uploader.read_budget import ReadBudget
from chute.uploader.uploader import Uploader
from tests.support.memory_mount import CTX
from tests.support.memory_s3 import MemoryS3, memory_client

MiB = 1 << 20


@dataclass
class Mounted:
    ops: ChuteOperations
    store: MemoryS3


async def _mounted(allow: bool) -> AsyncIterator[Mounted]:
    store = MemoryS3()
    client = memory_client(store)
    uploader = Uploader(UploaderConfig(slice_size=5 * MiB, ring_size=20 * MiB), client)
    reads = ReadSetup(allow=allow, source=client, budget=ReadBudget(8 * MiB)) if allow \
        else ReadSetup()
    ops = ChuteOperations(uploader, client, "/nonexistent-mnt", reads=reads)
    async with trio.open_nursery() as nursery:
        await nursery.start(uploader.run)
        await nursery.start(ops.reads.run)
        yield Mounted(ops, store)
        nursery.cancel_scope.cancel()
    await client.aclose()


@pytest.fixture
async def on() -> AsyncIterator[Mounted]:
    async for mounted in _mounted(True):
        yield mounted


@pytest.fixture
async def off() -> AsyncIterator[Mounted]:
    async for mounted in _mounted(False):
        yield mounted


async def errno_of(awaitable) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await awaitable
    return caught.value.errno


async def inode_of(m: Mounted, name: str) -> int:
    return (await m.ops.lookup(ROOT_INODE, name.encode(), CTX)).st_ino


async def read_all(m: Mounted, name: str, flags: int = os.O_RDONLY
                   ) -> tuple[bytes, pyfuse3.FileInfo]:
    info = await m.ops.open(await inode_of(m, name), flags, CTX)
    try:
        return bytes(await m.ops.read(info.fh, 0, 1 << 30)), info  # as pyfuse3 replies at once
    finally:
        await m.ops.flush(info.fh)
        await m.ops.release(info.fh)


async def test_reads_off_open_succeeds_reads_are_eacces_logged_once(off: Mounted, caplog
                                                                     ) -> None:
    off.store.put("a", b"abc")
    off.store.put("b", b"def")
    caplog.set_level(logging.WARNING)
    for name in ("a", "b"):
        info = await off.ops.open(await inode_of(off, name), os.O_RDONLY, CTX)
        assert info.fh >= READ_FH_BASE
        assert await errno_of(off.ops.read(info.fh, 0, 10)) == errno.EACCES
        assert await errno_of(off.ops.read(info.fh, 0, 10)) == errno.EACCES
        await off.ops.release(info.fh)
    assert caplog.text.count("--allow-read") == 1
    # reads off, O_RDWR is a writer's open continuing the object (issue 16); unwritten, it
    # leaves the object as it was and fetches nothing
    info = await off.ops.open(await inode_of(off, "a"), os.O_RDWR, CTX)
    await off.ops.flush(info.fh)
    await off.ops.release(info.fh)
    assert off.store.body("a") == b"abc"
    assert off.store.operations().count("GetObject") == 0


async def test_reads_on_stream_the_object(on: Mounted) -> None:
    data = os.urandom(3 * MiB + 5)
    on.store.put("big", data)
    got, info = await read_all(on, "big")
    assert got == data
    assert not info.keep_cache and not info.direct_io
    assert len(on.ops.reads) == 0
    assert on.ops.reads.statistics().in_use == 0


async def test_keep_cache_only_while_the_etag_is_unchanged(on: Mounted, mock_clock) -> None:
    on.store.put("f", b"one")
    assert (await read_all(on, "f"))[1].keep_cache is False
    assert (await read_all(on, "f"))[1].keep_cache is True
    on.store.put("f", b"two")
    mock_clock.jump(LOOKUP_TTL)
    got, info = await read_all(on, "f")
    assert (got, info.keep_cache) == (b"two", False)
    assert (await read_all(on, "f"))[1].keep_cache is True
    # an open for writing makes the next open for reading drop the pages
    inode = await inode_of(on, "f")
    info = await on.ops.open(inode, os.O_WRONLY | os.O_TRUNC, CTX)
    await on.ops.write(info.fh, 0, b"three")
    await on.ops.flush(info.fh)
    await on.ops.release(info.fh)
    got, info = await read_all(on, "f")
    assert (got, info.keep_cache) == (b"three", False)


async def test_a_file_being_written_is_ebusy(on: Mounted) -> None:
    info, attrs = await on.ops.create(ROOT_INODE, b"w", 0o600,
                                      os.O_WRONLY | os.O_CREAT | os.O_TRUNC, CTX)
    await on.ops.write(info.fh, 0, b"partial")
    assert await errno_of(on.ops.open(attrs.st_ino, os.O_RDONLY, CTX)) == errno.EBUSY
    assert await errno_of(on.ops.read(info.fh, 0, 7)) == errno.EACCES
    await on.ops.flush(info.fh)
    await on.ops.release(info.fh)
    assert (await read_all(on, "w"))[0] == b"partial"


async def test_replaced_while_open_is_estale(on: Mounted) -> None:
    on.store.put("r", b"x" * (2 * MiB))
    info = await on.ops.open(await inode_of(on, "r"), os.O_RDONLY, CTX)
    assert await on.ops.read(info.fh, 0, 4096) == b"x" * 4096
    on.store.put("r", b"y" * (2 * MiB))
    assert await errno_of(on.ops.read(info.fh, MiB + 512 * 1024, 4096)) == errno.ESTALE
    assert await errno_of(on.ops.read(info.fh, 0, 4096)) == errno.ESTALE  # sticky
    await on.ops.release(info.fh)


async def test_o_rdwr_is_a_write_open_never_readable(on: Mounted) -> None:
    """Reads on too, O_RDWR without O_TRUNC continues the object (handles.py): a read
    through it is EACCES; closed unwritten it leaves the object as it was."""
    on.store.put("rw", b"0123456789")
    inode = await inode_of(on, "rw")
    info = await on.ops.open(inode, os.O_RDWR, CTX)
    assert info.fh < READ_FH_BASE
    assert await errno_of(on.ops.read(info.fh, 2, 3)) == errno.EACCES
    await on.ops.flush(info.fh)
    await on.ops.release(info.fh)
    assert on.store.body("rw") == b"0123456789"
    assert (await read_all(on, "rw"))[0] == b"0123456789"


def test_a_lone_reader_may_use_the_prefetch_part_of_the_budget() -> None:
    assert mount_tuning(ReadBudget(64 * MiB)).max_window == 40 * MiB  # 64 - 8 reserve - 16
    assert mount_tuning(ReadBudget(64 * MiB)).max_request == 8 * MiB
    assert mount_tuning(ReadBudget(64 * MiB)).align == 8 * MiB  # GETs on 8 MiB boundaries
    assert mount_tuning(ReadBudget(8 * MiB)).max_window == 16 * MiB  # the budget caps it
    assert mount_tuning(ReadBudget(1024 * MiB)).max_window == 128 * MiB
    assert mount_tuning(ReadBudget(128 * MiB)).max_window == 104 * MiB  # 128 - 8 reserve - 16


def test_at_most_five_eighths_of_a_mounts_window_is_in_flight() -> None:
    """The rest is room for GETs answered ahead of the reader (mount_tuning)."""
    assert mount_tuning(ReadBudget(128 * MiB)).max_in_flight == 8  # of 13 requests
    assert mount_tuning(ReadBudget(64 * MiB)).max_in_flight == 4  # at least 4 (loopback)
    assert mount_tuning(ReadBudget(1024 * MiB)).max_in_flight == 8  # the direct download's
    assert mount_tuning(ReadBudget(112 * MiB)).max_in_flight == 6  # of 11
    assert mount_tuning(ReadBudget(128 * MiB)).stream_from_start == 1 * MiB


def test_the_options_reach_the_policy_from_flags_config_and_fstab(tmp_path) -> None:
    from chute.fs import cli, mount_helper

    args = cli.parse_args(["mount", "/mnt/x", "s3://b/p", "--allow-read",
                           "--read-budget", "32MiB"])
    policy = cli.mount_policy(args)
    assert (policy.allow_read, policy.read_budget) == (True, 32 * MiB)
    defaults = cli.mount_policy(cli.parse_args(["mount", "/mnt/x", "s3://b/p"]))
    assert (defaults.allow_read, defaults.read_budget) == (False, 128 * MiB)
    config = tmp_path / "chute.toml"
    config.write_text('allow_read = true\nread_budget = "16MiB"\n')
    policy = cli.mount_policy(cli.parse_args(["mount", "/mnt/x", "s3://b/p", "--config",
                                              str(config)]))
    assert (policy.allow_read, policy.read_budget) == (True, 16 * MiB)
    argv = mount_helper.chute_arguments("s3://b/p", "/mnt/x", ["allow_read,read_budget=8MiB"])
    assert argv[-3:] == ["--allow-read", "--read-budget", "8MiB"]
