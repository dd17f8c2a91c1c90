#!/usr/bin/env python3
"""A pyfuse3 + trio filesystem that accepts files and keeps only their names and sizes.

Why: ``bench.py --small-files --floors`` uses it to measure what FUSE in Python and ``cp``
cost per file before any object store is involved, so the small-file numbers can be read
against a floor: a mount that must also wait for the store's answer on every close cannot
beat (time per file here) + (time per PUT of the store alone).

It answers the same requests chute answers on a ``cp -r`` (lookup, mkdir, create, getattr,
getxattr, write, flush, release) with the attributes chute gives (1 MiB ``st_blksize``,
``default_permissions``), and does nothing else. Not part of chute.

    python scripts/nullfs.py MOUNTPOINT      # foreground; fusermount3 -u MOUNTPOINT ends it
"""

from __future__ import annotations

import errno
import stat
import sys
import time

import pyfuse3
import trio

BLKSIZE = 1 << 20


class NullFS(pyfuse3.Operations):
    """Names and sizes in memory; data dropped."""

    def __init__(self) -> None:
        super().__init__()
        self._next_inode = pyfuse3.ROOT_INODE + 1
        self._children: dict[tuple[int, bytes], int] = {}
        self._attrs = {pyfuse3.ROOT_INODE: self._new_attrs(pyfuse3.ROOT_INODE, True)}

    @staticmethod
    def _new_attrs(inode: int, is_dir: bool, mode: int = 0o755) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        attrs.st_mode = (stat.S_IFDIR if is_dir else stat.S_IFREG) | mode
        attrs.st_nlink = 1
        attrs.st_blksize = BLKSIZE
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = time.time_ns()
        return attrs

    def _add(self, parent: int, name: bytes, is_dir: bool, mode: int) -> pyfuse3.EntryAttributes:
        inode = self._next_inode
        self._next_inode += 1
        self._children[(parent, name)] = inode
        self._attrs[inode] = self._new_attrs(inode, is_dir, stat.S_IMODE(mode))
        return self._attrs[inode]

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        inode = self._children.get((parent_inode, name))
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs[inode]

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None
                      ) -> pyfuse3.EntryAttributes:
        return self._attrs[inode]

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._add(parent_inode, name, True, mode)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        attrs = self._add(parent_inode, name, False, mode)
        return pyfuse3.FileInfo(fh=attrs.st_ino), attrs

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        attrs = self._attrs[fh]
        attrs.st_size = max(attrs.st_size, off + len(buf))
        return len(buf)

    async def flush(self, fh: int) -> None:
        pass

    async def release(self, fh: int) -> None:
        pass

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(errno.ENODATA)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = [(name, inode) for (parent, name), inode in self._children.items()
                   if parent == fh]
        for index, (name, inode) in enumerate(entries[start_id:], start_id):
            if not pyfuse3.readdir_reply(token, name, self._attrs[inode], index + 1):
                return

    async def releasedir(self, fh: int) -> None:
        pass


def main(mountpoint: str) -> None:
    options = set(pyfuse3.default_options)
    options.update({"fsname=nullfs", "default_permissions"})
    pyfuse3.init(NullFS(), mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()


if __name__ == "__main__":
    main(sys.argv[1])
