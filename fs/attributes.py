"""What stat and statfs show: a node's attributes in pyfuse3's records.

A file being written shows its upload's current size. A file known only from a listing
(mode and mtime unknown until a HEAD) is not cached by the kernel (timeouts 0), so the next
stat comes back and sees the stored values; the name of a file being written is not cached
either (a failed upload's name goes at once), its attributes are. Everything else is cached
for LOOKUP_TTL. Owner is the mounting user (S3 has no owners).

pyfuse3's attributes are C integers: a Python int beyond 64 bits raises OverflowError. What
the store said is clamped where it is read (metadata.py, chute.uploader.untrusted); sizes and
times are clamped here once more, so no value can make building attributes fail.
"""

from __future__ import annotations

import stat

import pyfuse3

from chute.uploader.untrusted import clamp

from .lookups import LOOKUP_TTL
from .metadata import mode_of
from .namespace import NAME_MAX, Node

BLKSIZE = 1024 * 1024
"""st_blksize: makes cp issue 1 MiB writes (4x faster than its 128 KiB default)."""


def entry(node: Node, uid: int, gid: int) -> pyfuse3.EntryAttributes:
    """The attributes of an attached node."""
    attrs = pyfuse3.EntryAttributes()
    attrs.st_ino = node.inode
    attrs.generation = 0
    if node.is_dir:
        attrs.st_mode = stat.S_IFDIR | mode_of(node)
        attrs.st_nlink = 2
        attrs.st_size = 0
    elif node.is_link:  # its size is the target's length, as lstat shows it
        attrs.st_mode = stat.S_IFLNK | mode_of(node)
        attrs.st_nlink = 1
        attrs.st_size = clamp(node.size, 0)
    else:
        attrs.st_mode = stat.S_IFREG | mode_of(node)
        attrs.st_nlink = 1
        attrs.st_size = clamp(node.upload.size if node.upload is not None else node.size, 0)
    attrs.st_uid = uid
    attrs.st_gid = gid
    attrs.st_blksize = BLKSIZE
    attrs.st_blocks = (attrs.st_size + 511) // 512
    attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = clamp(node.mtime_ns)
    # A file being written: the kernel keeps its size and mtime itself (each WRITE makes it
    # ask again), so its attributes are cached like any other's: this spares `cp` two
    # GETATTRs per file. Its name is not: if the upload fails, the name must be gone at once.
    attrs.attr_timeout = 0 if node.needs_head and node.upload is None else LOOKUP_TTL
    attrs.entry_timeout = 0 if node.upload is not None or node.needs_head else LOOKUP_TTL
    return attrs


def statfs() -> pyfuse3.StatvfsData:
    """No limits worth showing: 1 PiB free, 2^32 inodes; names up to NAME_MAX."""
    data = pyfuse3.StatvfsData()
    data.f_bsize = BLKSIZE
    data.f_frsize = BLKSIZE
    data.f_blocks = data.f_bfree = data.f_bavail = 2**50 // BLKSIZE
    data.f_files = data.f_ffree = data.f_favail = 2**32
    data.f_namemax = NAME_MAX
    return data
