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

Mode and mtime travel with the object as ``x-amz-meta-chute-mode`` (octal) and
``x-amz-meta-chute-mtime-ns``, so ``rsync -a`` finds its files unchanged on the next run, even
after a remount. They are sent with Create/Put; a chmod or utimens of a finished object is a
CopyObject onto itself with new metadata (the one way S3 changes metadata), and one made while
the file was being written is fixed up the same way after close. A listing carries no
metadata, so a file only seen in a listing is HEADed before its attributes are trusted.

rename is a server-side copy then a delete of the source, unlink a DeleteObject, rmdir the
deletion of an empty directory's marker. A file still being written cannot be renamed or
unlinked (EBUSY): its object does not exist yet.

Looking up a name that does not exist is the common case (every file ``cp`` creates), and
asking the store costs a HEAD and a LIST. A directory whose keys the mount has seen whole
(listed, or created empty by this mount) answers such lookups itself for LOOKUP_TTL after
that listing started: a name it does not hold did not exist then. After that a directory that
fits one listing page is listed again (one request for every lookup of the next LOOKUP_TTL),
a larger one is asked name by name. Names created outside the mount still show up within
LOOKUP_TTL.

Two mount policies (``--no-overwrite``, ``--no-delete``; see cli.py) refuse what would
replace or remove an object already in the bucket. They are decided here, before any request.

Errors become errnos through ``chute.uploader.errors.errno_for`` only. A store that cannot be
reached is one log line per failed operation; a traceback means a bug.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import stat
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TypeVar

import httpx
import pyfuse3
import trio

from chute.uploader import leftovers
from chute.uploader.checksums import HASH_TAG, HASH_XATTR
from chute.uploader.copy import MAX_COPY_BYTES, copy_in_parts
from chute.uploader.errors import ChuteError, StoreError, errno_for
from chute.uploader.file_upload import FileUpload, UploadState
from chute.uploader.retry import Stalled
from chute.uploader.s3 import Listing, ObjectInfo, S3Client
from chute.uploader.uploader import Uploader

from . import openers

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_KEY_BYTES = 1024
"""S3's limit on a key's length in UTF-8."""
NAME_MAX = 255
"""The longest name (one path component) in bytes, as statfs reports it; the kernel lets
FUSE names of up to 1024 bytes through, and S3 would take them, but tools expect 255."""
LOOKUP_TTL = 1.0
"""Seconds a name learned from the bucket is trusted before asking the store again; also
the kernel's entry/attribute cache time. Names created outside the mount show up within it."""
METADATA_DEADLINE = 5.0
"""Seconds one lookup, stat or listing request may take, retries included, before the caller
gets EIO. The kernel serializes lookups per directory, so a store that is away must not hold
a ``stat`` (and every lookup queued behind it) for the uploads' whole retry budget."""
RELIST_MAX_KEYS = 1000
"""A directory whose keys fit one listing page of this size is listed again to answer the
lookups of names it does not hold; a larger one is asked name by name (HEAD + LIST)."""
BLKSIZE = 1024 * 1024
"""st_blksize: makes cp issue 1 MiB writes (4x faster than its 128 KiB default)."""
MODE_META = "chute-mode"
"""User metadata key (x-amz-meta-chute-mode): the file's permission bits, in octal."""
MTIME_META = "chute-mtime-ns"
"""User metadata key (x-amz-meta-chute-mtime-ns): the file's mtime in nanoseconds."""
DEFAULT_FILE_MODE = 0o644
"""Mode of an object that carries no chute-mode (written by something else)."""
DEFAULT_DIR_MODE = 0o755


@dataclass(eq=False)
class Node:
    inode: int
    parent: int
    name: str
    is_dir: bool
    size: int = 0
    mtime_ns: int = field(default_factory=time.time_ns)
    mode: int | None = None
    """Permission bits; None = not known, shown as the default."""
    checked_at: float = 0.0
    """When the store last confirmed this node (trio clock); 0 = created by this mount."""
    local: bool = False
    """Created by this mount and known to exist without asking the store."""
    upload: FileUpload | None = None
    xxh3_128: str = ""
    etag: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    """The object's user metadata as the bucket holds it (without the x-amz-meta- prefix)."""
    needs_head: bool = False
    """Seen in a listing only: mode and mtime are unknown until a HEAD."""
    mtime_explicit: bool = False
    """mtime was set by utimens since the last write (so it must reach the object)."""
    lock: trio.Lock = field(default_factory=trio.Lock, repr=False)
    """Serializes this object's metadata copies and renames."""
    listed_at: float = -math.inf
    """Directory: when (trio clock) its last complete listing started, or when this mount
    found its name free and created it. Every key directly under it then is in the node
    table, so until LOOKUP_TTL later a name it does not hold does not exist."""
    fits_one_page: bool = True
    """Directory: False once a listing had more than one page (RELIST_MAX_KEYS keys); then
    it is no longer listed to answer lookups, which ask about each name instead."""


@dataclass(eq=False)
class Handle:
    node: Node
    upload: FileUpload
    opener_pid: int
    last_pid_at_open: int
    """See openers.held_open: only processes created after the open can share it."""


STORE_FAILURES = (httpx.HTTPError, Stalled, trio.TooSlowError, ET.ParseError)
"""A store that cannot be reached, stalls, does not answer in time, or answers garbage:
expected in operation, so one log line each, never a traceback."""


@asynccontextmanager
async def _errors_as_errno(what: str | Callable[[], str]) -> AsyncIterator[None]:
    """Turn any failure into the errno the caller sees; log what is not already logged:
    chute's own errors and the store's failures in one line with the errno and the cause,
    anything else (a bug) with its traceback. ``what`` names the operation, or is called to
    name it (with its path) only when there is something to log."""
    try:
        yield
    except pyfuse3.FUSEError:
        raise
    except (ChuteError, *STORE_FAILURES) as exc:
        code = errno_for(exc)
        log.warning("%s: returning %s: %s", what if isinstance(what, str) else what(),
                    errno.errorcode.get(code, code), _describe(exc))
        raise pyfuse3.FUSEError(code) from exc
    except Exception as exc:
        log.exception("%s failed unexpectedly", what if isinstance(what, str) else what())
        raise pyfuse3.FUSEError(errno_for(exc)) from exc


def _describe(exc: BaseException) -> str:
    """One line about a failure; some transport errors have an empty message."""
    if isinstance(exc, trio.TooSlowError):
        return f"the store did not answer within {METADATA_DEADLINE:g} s"
    if isinstance(exc, ChuteError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _bounded(request: Awaitable[T]) -> T:
    """A metadata request (lookup, stat, listing page) that gives up after METADATA_DEADLINE
    (trio.TooSlowError, EIO for the caller) instead of the uploads' retry budget."""
    with trio.fail_after(METADATA_DEADLINE):
        return await request


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
        self._relisting: dict[int, trio.Event] = {}
        """Directories being listed again for lookups, by inode (see _relist)."""
        self._uid = os.getuid()
        self._gid = os.getgid()

    # -- the node table ---------------------------------------------------------------

    def _path(self, node: Node) -> str:
        parts = []
        while node.inode != pyfuse3.ROOT_INODE:
            parts.append(node.name)
            node = self._nodes[node.parent]
        return "/".join(reversed(parts))

    def _named(self, operation: str, inode: int, name: bytes | None = None
               ) -> Callable[[], str]:
        """For _errors_as_errno: "operation path", the path found only if needed."""
        def describe() -> str:
            node = self._nodes.get(inode)
            path = self._path(node) if node is not None else f"<inode {inode}>"
            if name is not None:
                path = f"{path}/{name.decode('utf-8', 'replace')}".lstrip("/")
            return f"{operation} {path or '/'}"
        return describe

    def _key(self, node: Node) -> str:
        path = self._path(node)
        return self.bucket.key(path + "/" if node.is_dir and path else path)

    def _child_name(self, parent: Node, raw: bytes, *, directory: bool = False) -> str:
        """The name as a str, or a clear errno: not UTF-8, reserved, or too long (a name over
        NAME_MAX, or a key over S3's 1024 bytes, counting a directory marker's slash)."""
        if len(raw) > NAME_MAX:
            raise _fail(errno.ENAMETOOLONG, "name %r... is %d bytes, more than the %d a name "
                        "may have", raw[:40], len(raw), NAME_MAX)
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(errno.EINVAL, "name %r is not UTF-8, which S3 keys must be", raw) \
                from None
        if self._is_reserved(parent, name):
            raise _fail(errno.EPERM, "%s is chute's own marker directory (see "
                        "uploader/leftovers.py) and cannot be used through the mount", name)
        key = self.bucket.key(f"{self._path(parent)}/{name}".lstrip("/"))
        if len(key.encode()) + directory > MAX_KEY_BYTES:
            raise _fail(errno.ENAMETOOLONG, "key for %r would exceed S3's %d bytes",
                        name, MAX_KEY_BYTES)
        return name

    @staticmethod
    def _is_reserved(parent: Node, name: str) -> bool:
        """The mount root's upload-marker directory is chute's, not the user's."""
        return parent.inode == pyfuse3.ROOT_INODE and name == leftovers.MARKER_DIR

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
            attrs.st_mode = stat.S_IFDIR | (DEFAULT_DIR_MODE if node.mode is None else node.mode)
            attrs.st_nlink = 2
            attrs.st_size = 0
        else:
            attrs.st_mode = stat.S_IFREG | _file_mode(node)
            attrs.st_nlink = 1
            attrs.st_size = node.upload.size if node.upload is not None else node.size
        attrs.st_uid = self._uid
        attrs.st_gid = self._gid
        attrs.st_blksize = BLKSIZE
        attrs.st_blocks = (attrs.st_size + 511) // 512
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = node.mtime_ns
        # Not cached while it changes (being written) or is not known yet (listed only):
        # the next stat comes back here and a HEAD supplies the stored mode and mtime.
        volatile = node.upload is not None or node.needs_head
        attrs.attr_timeout = 0 if volatile else LOOKUP_TTL
        attrs.entry_timeout = 0 if volatile else LOOKUP_TTL
        return attrs

    # -- asking the store -------------------------------------------------------------

    async def _lookup_in_store(self, parent: Node, name: str) -> Node | None:
        """Ask the store about one name: a HEAD for a file, a LIST for a directory."""
        path = f"{self._path(parent)}/{name}".lstrip("/")
        key = self.bucket.key(path)
        info = await _bounded(self.client.head_object(key))
        now = trio.current_time()
        if info is not None:
            node = self._add(parent, name, False)
            _apply_head(node, info, now)
            return node
        page = await self._first_page(key + "/", max_keys=1)
        if page is not None and (page.objects or page.prefixes):
            return self._add(parent, name, True, checked_at=now)
        return None

    async def _find(self, parent: Node, name: str) -> tuple[Node | None, float]:
        """The child ``name`` as the store has it, and the time (trio clock) the answer
        describes. A name the node table holds is the caller's business; one it does not
        hold is answered from the directory's listing while that is fresh (re-listing a
        small directory if needed), else by asking the store about the name."""
        known = self._known_child(parent, name)
        if known is not None:
            return known, trio.current_time()
        if not self._listing_fresh(parent) and parent.fits_one_page:
            await self._relist(parent)
        if self._listing_fresh(parent):
            return self._known_child(parent, name), parent.listed_at
        asked_at = trio.current_time()
        return await self._lookup_in_store(parent, name), asked_at

    def _known_child(self, parent: Node, name: str) -> Node | None:
        inode = self._children.get(parent.inode, {}).get(name)
        return self._nodes.get(inode) if inode is not None else None

    @staticmethod
    def _listing_fresh(node: Node) -> bool:
        return trio.current_time() - node.listed_at < LOOKUP_TTL

    async def _relist(self, node: Node) -> None:
        """List a directory (that may fit one page) again, so that the lookups of the next
        LOOKUP_TTL are answered without a request each. One listing at a time per
        directory; a lookup that finds one under way waits for it."""
        underway = self._relisting.get(node.inode)
        if underway is not None:
            await underway.wait()  # if that one failed, the caller asks about its name
            return
        done = self._relisting[node.inode] = trio.Event()
        try:
            await self._list_dir(node, max_pages=1)
        finally:
            del self._relisting[node.inode]
            done.set()

    async def _list_dir(self, node: Node, *, max_pages: int | None = None) -> dict[str, Node]:
        """The directory's children as the store lists them (plus the files being written
        and the directories this mount created), entered in the node table. If the listing
        is complete (not cut at ``max_pages``), the directory remembers it: ``listed_at``."""
        started = trio.current_time()
        prefix = self._key(node)
        pages, complete = await self._list_pages(prefix, max_pages)
        entries: dict[str, Node] = {}
        now = trio.current_time()
        for page in pages:
            for prefix_key in page.prefixes:
                name = prefix_key[len(prefix):].rstrip("/")
                if name and not self._is_reserved(node, name):
                    entries[name] = self._add(node, name, True, checked_at=now)
            for obj in page.objects:
                name = obj.key[len(prefix):]
                if name and "/" not in name:
                    entries[name] = self._listed_file(node, name, obj, now)
        if complete:
            node.listed_at = started
        node.fits_one_page = complete and len(pages) <= 1
        for name, inode in self._children.get(node.inode, {}).items():
            child = self._nodes.get(inode)
            if child is not None and (child.local or child.upload is not None):
                entries.setdefault(name, child)
        return entries

    async def _list_pages(self, prefix: str, max_pages: int | None
                          ) -> tuple[list[Listing], bool]:
        """The ListObjectsV2 pages of RELIST_MAX_KEYS under ``prefix``, at most
        ``max_pages``, and whether that is the whole listing. A page does not say whether it
        was the last, so telling may fetch one more page; each is bounded by
        METADATA_DEADLINE."""
        pages: list[Listing] = []
        async with contextlib.aclosing(self.client.list(prefix, max_keys=RELIST_MAX_KEYS)
                                       ) as it:
            while True:
                try:
                    page = await _bounded(anext(it))
                except StopAsyncIteration:
                    return pages, True
                if max_pages is not None and len(pages) == max_pages:
                    return pages, False
                pages.append(page)

    async def _first_page(self, prefix: str, max_keys: int) -> Listing | None:
        """The first ListObjectsV2 page under ``prefix``, bounded by METADATA_DEADLINE."""
        async with contextlib.aclosing(self.client.list(prefix, max_keys=max_keys)) as it:
            try:
                return await _bounded(anext(it))
            except StopAsyncIteration:
                return None

    def _unsure_of(self, parent: Node) -> None:
        """A name of ``parent`` left the node table although its key may still exist (a
        failed replacement, a delete that failed): its listing no longer proves absence."""
        parent.listed_at = -math.inf

    async def _refresh(self, node: Node) -> None:
        """HEAD a file known only from a listing; ENOENT if it has gone meanwhile."""
        info = await _bounded(self.client.head_object(self._key(node)))
        if info is None:
            parent = self._nodes.get(node.parent)
            if parent is not None:
                self._forget_child(parent, node.name)
            raise pyfuse3.FUSEError(errno.ENOENT)
        _apply_head(node, info, trio.current_time())

    async def _child(self, parent: Node, name: str) -> Node:
        """The node of an existing name (the kernel looked it up just before); else ENOENT."""
        node, _ = await self._find(parent, name)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _listed_file(self, parent: Node, name: str, obj: ObjectInfo, now: float) -> Node:
        """A file seen in a listing: keep what we know if it is the same object (ETag),
        else take its size and Last-Modified and mark it for a HEAD (listings carry no
        metadata, so its mode and mtime are not known yet)."""
        inode = self._children.get(parent.inode, {}).get(name)
        known = self._nodes.get(inode) if inode is not None else None
        if known is not None and not known.is_dir and (
                known.upload is not None or (known.etag == obj.etag and not known.needs_head)):
            known.checked_at = now
            return known
        return self._add(parent, name, False, size=obj.size, etag=obj.etag, checked_at=now,
                         mtime_ns=_iso_date_ns(obj.last_modified), mode=None, needs_head=True)

    # -- lookup, attributes, directories ----------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        async with _errors_as_errno(self._named("lookup", parent_inode, name)):
            parent = self._node(parent_inode)
            child_name = self._child_name(parent, name)
            node = self._known_child(parent, child_name)
            if node is None:
                node, _ = await self._find(parent, child_name)
            else:
                fresh = trio.current_time() - node.checked_at < LOOKUP_TTL
                if node.upload is not None or (not node.needs_head and (node.local or fresh)):
                    return self._attrs(node)
                node = await self._lookup_in_store(parent, child_name)
            if node is None:
                self._forget_child(parent, child_name)
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attrs(node)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None
                      ) -> pyfuse3.EntryAttributes:
        async with _errors_as_errno(self._named("getattr", inode)):
            node = self._node(inode)
            if node.needs_head and node.upload is None:
                await self._refresh(node)
            return self._attrs(node)

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        async with _errors_as_errno(self._named("setattr", inode)):
            node = self._node(inode)
            if ((fields.update_uid and attr.st_uid != self._uid) or \
                    (fields.update_gid and attr.st_gid != self._gid)) and ctx.uid != 0:
                raise _fail(errno.EPERM, "chown of %s by uid %d refused",
                            self._path(node), ctx.uid)
            if fields.update_size:
                await self._resize(node, attr.st_size)
            if fields.update_mode or fields.update_mtime:
                await self._change_mode_mtime(node, attr, fields)
            return self._attrs(node)

    async def _change_mode_mtime(self, node: Node, attr: pyfuse3.EntryAttributes,
                                 fields: pyfuse3.SetattrFields) -> None:
        """chmod / utimens. A directory keeps them in memory (a marker cannot be copied
        onto itself on SeaweedFS); a file being written records them for its Create/Put, or
        for the fix-up after close; a finished object gets them by a copy onto itself."""
        if node.is_dir or node.upload is not None:
            _apply_mode_mtime(node, attr, fields)
            self._sync_upload_metadata(node)
            return
        async with node.lock:
            if node.needs_head:
                await self._refresh(node)
            _apply_mode_mtime(node, attr, fields)
            await self._store_metadata(node)

    async def _store_metadata(self, node: Node) -> None:
        """Make the object's chute metadata match the node (a self-copy, if it differs).

        Caller holds ``node.lock``. If the copy fails the node is marked for a HEAD, so the
        next stat shows what the bucket really holds.
        """
        wanted = {**node.metadata, **_chute_metadata(node)}
        if wanted == node.metadata:
            return
        key = self._key(node)
        try:
            await self._copy(node, key, key, wanted)
        except BaseException:
            node.needs_head = True
            raise

    async def _copy(self, node: Node, source_key: str, dest_key: str,
                    metadata: dict[str, str]) -> None:
        """Server-side copy of ``node``'s object carrying ``metadata``; the node learns the
        new ETag and metadata. Guarded by the ETag we know: if the object changed in the
        bucket behind our back, nothing is copied (ESTALE) rather than copying the wrong one.
        """
        etag = node.etag or None
        try:
            if node.size > MAX_COPY_BYTES:
                node.etag = await copy_in_parts(self.client, source_key, dest_key, node.size,
                                                _meta_headers(metadata), if_match_etag=etag)
            else:
                keep = metadata == node.metadata and source_key != dest_key
                node.etag = await self.client.copy_object(
                    source_key, dest_key, None if keep else _meta_headers(metadata),
                    if_match_etag=etag,
                )
        except StoreError as exc:
            if exc.status != 412 and exc.code != "PreconditionFailed":
                raise
            node.needs_head = True
            raise _fail(errno.ESTALE, "%s changed in the bucket since chute last looked at it "
                        "(ETag was %s); nothing was copied, stat it and retry",
                        self._path(node), etag) from exc
        node.metadata = dict(metadata)

    def _sync_upload_metadata(self, node: Node) -> None:
        """A file being written: its Create/Put (if not sent yet) carries the current values."""
        if node.upload is not None and not node.is_dir:
            node.upload.metadata.update(_chute_metadata(node))

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
        async with _errors_as_errno(self._named("opendir", inode)):
            node = self._node(inode)
            if not node.is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            entries = await self._list_dir(node)
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
        async with _errors_as_errno(self._named("mkdir", parent_inode, name)):
            parent = self._node(parent_inode)
            child_name = self._child_name(parent, name, directory=True)
            existing, free_since = await self._find(parent, child_name)
            if existing is not None:
                raise pyfuse3.FUSEError(errno.EEXIST)
            # Nothing was under its prefix then: the new directory starts out fully known.
            node = self._add(parent, child_name, True, local=True, mode=stat.S_IMODE(mode),
                             mtime_ns=time.time_ns(), listed_at=free_since)
            try:
                await self.client.put_object(self._key(node), b"", _meta_headers(
                    _chute_metadata(node)))
            except BaseException:
                self._forget_child(parent, child_name)  # no marker, no directory
                raise
            return self._attrs(node)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = BLKSIZE
        data.f_frsize = BLKSIZE
        data.f_blocks = data.f_bfree = data.f_bavail = 2**50 // BLKSIZE  # 1 PiB: "no limit"
        data.f_files = data.f_ffree = data.f_favail = 2**32
        data.f_namemax = NAME_MAX
        return data

    # -- writing ----------------------------------------------------------------------

    def _join_upload(self, node: Node, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        """Another open of a file being written, without O_TRUNC (``truncate -s`` while a
        writer has it open, a second ``exec 3<>``): a handle on the same upload. The upload
        finalizes at the last close of all its handles (see _held_elsewhere and release)."""
        return self._new_handle(node, ctx)

    def _new_handle(self, node: Node, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        assert node.upload is not None
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = Handle(node, node.upload, ctx.pid, openers.last_pid())
        return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=False, nonseekable=False)

    def _start_upload(self, node: Node, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if node.upload is not None and node.upload.state is UploadState.OPEN:
            raise _fail(errno.EBUSY, "%s is already open for writing; chute takes one writer "
                        "per file", self._path(node))
        node.mtime_ns = time.time_ns()
        node.mtime_explicit = False
        node.needs_head = False
        node.upload = self.uploader.open_file(
            self._key(node), self._path(node), _chute_metadata(node),
            no_clobber=self.uploader.config.no_overwrite)
        node.local = True
        return self._new_handle(node, ctx)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        async with _errors_as_errno(self._named("create", parent_inode, name)):
            parent = self._node(parent_inode)
            child_name = self._child_name(parent, name)
            self._check_write_flags(flags, child_name)
            known = self._known_child(parent, child_name)
            if known is not None and known.upload is None:
                self._refuse_if_no_overwrite(known)
            node = self._add(parent, child_name, False, size=0, mode=stat.S_IMODE(mode),
                             mtime_ns=time.time_ns())
            info = self._start_upload(node, ctx)
            return info, self._attrs(node)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:
        async with _errors_as_errno(self._named("open", inode)):
            node = self._node(inode)
            if node.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            if flags & os.O_ACCMODE == os.O_RDONLY:
                raise _fail(errno.EACCES, "%s: chute mounts are write-only; read the object "
                            "from the bucket instead", self._path(node))
            self._check_write_flags(flags, self._path(node))
            if (node.upload is not None and node.upload.state is UploadState.OPEN
                    and not flags & os.O_TRUNC):
                return self._join_upload(node, ctx)
            if node.upload is None:
                self._refuse_if_no_overwrite(node)
            size = node.upload.size if node.upload is not None else node.size
            if not flags & os.O_TRUNC and size > 0:
                raise _fail(errno.EOPNOTSUPP, "%s exists (%d bytes): chute replaces whole "
                            "objects only, open it with O_TRUNC", self._path(node), size)
            return self._start_upload(node, ctx)

    def _refuse_if_no_overwrite(self, node: Node) -> None:
        """--no-overwrite: an object already in the bucket is never opened for writing
        (O_TRUNC or not: either would replace it). A name that appears in the bucket while
        its file is written is caught by the upload itself (If-None-Match), at close."""
        if self.uploader.config.no_overwrite:
            raise _fail(errno.EEXIST, "%s exists and the mount has --no-overwrite: it is not "
                        "opened for writing", self._path(node))

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
        async with _errors_as_errno("write"):  # the upload's errors name the file
            written = await handle.upload.write(off, buf)
            node = handle.node
            node.mtime_ns = time.time_ns()
            node.mtime_explicit = False
            self._sync_upload_metadata(node)
            return written

    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._handles[fh]
        async with _errors_as_errno("fsync"):  # the upload's errors name the file
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
        if handle.upload.state is UploadState.OPEN and not self._other_handles(handle):
            with contextlib.suppress(pyfuse3.FUSEError):  # logged; release's errors reach nobody
                await self._finalize(handle)
        self._settle(handle)

    def _other_handles(self, handle: Handle) -> list[Handle]:
        """The other open handles on the same upload (see _join_upload)."""
        return [h for h in self._handles.values() if h.upload is handle.upload
                and h is not handle]

    async def _held_elsewhere(self, handle: Handle) -> bool:
        """Whether a descriptor of this upload is still open: of this handle (a dup, a child)
        or of another handle joined to the same upload, each by its own opener's rule."""
        if self._mount_id is None:
            self._mount_id = openers.mount_id_of(self.mountpoint)
            if self._mount_id is None:
                return bool(self._other_handles(handle))
        for one in (handle, *self._other_handles(handle)):
            args = (self.mountpoint, self._mount_id, one.node.inode, one.opener_pid,
                    one.last_pid_at_open)
            held = openers.held_open(*args, max_scan=openers.INLINE_SCAN_MAX)
            if held is None:  # many processes to look at: not on the event loop
                held = await trio.to_thread.run_sync(openers.held_open, *args)
            if held:
                return True
        return False

    async def _finalize(self, handle: Handle) -> None:
        try:
            async with _errors_as_errno("close"):  # the upload's errors name the file
                await handle.upload.finalize()
        finally:
            self._settle(handle)
        node = handle.node
        if node.upload is None and handle.upload.state is UploadState.DONE:
            await self._fix_up_metadata(node)

    async def _fix_up_metadata(self, node: Node) -> None:
        """A chmod or utimens made after Create/Put was sent reaches the object now, at the
        last close, so the close reports whether it did."""
        try:
            async with node.lock:
                await self._store_metadata(node)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise _fail(errno_for(exc), "%s: the object is complete, but storing the mode and "
                        "mtime set while it was written failed: %s", self._path(node),
                        exc) from exc

    def _settle(self, handle: Handle) -> None:
        """Once an upload has ended, the node shows the object (or disappears if it failed).

        The object's mtime is the one it was created with, unless utimens set one since
        the last write (that one is stored by the fix-up): a multipart object's metadata is
        fixed at Create, and rewriting it only to move mtime to the last write would be a
        full server-side copy on AWS.
        """
        node, upload = handle.node, handle.upload
        if node.upload is not upload or upload.state in (UploadState.OPEN,
                                                         UploadState.FINALIZING):
            return
        node.upload = None
        if upload.state is UploadState.DONE:
            node.size = upload.size
            node.xxh3_128 = upload.xxh3_128
            node.checked_at = trio.current_time()
            node.etag = upload.etag
            node.metadata = dict(upload.metadata_sent)
            sent_mtime = _int_or_none(node.metadata.get(MTIME_META))
            if not node.mtime_explicit and sent_mtime is not None:
                node.mtime_ns = sent_mtime
        elif node.etag:
            # A failed replacement: the object it was to replace is still there, untouched.
            # Keep showing it; the next stat asks the store what it holds now.
            node.needs_head = True
        else:
            parent = self._nodes.get(node.parent)
            if parent is not None:
                self._forget_child(parent, node.name)
                self._unsure_of(parent)

    # -- extended attributes ----------------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        async with _errors_as_errno(self._named("getxattr", inode)):
            node = self._node(inode)
            if name != HASH_XATTR or node.is_dir or node.upload is not None:
                raise pyfuse3.FUSEError(errno.ENODATA)
            if not node.xxh3_128:
                tags = await _bounded(self.client.get_tags(self._key(node)))
                node.xxh3_128 = tags.get(HASH_TAG, "")
            if not node.xxh3_128:
                raise pyfuse3.FUSEError(errno.ENODATA)
            return node.xxh3_128.encode()

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        node = self._node(inode)
        return [] if node.is_dir or node.upload is not None else [HASH_XATTR]

    # -- removing and renaming --------------------------------------------------------

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> None:
        async with _errors_as_errno(self._named("unlink", parent_inode, name)):
            parent = self._node(parent_inode)
            child_name = self._child_name(parent, name)
            node = await self._child(parent, child_name)
            if node.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            self._refuse_if_no_delete(node, "unlink")
            self._refuse_if_writing(node, "unlink")
            await self.client.delete_object(self._key(node))
            self._forget_child(parent, child_name)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                    ) -> None:
        async with _errors_as_errno(self._named("rmdir", parent_inode, name)):
            parent = self._node(parent_inode)
            child_name = self._child_name(parent, name)
            node = await self._child(parent, child_name)
            if not node.is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            self._refuse_if_no_delete(node, "rmdir")
            if not await self._dir_is_empty(node):
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            await self.client.delete_object(self._key(node))
            self._forget_child(parent, child_name)
            self._children.pop(node.inode, None)

    def _refuse_if_no_delete(self, node: Node, what: str) -> None:
        """--no-delete: nothing in the bucket is removed through the mount. Every unlink,
        rmdir and rename would delete a key (a rename is a copy, then a delete of the
        source), so each is EPERM: the errno of an operation the policy forbids, as on an
        append-only (chattr +a) directory."""
        if self.uploader.config.no_delete:
            raise _fail(errno.EPERM, "%s of %s refused: the mount has --no-delete, and it "
                        "would delete %s from the bucket", what, self._path(node),
                        self._key(node))

    def _refuse_if_writing(self, node: Node, what: str) -> None:
        """EBUSY for a file still being written: its object does not exist until the last
        close, and its upload would land under the old name afterwards."""
        if node.upload is not None:
            raise _fail(errno.EBUSY, "cannot %s %s: it is still open for writing and its "
                        "object exists only once the last close completes it", what,
                        self._path(node))

    async def _dir_is_empty(self, node: Node) -> bool:
        """Nothing but the directory's own marker under its prefix, and no file of it being
        written (those are not in the bucket yet)."""
        for inode in self._children.get(node.inode, {}).values():
            child = self._nodes.get(inode)
            if child is not None and child.upload is not None:
                return False
        prefix = self._key(node)
        page = await self._first_page(prefix, max_keys=2)
        return page is None or (not page.prefixes and all(obj.key == prefix
                                                          for obj in page.objects))

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        async with _errors_as_errno(self._named("rename", parent_inode_old, name_old)):
            old_parent = self._node(parent_inode_old)
            new_parent = self._node(parent_inode_new)
            old_name = self._child_name(old_parent, name_old)
            new_name = self._child_name(new_parent, name_new)
            if flags & pyfuse3.RENAME_EXCHANGE:
                raise _fail(errno.EINVAL, "rename %s <-> %s: RENAME_EXCHANGE cannot be done on "
                            "an object store (two copies, not atomic)", old_name, new_name)
            node = await self._child(old_parent, old_name)
            target = self._known_child(new_parent, new_name)
            if target is node:
                return
            self._refuse_if_no_delete(node, "rename")
            if target is not None and flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            if self.uploader.config.no_overwrite:
                await self._refuse_existing_target(new_parent, new_name, target)
            if node.is_dir:
                await self._rename_dir(node, new_parent, new_name, target)
            else:
                await self._rename_file(node, new_parent, new_name, target)

    async def _refuse_existing_target(self, parent: Node, name: str, target: Node | None
                                      ) -> None:
        """--no-overwrite: a rename never replaces what is at its target; it behaves as
        RENAME_NOREPLACE (EEXIST). The kernel looked the target up just before, but it may
        have appeared in the bucket since, so the store is asked again (there is no
        conditional copy: a key created between this check and the copy is still
        replaced)."""
        if target is None:
            target = await self._lookup_in_store(parent, name)
        if target is not None:
            raise _fail(errno.EEXIST, "rename onto %s refused: it exists and the mount has "
                        "--no-overwrite", f"{self._path(parent)}/{name}".lstrip("/"))

    async def _rename_file(self, node: Node, new_parent: Node, new_name: str,
                           target: Node | None) -> None:
        """CopyObject to the new key with the node's current metadata, then delete the old
        key, only once the copy has succeeded: a failure leaves the file where it was."""
        self._refuse_if_writing(node, "rename")
        if target is not None:
            if target.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            self._refuse_if_writing(target, "replace")
        async with node.lock:
            if node.needs_head:
                await self._refresh(node)
            source_key = self._key(node)
            dest_key = self.bucket.key(f"{self._path(new_parent)}/{new_name}".lstrip("/"))
            await self._copy(node, source_key, dest_key,
                             {**node.metadata, **_chute_metadata(node)})
            old_path = self._path(node)
            old_parent = self._node(node.parent)
            self._move(node, new_parent, new_name)
            try:
                await self.client.delete_object(source_key)
            except Exception as exc:
                self._unsure_of(old_parent)
                raise _fail(errno_for(exc), "rename %s -> %s: copied, but deleting the old "
                            "object failed (%s); both names now exist", old_path,
                            self._path(node), exc) from exc

    async def _rename_dir(self, node: Node, new_parent: Node, new_name: str,
                          target: Node | None) -> None:
        """An empty directory is only its marker: write the new marker, delete the old.

        A non-empty one is refused with EOPNOTSUPP. Renaming it would be a server-side copy
        and delete of every object below it: slow, not atomic, and a failure halfway leaves
        the tree split between both names. Not EXDEV: that makes ``mv`` fall back to copying
        through the mount, which reads, and this mount is write-only. Not ENOTEMPTY: that
        would blame the target.
        """
        if target is not None:
            if not target.is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            if not await self._dir_is_empty(target):
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        if not await self._dir_is_empty(node):
            raise _fail(errno.EOPNOTSUPP, "cannot rename directory %s: it is not empty, and "
                        "renaming it would copy every object below it one by one",
                        self._path(node))
        old_key = self._key(node)
        dest_key = self.bucket.key(f"{self._path(new_parent)}/{new_name}/".lstrip("/"))
        await self.client.put_object(dest_key, b"", _meta_headers(_chute_metadata(node)))
        old_parent = self._node(node.parent)
        self._move(node, new_parent, new_name)
        try:
            await self.client.delete_object(old_key)
        except BaseException:
            self._unsure_of(old_parent)
            raise

    def _move(self, node: Node, new_parent: Node, new_name: str) -> None:
        """The node takes its new name; a node it replaces is dropped."""
        old_children = self._children.get(node.parent, {})
        if old_children.get(node.name) == node.inode:
            del old_children[node.name]
        replaced = self._children.get(new_parent.inode, {}).get(new_name)
        if replaced is not None:
            self._forget_child(new_parent, new_name)
            self._children.pop(replaced, None)
        node.parent = new_parent.inode
        node.name = new_name
        self._children.setdefault(new_parent.inode, {})[new_name] = node.inode
        node.checked_at = trio.current_time()

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


def _file_mode(node: Node) -> int:
    return DEFAULT_FILE_MODE if node.mode is None else node.mode


def _chute_metadata(node: Node) -> dict[str, str]:
    """The user metadata chute keeps on an object: mode (octal) and mtime (ns)."""
    mode = _file_mode(node) if not node.is_dir else (
        DEFAULT_DIR_MODE if node.mode is None else node.mode)
    return {MODE_META: f"{mode:04o}", MTIME_META: str(node.mtime_ns)}


def _meta_headers(metadata: dict[str, str]) -> dict[str, str]:
    return {f"x-amz-meta-{k}": v for k, v in metadata.items()}


def _apply_head(node: Node, info: ObjectInfo, now: float) -> None:
    """Attributes from a HEAD: size, and mode/mtime from chute's metadata, falling back to
    0644 and Last-Modified for objects written by something else."""
    mode = _int_or_none(info.metadata.get(MODE_META), base=8)
    mtime_ns = _int_or_none(info.metadata.get(MTIME_META))
    node.size = info.size
    node.etag = info.etag
    node.metadata = dict(info.metadata)
    node.mode = None if mode is None else stat.S_IMODE(mode)
    node.mtime_ns = _http_date_ns(info.last_modified) if mtime_ns is None else mtime_ns
    node.needs_head = False
    node.checked_at = now


def _apply_mode_mtime(node: Node, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields) -> None:
    if fields.update_mode:
        node.mode = stat.S_IMODE(attr.st_mode)
    if fields.update_mtime:
        node.mtime_ns = attr.st_mtime_ns
        node.mtime_explicit = True


def _int_or_none(value: str | None, base: int = 10) -> int | None:
    try:
        return int(value, base) if value is not None else None
    except ValueError:
        return None


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
