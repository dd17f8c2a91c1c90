"""The FUSE operations of a chute mount: a write-only directory tree over a bucket prefix.

This is the adapter between pyfuse3 and the modules that do the work; each handler decodes
its arguments, delegates, and maps errors to an errno (errnos.py). The jobs:

- namespace.py: the inode table, names and their rules, lookup counts and ``forget``;
- lookups.py: what the store holds under a name, and the listing freshness that answers
  most lookups of absent names without a request;
- handles.py: open files, their uploads, and which close finishes a file (openers.py);
- objects.py: metadata copies (chmod/utimens), rename, unlink, rmdir, mkdir, and the mount
  policies (policy.py); metadata.py: how mode and mtime travel with an object;
- attributes.py: what stat and statfs show;
- reads.py: opens for reading of finished objects (read handles, ``--allow-read``);
- symlinks.py: symbolic links (an object holding the target, s3fs-fuse's convention).

The data path of one ``write()``: the kernel's WRITE reaches :meth:`ChuteOperations.write`,
which hands it to the file's handle (handles.py), whose FileUpload (chute.uploader) copies
the bytes into its ring slice; a full slice is sealed and sent as a multipart part by the
uploader's workers. The close that is the last one finalizes the upload (the last part,
then CompleteMultipartUpload, or one PutObject for a small file) and returns only then.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence

import pyfuse3

from chute.uploader.checksums import HASH_TAG, HASH_XATTR
from chute.uploader.logsafe import quoted
from chute.uploader.s3 import S3Client
from chute.uploader.uploader import Uploader

from . import attributes
from .errnos import Refused, errors_as_errno, errors_logged
from .handles import HandleTable
from .lookups import LOOKUP_TTL, Lookups, bounded
from .namespace import Namespace, Node
from .objects import ObjectOps
from .policy import MountPolicy
from .reads import ReadHandles, ReadSetup
from .symlinks import Symlinks


class ChuteOperations(pyfuse3.Operations):
    """pyfuse3 handlers over one mount's namespace, lookups, handles and object operations."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    """Never: the kernel's writeback cache reorders writes and can skip FLUSH after an error."""

    def __init__(self, uploader: Uploader, client: S3Client, mountpoint: str,
                 policy: MountPolicy | None = None, reads: ReadSetup | None = None, *,
                 lookup_client: S3Client | None = None) -> None:
        """``lookup_client``: the client of lookups and listings, if not ``client`` (the
        mount gives them their own connections, see mount._make_lookup_client)."""
        super().__init__()
        self.mountpoint = os.path.realpath(mountpoint)  # resolved before the mount exists
        self.ns = Namespace(client.bucket.key, LOOKUP_TTL)
        self.lookups = Lookups(self.ns, lookup_client or client)
        self.objects = ObjectOps(self.ns, self.lookups, client, policy or MountPolicy())
        self.handles = HandleTable(self.ns, uploader, self.objects, self.mountpoint)
        self.reads = ReadHandles(self.ns, self.lookups, reads or ReadSetup())
        self.links = Symlinks(self.ns, self.lookups, client)
        self.client = client
        owner = policy or MountPolicy()  # --uid/--gid, else the mounting user
        self._uid = owner.uid if owner.uid is not None else os.getuid()
        self._gid = owner.gid if owner.gid is not None else os.getgid()

    def _named(self, operation: str, inode: int, name: bytes | None = None
               ) -> Callable[[], str]:
        """For errors_as_errno: "operation path", the path found only if needed."""
        def describe() -> str:
            node = self.ns.get(inode)
            path = self.ns.path(node) if node is not None else f"<inode {inode}>"
            if name is not None:
                path = f"{path}/{name.decode('utf-8', 'replace')}".lstrip("/")
            return f"{operation} {quoted(path or '/')}"
        return describe

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        return attributes.entry(node, self._uid, self._gid)

    # -- names ----------------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        async with errors_as_errno(self._named("lookup", parent_inode, name)):
            parent = self.ns.node(parent_inode)
            node = await self.lookups.lookup(parent, self.ns.check_name(parent, name))
            if node is None:
                raise Refused(errno.ENOENT)
            return self._entry(self.ns.looked_up(node))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        async with errors_logged("forget"):  # no reply: an exception would end the loop
            for inode, count in inode_list:
                self.ns.forget(inode, count)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None
                      ) -> pyfuse3.EntryAttributes:
        async with errors_as_errno(self._named("getattr", inode)):
            node = self.ns.node(inode)
            if node.needs_head and node.upload is None:
                await self.lookups.refresh(node)
            return self._entry(node)

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        async with errors_as_errno(self._named("setattr", inode)):
            node = self.ns.node(inode)
            if ((fields.update_uid and attr.st_uid != self._uid)
                    or (fields.update_gid and attr.st_gid != self._gid)) and ctx.uid != 0:
                raise Refused(errno.EPERM, "chown of %r by uid %d refused",
                              self.ns.path(node), ctx.uid)
            if fields.update_size:
                await self.handles.resize(node, attr.st_size)
            if fields.update_mode or fields.update_mtime:
                await self.objects.change_mode_mtime(
                    node, attr.st_mode if fields.update_mode else None,
                    attr.st_mtime_ns if fields.update_mtime else None)
            return self._entry(node)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        async with errors_as_errno("statfs"):
            return attributes.statfs()

    # -- directories ----------------------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        async with errors_as_errno(self._named("opendir", inode)):
            node = self.ns.node(inode)
            if not node.is_dir:
                raise Refused(errno.ENOTDIR)
            return self.handles.open_dir(await self.lookups.list_dir(node))

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Every entry in the reply is a lookup the kernel counts (readdirplus)."""
        async with errors_as_errno("readdir"):
            listing = self.handles.dir_entries(fh)
            for index in range(start_id, len(listing)):
                if listing[index][1].gone:
                    continue  # removed since opendir
                node = self.ns.attach(listing[index][1])
                if not pyfuse3.readdir_reply(token, listing[index][0].encode(),
                                             self._entry(node), index + 1):
                    self.ns.prune(node)
                    return
                self.ns.looked_up(node)

    async def releasedir(self, fh: int) -> None:
        async with errors_as_errno("releasedir"):
            self.handles.release_dir(fh)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        async with errors_as_errno(self._named("mkdir", parent_inode, name)):
            parent = self.ns.node(parent_inode)
            child = self.ns.check_name(parent, name, directory=True, new=True)
            node = await self.objects.mkdir(parent, child, mode)
            return self._entry(self.ns.looked_up(node))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                    ) -> None:
        async with errors_as_errno(self._named("rmdir", parent_inode, name)):
            parent = self.ns.node(parent_inode)
            await self.objects.rmdir(parent, self.ns.check_name(parent, name))

    # -- files ----------------------------------------------------------------------

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        async with errors_as_errno(self._named("create", parent_inode, name)):
            parent = self.ns.node(parent_inode)
            child = self.ns.check_name(parent, name, new=True)
            fh, node = self.handles.create(parent, child, mode, flags, ctx.pid)
            self.reads.forget_cache(node)
            return _file_info(fh), self._entry(self.ns.looked_up(node))

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:
        async with errors_as_errno(self._named("open", inode)):
            node = self.ns.node(inode)
            if self.reads.wants(node, flags):  # reads.py: finished objects, for reading
                fh, keep_cache = await self.reads.open(node, flags)
                return _file_info(fh, keep_cache, direct_io=self.reads.direct)
            self.reads.forget_cache(node)
            return _file_info(await self.handles.open(node, flags, ctx.pid))

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        async with errors_as_errno("read"):  # the reader's errors name the object
            if self.reads.owns(fh):
                return await self.reads.read(fh, off, size)
            node = self.handles.get(fh).node
            raise Refused(errno.EACCES, "%r is being written: it can be read once its last "
                          "close has returned", self.ns.path(node))

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        async with errors_as_errno("write"):  # the upload's errors name the file
            if self.reads.owns(fh):
                self.reads.refuse_write(fh)
            return await self.handles.write(fh, off, buf)

    async def fsync(self, fh: int, datasync: bool) -> None:
        async with errors_as_errno("fsync"):  # the upload's errors name the file
            if not self.reads.owns(fh):
                await self.handles.fsync(fh)

    async def flush(self, fh: int) -> None:
        async with errors_as_errno("close"):  # the upload's errors name the file
            if not self.reads.owns(fh):
                await self.handles.flush(fh)

    async def release(self, fh: int) -> None:
        async with errors_as_errno("release"):  # its errors reach nobody: logged there
            if self.reads.owns(fh):
                await self.reads.release(fh)
                return
            await self.handles.release(fh)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> None:
        async with errors_as_errno(self._named("unlink", parent_inode, name)):
            parent = self.ns.node(parent_inode)
            await self.objects.unlink(parent, self.ns.check_name(parent, name))

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        async with errors_as_errno(self._named("rename", parent_inode_old, name_old)):
            old_parent = self.ns.node(parent_inode_old)
            new_parent = self.ns.node(parent_inode_new)
            old_name = self.ns.check_name(old_parent, name_old)
            new_name = self.ns.check_name(new_parent, name_new, new=True)
            if flags & pyfuse3.RENAME_EXCHANGE:
                raise Refused(errno.EINVAL, "rename %r <-> %r: RENAME_EXCHANGE cannot be done "
                              "on an object store (two copies, not atomic)", old_name, new_name)
            await self.objects.rename(old_parent, old_name, new_parent, new_name,
                                      noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE))

    # -- extended attributes --------------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        """The object's xxh3-128 (the tag chute stores), for ``chute verify``."""
        if name != HASH_XATTR:  # security.capability before every write: answered at once
            raise pyfuse3.FUSEError(errno.ENODATA)
        async with errors_as_errno(self._named("getxattr", inode)):
            node = self.ns.node(inode)
            if node.is_dir or node.is_link or node.upload is not None:
                raise Refused(errno.ENODATA)
            if not node.xxh3_128:
                tags = await bounded(self.client.get_tags(self.ns.key(node)))
                node.xxh3_128 = tags.get(HASH_TAG, "")
            if not node.xxh3_128:
                raise Refused(errno.ENODATA)
            return node.xxh3_128.encode()

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        async with errors_as_errno(self._named("listxattr", inode)):
            node = self.ns.node(inode)
            return [] if node.is_dir or node.is_link or node.upload is not None else [HASH_XATTR]

    # -- links ----------------------------------------------------------------------

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        async with errors_as_errno(self._named("symlink", parent_inode, name)):
            parent = self.ns.node(parent_inode)
            child = self.ns.check_name(parent, name, new=True)
            node = await self.links.create(parent, child, target)
            return self._entry(self.ns.looked_up(node))

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        async with errors_as_errno(self._named("readlink", inode)):
            return await self.links.target(self.ns.node(inode))

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        async with errors_as_errno("link"):
            raise Refused(errno.EOPNOTSUPP, "hard links are not supported on an object store "
                          "(rsync without -H, rsnapshot with link_dest 0: see the README)")

    # -- shutdown -------------------------------------------------------------------

    async def abort_open_files(self, why: str) -> None:
        await self.handles.abort_all(why)


def _file_info(fh: int, keep_cache: bool = False, direct_io: bool = False
               ) -> pyfuse3.FileInfo:
    return pyfuse3.FileInfo(fh=fh, direct_io=direct_io, keep_cache=keep_cache and not direct_io,
                            nonseekable=False)
