"""Everything the store says is untrusted input (issue 13, items 1, 6, 8 and 11).

Over the in-memory S3 (tests/support/memory_s3.py), without FUSE, root or SeaweedFS:

- hostile metadata and dates (thirty 9s as mtime, negative sizes, dates past 2262) show as
  clamped or default attributes, each logged once per object, and never raise;
- no FUSE handler lets an unexpected exception out (pyfuse3 would end its request loop,
  and the mount with it): EIO, traceback logged once per kind;
- a commit whose answer is not S3's (200 + HTML, no ETag, a wrong checksum) is a failure;
- bodies read into memory are capped (listings, error documents, GET ranges);
- a listing with a key XML 1.0 cannot carry skips that key, not the directory.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pyfuse3
import pytest
import trio

from chute.fs import errnos
from chute.fs.operations import ChuteOperations
from chute.uploader.config import UploaderConfig
from chute.uploader.uploader import Uploader
from tests.support.memory_s3 import MemoryS3, memory_client

MiB = 1 << 20
CTX = pyfuse3.RequestContext()
WRITE = os.O_WRONLY | os.O_TRUNC


@dataclass
class Mounted:
    ops: ChuteOperations
    store: MemoryS3


@pytest.fixture
async def m() -> AsyncIterator[Mounted]:
    store = MemoryS3()
    client = memory_client(store)
    uploader = Uploader(UploaderConfig(slice_size=5 * MiB, ring_size=20 * MiB), client)
    async with trio.open_nursery() as nursery:
        await nursery.start(uploader.run)
        yield Mounted(ChuteOperations(uploader, client, "/nonexistent-mnt"), store)
        nursery.cancel_scope.cancel()
    await client.aclose()


async def errno_of(awaitable) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await awaitable
    return caught.value.errno


# -- no handler lets an exception end the request loop ------------------------------------------


async def test_an_unexpected_exception_is_eio_with_one_traceback(caplog) -> None:
    async def fail() -> None:
        async with errnos.errors_as_errno("getattr x"):
            raise OverflowError("boom")

    with caplog.at_level(logging.ERROR, "chute.fs.operations"):
        for _ in range(3):
            assert await errno_of(fail()) == errno.EIO
    records = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert len(records) == 3
    assert records[0].exc_info is not None
    assert [r.exc_info for r in records[1:]] == [None, None]
    assert "seen 3 times" in records[2].getMessage()


async def test_a_name_that_cannot_be_made_does_not_hide_the_error(caplog) -> None:
    def name() -> str:
        raise KeyError("inode gone")

    async def fail() -> None:
        async with errnos.errors_as_errno(name):
            raise ValueError("bad")

    assert await errno_of(fail()) == errno.EIO


@pytest.mark.parametrize("handler", ["forget", "statfs", "releasedir", "release"])
async def test_handlers_without_an_errno_path_are_wrapped(m: Mounted, monkeypatch,
                                                          handler: str) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(m.ops.ns, "forget", broken)
    monkeypatch.setattr(m.ops.handles, "release_dir", broken)
    monkeypatch.setattr(m.ops.handles, "release", broken)
    monkeypatch.setattr("chute.fs.attributes.statfs", broken)
    calls = {
        "forget": lambda: m.ops.forget([(5, 1)]),
        "statfs": lambda: m.ops.statfs(CTX),
        "releasedir": lambda: m.ops.releasedir(1),
        "release": lambda: m.ops.release(1),
    }
    if handler == "forget":
        await calls[handler]()  # no reply to carry an errno: logged and swallowed
    else:
        assert await errno_of(calls[handler]()) == errno.EIO
