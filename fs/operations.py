"""The FUSE operations of a chute mount: a write-only directory tree over a bucket prefix.

The tree is the bucket's keys under the prefix, ``/`` separating directories (ListObjectsV2
with a delimiter), plus what this mount has created: files being written and empty
directories (kept in the bucket as ``dir/`` marker objects, so they survive a remount).

Writing is the whole point; reading is not offered (a streaming mount holds no file's bytes
after upload): opening an existing file for reading fails with EACCES.

When does a file's upload finish? On the flush of the last close of the open that wrote it
(see openers.py), so ``close()`` returns only when the object is complete in the bucket and
returns EIO if it is not. ``release()`` (asynchronous: its errors reach nobody) finishes
whatever no flush did, e.g. a file whose last descriptor went away with a killed process.

Errors become errnos through ``chute.uploader.errors.errno_for`` only.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import pyfuse3
import trio

from chute.uploader.checksums import HASH_TAG, HASH_XATTR
from chute.uploader.errors import ChuteError, errno_for
from chute.uploader.s3 import S3Client
from chute.uploader.upload import FileUpload, UploadState
from chute.uploader.uploader import Uploader

from . import openers

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 1024
"""S3's limit on a key's length in UTF-8."""
LOOKUP_TTL = 1.0
"""Seconds a name learned from the bucket is trusted before asking the store again; also
the kernel's entry/attribute cache time. Names created outside the mount show up within it."""
BLKSIZE = 1024 * 1024
"""st_blksize: makes cp issue 1 MiB writes (4x faster than its 128 KiB default)."""


@dataclass(eq=False)
class Node:
    inode: int
    parent: int
    name: str
    is_dir: bool
    size: int = 0
    mtime_ns: int = field(default_factory=time.time_ns)
    mode: int = 0
    checked_at: float = 0.0
    """When the store last confirmed this node (trio clock); 0 = created by this mount."""
    local: bool = False
    """Created by this mount and known to exist without asking the store."""
    upload: FileUpload | None = None
    xxh3_128: str = ""


@dataclass(eq=False)
class Handle:
    node: Node
    upload: FileUpload
    opener_pid: int


@asynccontextmanager
async def _errors_as_errno(what: str) -> AsyncIterator[None]:
    """Turn any failure into the errno the caller sees; log what is not already logged."""
    try:
        yield
    except pyfuse3.FUSEError:
        raise
    except ChuteError as exc:
        raise pyfuse3.FUSEError(errno_for(exc)) from exc
    except Exception as exc:
        log.exception("%s failed unexpectedly", what)
        raise pyfuse3.FUSEError(errno_for(exc)) from exc


def _fail(err: int, message: str, *args: object) -> pyfuse3.FUSEError:
    log.warning(message + " (%s)", *args, errno.errorcode.get(err, err))
    return pyfuse3.FUSEError(err)


class ChuteOperations(pyfuse3.Operations):
    """pyfuse3 handlers; all per-file upload logic lives in FileUpload."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    """Never: the kernel's writeback cache reorders writes and can skip FLUSH after an error."""

    def __init__(self, uploader: Uploader, client: S3Client, mountpoint: str) -> None:
        super().__init__()
        self.uploader = uploader
        self.client = client
        self.bucket = client.bucket
        self.mountpoint = os.path.realpath(mountpoint)  # resolved before the mount exists
        self._mount_id: int | None = None
        root = Node(pyfuse3.ROOT_INODE, pyfuse3.ROOT_INODE, "", True, local=True)
        self._nodes: dict[int, Node] = {root.inode: root}
        self._children: dict[int, dict[str, int]] = {root.inode: {}}
        self._next_inode = pyfuse3.ROOT_INODE + 1
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._dir_listings: dict[int, list[tuple[str, Node]]] = {}
        self._uid = os.getuid()
        self._gid = os.getgid()

    # -- the node table ---------------------------------------------------------------

    def _path(self, node: Node) -> str:
        parts = []
        while node.inode != pyfuse3.ROOT_INODE:
            parts.append(node.name)
            node = self._nodes[node.parent]
        return "/".join(reversed(parts))

    def _key(self, node: Node) -> str:
        path = self._path(node)
        return self.bucket.key(path + "/" if node.is_dir and path else path)

    def _child_name(self, parent: Node, raw: bytes) -> str:
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(errno.EINVAL, "name %r is not UTF-8, which S3 keys must be", raw) \
                from None
        key = self.bucket.key(f"{self._path(parent)}/{name}".lstrip("/"))
        if len(key.encode()) + 1 > MAX_KEY_BYTES:
            raise _fail(errno.ENAMETOOLONG, "key for %r would exceed S3's %d bytes",
                        name, MAX_KEY_BYTES)
        return name

    def _add(self, parent: Node, name: str, is_dir: bool, **attrs: object) -> Node:
        children = self._children.setdefault(parent.inode, {})
        inode = children.get(name)
        if inode is not None:
            node = self._nodes[inode]
            if node.is_dir == is_dir:
                for k, v in attrs.items():
                    setattr(node, k, v)
                return node
        node = Node(self._next_inode, parent.inode, name, is_dir, **attrs)  # type: ignore[arg-type]
        self._next_inode += 1
        self._nodes[node.inode] = node
        children[name] = node.inode
        if is_dir:
            self._children.setdefault(node.inode, {})
        return node

    def _forget_child(self, parent: Node, name: str) -> None:
        inode = self._children.get(parent.inode, {}).pop(name, None)
        if inode is not None and inode in self._nodes:
            node = self._nodes[inode]
            if node.upload is None:
                self._nodes.pop(inode, None)

    def _node(self, inode: int) -> Node:
        try:
            return self._nodes[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.inode
        attrs.generation = 0
        if node.is_dir:
            attrs.st_mode = stat.S_IFDIR | (node.mode or 0o755)
            attrs.st_nlink = 2
            attrs.st_size = 0
        else:
            attrs.st_mode = stat.S_IFREG | (node.mode or 0o644)
            attrs.st_nlink = 1
            attrs.st_size = node.upload.size if node.upload is not None else node.size
        attrs.st_uid = self._uid
        attrs.st_gid = self._gid
        attrs.st_blksize = BLKSIZE
        attrs.st_blocks = (attrs.st_size + 511) // 512
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = node.mtime_ns
        busy = node.upload is not None
        attrs.attr_timeout = 0 if busy else LOOKUP_TTL
        attrs.entry_timeout = 0 if busy else LOOKUP_TTL
        return attrs

    # -- asking the store -------------------------------------------------------------

    async def _lookup_in_store(self, parent: Node, name: str) -> Node | None:
        path = f"{self._path(parent)}/{name}".lstrip("/")
        key = self.bucket.key(path)
        info = await self.client.head_object(key)
        now = trio.current_time()
        if info is not None:
            return self._add(parent, name, False, size=info.size,
                             mtime_ns=_http_date_ns(info.last_modified), checked_at=now)
        async for page in self.client.list(key + "/", max_keys=1):
            if page.objects or page.prefixes:
                return self._add(parent, name, True, checked_at=now)
        return None

    # -- lookup, attributes, directories ----------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        async with _errors_as_errno("lookup"):
            parent = self._node(parent_inode)
            child_name = self._child_name(parent, name)
            inode = self._children.get(parent.inode, {}).get(child_name)
            if inode is not None:
                node = self._nodes[inode]
                fresh = trio.current_time() - node.checked_at < LOOKUP_TTL
                if node.local or node.upload is not None or fresh:
                    return self._attrs(node)
            node = await self._lookup_in_store(parent, child_name)
            if node is None:
                self._forget_child(parent, child_name)
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attrs(node)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None
                      ) -> pyfuse3.EntryAttributes:
        return self._attrs(self._node(inode))

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        async with _errors_as_errno("setattr"):
            node = self._node(inode)
            if fields.update_size:
                await self._resize(node, attr.st_size)
            if fields.update_mode:
                node.mode = stat.S_IMODE(attr.st_mode)
            if fields.update_mtime:
                node.mtime_ns = attr.st_mtime_ns
            if ((fields.update_uid and attr.st_uid != self._uid) or \
                    (fields.update_gid and attr.st_gid != self._gid)) and ctx.uid != 0:
                raise _fail(errno.EPERM, "chown of %s by uid %d refused",
                            self._path(node), ctx.uid)
            return self._attrs(node)

    async def _resize(self, node: Node, size: int) -> None:
        upload = node.upload
        current = upload.size if upload is not None else node.size
        if size == current:
            return
        if upload is not None and upload.state is UploadState.OPEN and size > current:
            await upload.write(size, b"")  # a forward gap is zero-filled in the stream
            return
        raise _fail(errno.EOPNOTSUPP, "cannot change the size of %s from %d to %d: chute "
                    "streams files and can only extend one being written", self._path(node),
                    current, size)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        async with _errors_as_errno("opendir"):
            node = self._node(inode)
            if not node.is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            entries: dict[str, Node] = {}
            prefix = self._key(node)
            now = trio.current_time()
            async for page in self.client.list(prefix):
                for prefix_key in page.prefixes:
                    name = prefix_key[len(prefix):].rstrip("/")
                    if name:
                        entries[name] = self._add(node, name, True, checked_at=now)
                for obj in page.objects:
                    name = obj.key[len(prefix):]
                    if name and "/" not in name:
                        entries[name] = self._add(
                            node, name, False, size=obj.size, checked_at=now,
                            mtime_ns=_iso_date_ns(obj.last_modified),
                        )
            for name, inode_ in self._children.get(node.inode, {}).items():
                child = self._nodes.get(inode_)
                if child is not None and (child.local or child.upload is not None):
                    entries.setdefault(name, child)
            fh = self._next_fh
            self._next_fh += 1
            self._dir_listings[fh] = sorted(entries.items())
            return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self._dir_listings.get(fh, [])
        for index in range(start_id, len(listing)):
            name, node = listing[index]
            if not pyfuse3.readdir_reply(token, name.encode(), self._attrs(node), index + 1):
                return

    async def releasedir(self, fh: int) -> None:
        self._dir_listings.pop(fh, None)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        async with _errors_as_errno("mkdir"):
            parent = self._node(parent_inode)
            child_name = self._child_name(parent, name)
            if child_name in self._children.get(parent.inode, {}) or \
                    await self._lookup_in_store(parent, child_name) is not None:
                raise pyfuse3.FUSEError(errno.EEXIST)
            node = self._add(parent, child_name, True, local=True, mode=stat.S_IMODE(mode))
            await self.client.put_object(self._key(node), b"", {})
            return self._attrs(node)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = BLKSIZE
        data.f_frsize = BLKSIZE
        data.f_blocks = data.f_bfree = data.f_bavail = 2**40 // BLKSIZE * 1024  # 1 EiB
        data.f_files = data.f_ffree = data.f_favail = 2**32
        data.f_namemax = 255
        return data

    # -- writing ----------------------------------------------------------------------

    def _start_upload(self, node: Node, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if node.upload is not None and node.upload.state is UploadState.OPEN:
            raise _fail(errno.EBUSY, "%s is already open for writing; chute takes one writer "
                        "per file", self._path(node))
        node.upload = self.uploader.open_file(self._key(node), self._path(node))
        node.local = True
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = Handle(node, node.upload, ctx.pid)
        return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=False, nonseekable=False)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        async with _errors_as_errno("create"):
            parent = self._node(parent_inode)
            child_name = self._child_name(parent, name)
            self._check_write_flags(flags, child_name)
            node = self._add(parent, child_name, False, size=0, mode=stat.S_IMODE(mode),
                             mtime_ns=time.time_ns())
            info = self._start_upload(node, ctx)
            return info, self._attrs(node)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:
        async with _errors_as_errno("open"):
            node = self._node(inode)
            if node.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            if flags & os.O_ACCMODE == os.O_RDONLY:
                raise _fail(errno.EACCES, "%s: chute mounts are write-only; read the object "
                            "from the bucket instead", self._path(node))
            self._check_write_flags(flags, self._path(node))
            size = node.upload.size if node.upload is not None else node.size
            if not flags & os.O_TRUNC and size > 0:
                raise _fail(errno.EOPNOTSUPP, "%s exists (%d bytes): chute replaces whole "
                            "objects only, open it with O_TRUNC", self._path(node), size)
            return self._start_upload(node, ctx)

    @staticmethod
    def _check_write_flags(flags: int, name: str) -> None:
        if flags & os.O_APPEND:
            raise _fail(errno.EOPNOTSUPP, "%s: O_APPEND is not supported: objects cannot be "
                        "appended to", name)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._handles.get(fh)
        path = self._path(handle.node) if handle else "?"
        raise _fail(errno.EACCES, "%s: chute mounts are write-only; reads are refused", path)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles[fh]
        async with _errors_as_errno("write"):
            written = await handle.upload.write(off, buf)
            handle.node.mtime_ns = time.time_ns()
            return written

    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._handles[fh]
        async with _errors_as_errno("fsync"):
            await handle.upload.wait_acknowledged()

    async def flush(self, fh: int) -> None:
        handle = self._handles[fh]
        if handle.upload.state is not UploadState.OPEN:
            if handle.upload.error is not None and handle.upload.state is UploadState.FAILED:
                raise pyfuse3.FUSEError(errno_for(handle.upload.error))
            return
        if await self._held_elsewhere(handle):
            return
        await self._finalize(handle)

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh)
        if handle.upload.state is UploadState.OPEN:
            with contextlib.suppress(pyfuse3.FUSEError):  # logged; release's errors reach nobody
                await self._finalize(handle)
        self._settle(handle)

    async def _held_elsewhere(self, handle: Handle) -> bool:
        if self._mount_id is None:
            self._mount_id = openers.mount_id_of(self.mountpoint)
            if self._mount_id is None:
                return False
        return await trio.to_thread.run_sync(
            openers.held_open, self.mountpoint, self._mount_id, handle.node.inode,
            handle.opener_pid,
        )

    async def _finalize(self, handle: Handle) -> None:
        try:
            async with _errors_as_errno("close"):
                await handle.upload.finalize()
        finally:
            self._settle(handle)

    def _settle(self, handle: Handle) -> None:
        """Once an upload has ended, the node shows the object (or disappears if it failed)."""
        node, upload = handle.node, handle.upload
        if node.upload is not upload or upload.state in (UploadState.OPEN,
                                                         UploadState.FINALIZING):
            return
        node.upload = None
        if upload.state is UploadState.DONE:
            node.size = upload.size
            node.xxh3_128 = upload.xxh3_128
            node.checked_at = trio.current_time()
        else:
            parent = self._nodes.get(node.parent)
            if parent is not None:
                self._forget_child(parent, node.name)

    # -- extended attributes ----------------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        async with _errors_as_errno("getxattr"):
            node = self._node(inode)
            if name != HASH_XATTR or node.is_dir or node.upload is not None:
                raise pyfuse3.FUSEError(errno.ENODATA)
            if not node.xxh3_128:
                tags = await self.client.get_tags(self._key(node))
                node.xxh3_128 = tags.get(HASH_TAG, "")
            if not node.xxh3_128:
                raise pyfuse3.FUSEError(errno.ENODATA)
            return node.xxh3_128.encode()

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        node = self._node(inode)
        return [] if node.is_dir or node.upload is not None else [HASH_XATTR]

    # -- not supported (yet) ----------------------------------------------------------

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise _fail(errno.EOPNOTSUPP, "hard links are not supported on an object store")

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise _fail(errno.EOPNOTSUPP, "symlinks are not supported")

    # -- shutdown ---------------------------------------------------------------------

    async def abort_open_files(self, why: str) -> None:
        await self.uploader.abort_open_uploads(why)


def _http_date_ns(value: str) -> int:
    try:
        return int(parsedate_to_datetime(value).timestamp() * 1e9)
    except (TypeError, ValueError):
        return time.time_ns()


def _iso_date_ns(value: str) -> int:
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        return time.time_ns()
