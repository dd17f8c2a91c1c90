"""Appends, reopens without O_TRUNC, and unlink of a file being written (issue 16), through
the FUSE handlers over the in-memory S3 (tests/support/memory_s3.py); slices of 5 MiB.

- An append to an existing object is a new upload whose first parts are the old object's:
  whole slices copied server-side (UploadPartCopy pinned by x-amz-copy-source-if-match), the
  rest fetched (a ranged GET pinned by If-Match) into the first ring slice. The old object is
  untouched until Complete, and after any failure.
- unlink of a file being written: the name goes at once, the upload is dropped, the last close
  makes nothing; a new file of the same name is independent.
"""

from __future__ import annotations

import errno
import os

import xxhash

from chute.fs.namespace import ROOT_INODE
from chute.fs.policy import MountPolicy
from chute.uploader.checksums import HASH_TAG
from tests.support.memory_mount import CTX, WRITE, Mounted, errno_of, memory_mount

MiB = 1 << 20
APPEND = os.O_WRONLY | os.O_APPEND



def pattern(size: int, seed: int = 0) -> bytes:
    block = bytes((i * 7 + seed) % 251 for i in range(64 * 1024))
    return (block * (size // len(block) + 1))[:size]


async def inode_of(m: Mounted, name: str) -> int:
    return (await m.ops.lookup(ROOT_INODE, name.encode(), CTX)).st_ino


async def append(m: Mounted, name: str, data: bytes, flags: int = APPEND) -> None:
    """open, write at the end, close (the kernel gives O_APPEND writes the file's size)."""
    inode = await inode_of(m, name)
    size = (await m.ops.getattr(inode, CTX)).st_size
    fh = (await m.ops.open(inode, flags, CTX)).fh
    await m.ops.write(fh, size, data)
    await m.ops.flush(fh)
    await m.ops.release(fh)


def no_upload_left(m: Mounted) -> bool:
    return not m.store.uploads and not m.store.keys(".chute-uploads")


# -- appends ------------------------------------------------------------------------------


async def test_append_to_a_small_object_fetches_it_into_the_first_slice(m: Mounted) -> None:
    m.store.put("f", b"hello", {"chute-mode": "0640"})
    etag = m.store.objects["f"].etag
    await append(m, "f", b" world")
    assert m.store.body("f") == b"hello world"
    get = m.requests("GetObject")
    assert len(get) == 1 and get[0].headers["range"] == "bytes=0-4"
    assert get[0].headers["if-match"] == f'"{etag}"'
    assert m.requests("UploadPartCopy") == [] and len(m.requests("PutObject")) == 1
    assert m.store.objects["f"].metadata["chute-mode"] == "0640"  # carried over
    tags = m.store.objects["f"].tags
    assert tags[HASH_TAG] == xxhash.xxh3_128(b"hello world").hexdigest()
    await append(m, "f", b"!", os.O_WRONLY)  # a reopen without O_TRUNC, writing at the end
    assert m.store.body("f") == b"hello world!"


async def test_append_to_12_mib_copies_the_whole_slices_and_fetches_the_tail(m: Mounted
                                                                            ) -> None:
    old, new = pattern(12 * MiB), pattern(6 * MiB, seed=3)
    m.store.put("big", old)
    etag = m.store.objects["big"].etag
    inode = await inode_of(m, "big")
    fh = (await m.ops.open(inode, APPEND, CTX)).fh
    await m.ops.write(fh, len(old), new)
    assert m.store.body("big") == old  # untouched until Complete
    assert (await m.ops.getattr(inode, CTX)).st_size == len(old) + len(new)
    await m.ops.flush(fh)
    await m.ops.release(fh)
    assert m.store.body("big") == old + new
    copies = m.requests("UploadPartCopy")
    assert [(c.query["partNumber"], c.headers["x-amz-copy-source-range"]) for c in copies] \
        == [("1", f"bytes=0-{10 * MiB - 1}")]
    assert copies[0].headers["x-amz-copy-source-if-match"] == f'"{etag}"'
    get = m.requests("GetObject")
    assert get[0].headers["range"] == f"bytes={10 * MiB}-{12 * MiB - 1}"
    assert get[0].headers["if-match"] == f'"{etag}"'
    assert m.store.objects["big"].tags[HASH_TAG] == xxhash.xxh3_128(old + new).hexdigest()
    assert no_upload_left(m)


async def test_a_failed_append_leaves_the_old_object(m: Mounted) -> None:
    old = pattern(12 * MiB)
    m.store.put("big", old)
    m.store.fail_next("CompleteMultipartUpload", code="AccessDenied")
    inode = await inode_of(m, "big")
    fh = (await m.ops.open(inode, APPEND, CTX)).fh
    await m.ops.write(fh, len(old), b"more")
    assert await errno_of(m.ops.flush(fh)) == errno.EIO
    await m.ops.release(fh)
    assert m.store.body("big") == old and no_upload_left(m)


async def test_the_copy_is_pinned_to_the_etag_seen_at_open(m: Mounted) -> None:
    m.store.put("big", pattern(10 * MiB))  # two whole slices: all copied, nothing fetched
    m.store.put("tail", pattern(12 * MiB))
    big = (await m.ops.open(await inode_of(m, "big"), APPEND, CTX)).fh
    tail = (await m.ops.open(await inode_of(m, "tail"), APPEND, CTX)).fh
    m.store.put("big", b"replaced meanwhile")
    m.store.put("tail", b"replaced too")
    await m.ops.write(big, 10 * MiB, b"x")
    assert await errno_of(m.ops.flush(big)) == errno.EIO  # the copy met 412
    assert m.requests("UploadPartCopy")[-1].headers["x-amz-copy-source-if-match"]
    await m.ops.write(tail, 12 * MiB, b"x")  # the tail's GET is made when it is sealed
    assert await errno_of(m.ops.flush(tail)) == errno.EIO  # the GET: 412
    assert m.requests("GetObject")[-1].headers["if-match"]
    for fh in (big, tail):
        await m.ops.release(fh)
    assert m.store.body("big") == b"replaced meanwhile"
    assert m.store.body("tail") == b"replaced too"
    assert no_upload_left(m)


async def test_a_write_into_the_middle_rewrites_only_its_slice(m: Mounted) -> None:
    """Issue 17: the slice written is fetched and sent, the others are copied."""
    old = pattern(12 * MiB)
    m.store.put("big", old)
    fh = (await m.ops.open(await inode_of(m, "big"), os.O_WRONLY, CTX)).fh
    await m.ops.write(fh, 6 * MiB, b"x")
    await m.ops.flush(fh)
    await m.ops.release(fh)
    assert m.store.body("big") == old[: 6 * MiB] + b"x" + old[6 * MiB + 1 :]
    assert [c.query["partNumber"] for c in m.requests("UploadPartCopy")] == ["1", "3"]
    assert [p.query["partNumber"] for p in m.requests("UploadPart")] == ["2"]
    assert no_upload_left(m)


async def test_a_write_into_the_fetched_tail_rewrites_it(m: Mounted) -> None:
    m.store.put("f", b"0123456789")
    fh = (await m.ops.open(await inode_of(m, "f"), os.O_RDWR, CTX)).fh
    await m.ops.write(fh, 2, b"ab")  # the whole small object is in the ring
    await m.ops.flush(fh)
    await m.ops.release(fh)
    assert m.store.body("f") == b"01ab456789"


async def test_an_unwritten_reopen_leaves_the_object_as_it_was(m: Mounted) -> None:
    m.store.put("big", pattern(12 * MiB))
    etag = m.store.objects["big"].etag
    start = len(m.store.requests)
    fh = (await m.ops.open(await inode_of(m, "big"), os.O_RDWR, CTX)).fh
    await m.ops.flush(fh)
    await m.ops.release(fh)
    assert m.store.objects["big"].etag == etag
    assert {r.operation for r in m.store.requests[start:]} <= {"HeadObject",
                                                               "ListObjectsV2"}


# -- unlink of a file being written --------------------------------------------------------


async def test_unlink_while_writing_leaves_nothing(m: Mounted) -> None:
    info, attrs = await m.ops.create(ROOT_INODE, b"f", 0o644, WRITE | os.O_CREAT, CTX)
    await m.ops.write(info.fh, 0, pattern(12 * MiB))  # a multipart upload under way
    await m.ops.unlink(ROOT_INODE, b"f", CTX)
    assert await errno_of(m.ops.lookup(ROOT_INODE, b"f", CTX)) == errno.ENOENT
    assert await m.ops.write(info.fh, 12 * MiB, b"more") == 4  # goes nowhere
    assert (await m.ops.getattr(attrs.st_ino, CTX)).st_size == 12 * MiB + 4
    new, _ = await m.ops.create(ROOT_INODE, b"f", 0o644, WRITE | os.O_CREAT, CTX)
    await m.ops.write(new.fh, 0, b"new file")
    await m.ops.flush(new.fh)
    await m.ops.release(new.fh)
    await m.ops.flush(info.fh)  # the unlinked file's last close
    await m.ops.release(info.fh)
    assert m.store.body("f") == b"new file"
    assert m.store.keys() == ["f"] and no_upload_left(m)
    assert (await m.ops.lookup(ROOT_INODE, b"f", CTX)).st_size == 8


async def test_unlink_while_replacing_deletes_the_old_object_now(m: Mounted) -> None:
    m.store.put("f", b"old")
    fh = (await m.ops.open(await inode_of(m, "f"), WRITE, CTX)).fh
    await m.ops.write(fh, 0, b"half-written")
    await m.ops.unlink(ROOT_INODE, b"f", CTX)
    assert m.store.keys() == []  # the name's object went with the name
    await m.ops.flush(fh)
    await m.ops.release(fh)
    assert m.store.keys() == [] and no_upload_left(m)


async def test_unlink_while_appending_deletes_the_old_object(m: Mounted) -> None:
    m.store.put("big", pattern(12 * MiB))
    fh = (await m.ops.open(await inode_of(m, "big"), APPEND, CTX)).fh
    await m.ops.write(fh, 12 * MiB, b"x")
    await m.ops.unlink(ROOT_INODE, b"big", CTX)
    await m.ops.flush(fh)
    await m.ops.release(fh)
    assert m.store.keys() == [] and no_upload_left(m)


async def test_no_delete_refuses_unlink_while_writing() -> None:
    async for m in memory_mount(MountPolicy(no_delete=True)):
        info, _ = await m.ops.create(ROOT_INODE, b"f", 0o644, WRITE | os.O_CREAT, CTX)
        await m.ops.write(info.fh, 0, b"data")
        assert await errno_of(m.ops.unlink(ROOT_INODE, b"f", CTX)) == errno.EPERM
        await m.ops.flush(info.fh)
        await m.ops.release(info.fh)
        assert m.store.body("f") == b"data"


async def test_o_append_writes_land_at_the_end_whatever_the_offset(m: Mounted) -> None:
    m.store.put("log", b"abc")
    fh = (await m.ops.open(await inode_of(m, "log"), APPEND, CTX)).fh
    await m.ops.write(fh, 0, b"d")  # a kernel whose size is stale: still the end
    await m.ops.write(fh, 1, b"e")
    await m.ops.flush(fh)
    await m.ops.release(fh)
    assert m.store.body("log") == b"abcde"
    info, _ = await m.ops.create(ROOT_INODE, b"new", 0o644, os.O_WRONLY | os.O_CREAT
                                 | os.O_APPEND, CTX)
    await m.ops.write(info.fh, 0, b"x")
    await m.ops.write(info.fh, 0, b"y")
    await m.ops.flush(info.fh)
    await m.ops.release(info.fh)
    assert m.store.body("new") == b"xy"


async def test_a_chmod_on_an_unwritten_reopen_reaches_the_object(m: Mounted) -> None:
    m.store.put("f", b"abc", {"chute-mode": "0644", "chute-mtime-ns": "1000"})
    inode = await inode_of(m, "f")
    fh = (await m.ops.open(inode, os.O_WRONLY, CTX)).fh
    await m.ops.objects.change_mode_mtime(m.ops.ns.node(inode), 0o600, None)
    await m.ops.flush(fh)
    await m.ops.release(fh)
    stored = m.store.objects["f"]
    assert stored.body == b"abc" and stored.metadata["chute-mode"] == "0600"
    assert stored.metadata["chute-mtime-ns"] == "1000"  # unwritten: its mtime stays
