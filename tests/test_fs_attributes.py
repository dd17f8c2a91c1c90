"""What the kernel may cache (fs/attributes.py) and the extended attributes it asks for
(fs/operations.py): the FUSE requests a small file costs. Handlers called directly over the
in-memory S3, no kernel."""

from __future__ import annotations

import errno
import os

from chute.fs import attributes
from chute.fs.lookups import LOOKUP_TTL
from chute.fs.namespace import ROOT_INODE
from tests.support.memory_mount import CTX, WRITE, Mounted, errno_of


async def test_a_file_being_written_caches_its_attributes_not_its_name(m: Mounted) -> None:
    info, attrs = await m.ops.create(ROOT_INODE, b"f", 0o644, WRITE | os.O_CREAT, CTX)
    assert (attrs.attr_timeout, attrs.entry_timeout) == (LOOKUP_TTL, 0)  # cp's fstat: no GETATTR
    await m.ops.write(info.fh, 0, b"abc")
    during = await m.ops.getattr(attrs.st_ino, CTX)  # the kernel asks again after a WRITE
    assert during.st_size == 3 and (during.attr_timeout, during.entry_timeout) == (LOOKUP_TTL, 0)
    await m.ops.flush(info.fh)
    await m.ops.release(info.fh)
    after = await m.ops.getattr(attrs.st_ino, CTX)
    assert after.st_size == 3 and (after.attr_timeout, after.entry_timeout) == (LOOKUP_TTL,
                                                                               LOOKUP_TTL)


async def test_a_file_known_only_from_a_listing_is_not_cached(m: Mounted) -> None:
    m.store.put("d/listed", b"12345")
    d = await m.ops.lookup(ROOT_INODE, b"d", CTX)
    listed = (await m.ops.lookups.list_dir(m.ops.ns.node(d.st_ino)))["listed"]
    assert listed.needs_head  # a listing carries no mode or mtime: readdir shows it so
    attrs = attributes.entry(listed, 0, 0)
    assert attrs.st_size == 5 and (attrs.attr_timeout, attrs.entry_timeout) == (0, 0)


async def test_xattrs_other_than_the_hash_are_enodata_without_a_request(m: Mounted) -> None:
    info, attrs = await m.ops.create(ROOT_INODE, b"f", 0o644, WRITE | os.O_CREAT, CTX)
    start = len(m.store.requests)
    for inode in (attrs.st_ino, ROOT_INODE, 987654):  # any inode, even one never given out
        assert await errno_of(m.ops.getxattr(inode, b"security.capability", CTX)) \
            == errno.ENODATA
    assert await errno_of(m.ops.getxattr(attrs.st_ino, b"user.chute.xxh3_128", CTX)) \
        == errno.ENODATA  # being written: no hash yet
    assert m.ops_since(start) == []
    await m.ops.write(info.fh, 0, b"abc")
    await m.ops.flush(info.fh)
    await m.ops.release(info.fh)
    assert len(await m.ops.getxattr(attrs.st_ino, b"user.chute.xxh3_128", CTX)) == 32
