#!/usr/bin/env python3
"""A pyfuse3 + trio filesystem with one file, ``f``, whose every READ is answered from memory.

Why: ``bench.py --reads`` runs it as the **FUSE floor** of a sequential read: the same
``dd bs=1M`` through the same kernel path as chute (the page cache, readahead raised to
1 MiB by ``chute.fs.readahead`` at the first open, 1 MiB READs, the reply written from a
buffer without a copy), with no store, no network and no prefetcher. No FUSE mount in
Python on this machine reads faster than this; what separates chute from it is chute's own
work, and what separates it from the direct download is the kernel's FUSE and page-cache
path. Not part of chute.

    python scripts/read_floor.py MOUNTPOINT SIZE   # foreground; fusermount3 -u ends it
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

from chute.fs.readahead import widen

PATTERN = 8 << 20
"""Bytes of random data the file repeats (a READ is a view of it, never a copy)."""


class ReadFloor(pyfuse3.Operations):
    """One read-only file of ``size`` bytes in the root."""

    def __init__(self, mountpoint: str, size: int) -> None:
        super().__init__()
        self.mountpoint, self.size = mountpoint, size
        self.data = memoryview(os.urandom(PATTERN) * 2)
        self.widened = False

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            attrs.st_mode, attrs.st_nlink = stat.S_IFDIR | 0o755, 2
        else:
            attrs.st_mode, attrs.st_nlink, attrs.st_size = stat.S_IFREG | 0o644, 1, self.size
        attrs.st_blksize = 1 << 20
        attrs.attr_timeout = attrs.entry_timeout = 300
        return attrs

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None
                      ) -> pyfuse3.EntryAttributes:
        return self._attrs(inode)

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != b"f":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(pyfuse3.ROOT_INODE + 1)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:
        if not self.widened:  # as chute does: after INIT, at the first open for reading
            self.widened = widen(self.mountpoint)
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh: int, off: int, size: int) -> memoryview:
        start = off % PATTERN
        return self.data[start:start + max(0, min(size, self.size - off))]

    async def release(self, fh: int) -> None:
        pass


def main() -> None:
    mountpoint, size = sys.argv[1], int(sys.argv[2])
    options = set(pyfuse3.default_options)
    options.add("fsname=chute-read-floor")
    pyfuse3.init(ReadFloor(mountpoint, size), mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()


if __name__ == "__main__":
    main()
