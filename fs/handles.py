"""Open files: the handle table, and the decision of which close finishes a file.

A handle is one FUSE open of a file being written: its upload, and who opened it (for the
last-close check of openers.py). Opening with O_TRUNC (or creating) starts a new upload;
another open of a file being written, without O_TRUNC (``truncate -s`` while a writer has it
open, a second ``exec 3<>``), joins the same upload. An open for writing of a finished,
non-empty object without O_TRUNC (``>>``, O_APPEND, ``rsync --inplace``, qemu-img's O_RDWR
reopen) starts an upload over it
(chute.uploader.overlay: the file is the old object overlaid with the writes; untouched parts
are copied server-side or fetched at close, the old object stays until the close replaces it):
this module only decides that and passes the object's key, size and ETag, asked of the store
at the open. Writes land anywhere; a write into a slice already sent is the upload's late
patch (EINVAL unless its upload was made at a temporary key). Such an open closed without a
write or resize leaves the object as it was. ``truncate``/``ftruncate`` (:meth:`resize`) of
a file being written grows it by virtual zeros or cuts it (EOPNOTSUPP for a cut into bytes
already sent, outside temp-key mode).

Opens for reading of finished objects are reads.py's (the FUSE adapter sends them there);
one that still reaches here (O_RDONLY with O_TRUNC) fails with EACCES.

When does a file's upload finish? On the flush of the last close of all the opens that write
it (see openers.py), so ``close()`` returns only when the object is complete in the bucket
and returns EIO if it is not. ``release()`` (asynchronous: its errors reach nobody) finishes
whatever no flush did, e.g. a file whose last descriptor went away with a killed process.

Once an upload has ended, the node shows the object (or disappears if it failed and nothing
was there before), and a chmod/utimens made while it was written is fixed up on the object
(objects.py) before the close returns.

Directory handles (opendir) hold the listing taken at opendir, read by readdir.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from dataclasses import dataclass, field

import trio

from chute.uploader.errors import BackwardWrite, errno_for
from chute.uploader.file_upload import FileUpload, UploadState
from chute.uploader.overlay import Base
from chute.uploader.uploader import Uploader

from . import metadata, mountinfo, openers, writer_exit
from .errnos import errors_as_errno
from .namespace import Namespace, Node
from .objects import ObjectOps
from .refused import Refused


@dataclass(eq=False)
class Handle:
    node: Node
    upload: FileUpload
    opener_pid: int
    last_pid_at_open: int
    """See openers.holder: only processes created after the open can share it."""
    holders: set[int] = field(default_factory=set)
    """Processes other than the opener seen holding this open's descriptor (a forked child,
    a shell's ``exec 3>``): one of them may make the last close, by dying (writer_exit.py)."""
    append: bool = False
    """Opened O_APPEND: every write lands at the file's end, whatever offset the kernel sent
    (its idea of the size may be older than the object the open found)."""


class HandleTable:
    """File and directory handles of one mount (see the module)."""

    def __init__(self, namespace: Namespace, uploader: Uploader, objects: ObjectOps,
                 mountpoint: str) -> None:
        """``mountpoint`` must be resolved already (see openers.py)."""
        self.ns = namespace
        self.uploader = uploader
        self.objects = objects
        self.mountpoint = mountpoint
        self._mount_id: int | None = None
        self._handles: dict[int, Handle] = {}
        self._dirs: dict[int, list[tuple[str, Node]]] = {}
        self._next_fh = 1

    def __len__(self) -> int:
        return len(self._handles)

    def get(self, fh: int) -> Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise Refused(errno.EBADF)
        return handle

    # -- opening --------------------------------------------------------------------

    def create(self, parent: Node, name: str, mode: int, flags: int, pid: int
               ) -> tuple[int, Node]:
        """O_CREAT of a name the kernel found free (or that a race filled): a new upload
        under a new or reused node, attached. The caller counts the kernel's lookup."""
        known = self.ns.child(parent, name)
        if known is not None and known.upload is None:
            self.objects.refuse_if_no_overwrite(known)
        node = self.ns.attach(self.ns.record(parent, name, False, size=0,
                                             mode=stat.S_IMODE(mode), mtime_ns=time.time_ns()))
        try:
            return self._start_upload(node, pid, append=bool(flags & os.O_APPEND),
                                      rdwr=_rdwr(flags)), node
        except BaseException:
            self.ns.prune(node)
            raise

    async def open(self, node: Node, flags: int, pid: int) -> int:
        """An open of an existing node: join its upload, or start one replacing or
        continuing it."""
        if node.is_dir:
            raise Refused(errno.EISDIR)
        path = self.ns.path(node)
        if flags & os.O_ACCMODE == os.O_RDONLY:
            raise Refused(errno.EACCES, "%r: an open for reading cannot truncate", path)
        upload = node.upload
        if upload is not None and upload.state is UploadState.OPEN and not flags & os.O_TRUNC:
            return self._new_handle(node, pid, bool(flags & os.O_APPEND))
        if upload is None:
            self.objects.refuse_if_no_overwrite(node)
        elif not flags & os.O_TRUNC:
            raise Refused(errno.EBUSY, "%r is being finished by its last close", path)
        append, rdwr = bool(flags & os.O_APPEND), _rdwr(flags)
        if flags & os.O_TRUNC or upload is not None or node.size == 0:
            return self._start_upload(node, pid, append=append, rdwr=rdwr)
        await self.objects.lookups.refresh(node)  # the ETag and size the copy is pinned to
        if node.size == 0 or node.upload is not None:
            return self._start_upload(node, pid, append=append, rdwr=rdwr)
        return self._start_upload(node, pid, Base(self.ns.key(node), node.size, node.etag),
                                  append=append, rdwr=rdwr)

    def _start_upload(self, node: Node, pid: int, base: Base | None = None, *,
                      append: bool = False, rdwr: bool = False) -> int:
        if node.upload is not None and node.upload.state is UploadState.OPEN:
            raise Refused(errno.EBUSY, "%r is already open for writing; chute takes one "
                          "writer per file", self.ns.path(node))
        if base is None:  # an object changed in place keeps its mtime until it is written
            node.mtime_ns = time.time_ns()
            node.mtime_explicit = False
        node.needs_head = False
        node.upload = self.uploader.open_file(
            self.ns.key(node), self.ns.path(node), metadata.chute_metadata(node),
            no_clobber=self.objects.policy.no_overwrite, base=base, opened_rdwr=rdwr)
        node.local = True
        return self._new_handle(node, pid, append)

    def _new_handle(self, node: Node, pid: int, append: bool = False) -> int:
        assert node.upload is not None
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = Handle(node, node.upload, pid, openers.last_pid(), append=append)
        node.opens += 1
        return fh

    # -- writing --------------------------------------------------------------------

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self.get(fh)
        if handle.append:
            offset = handle.upload.size
        written = await handle.upload.write(offset, data)
        node = handle.node
        node.mtime_ns = time.time_ns()
        node.mtime_explicit = False
        metadata.sync_upload_metadata(node)
        return written

    async def fsync(self, fh: int) -> None:
        await self.get(fh).upload.wait_acknowledged()

    async def resize(self, node: Node, size: int) -> None:
        """truncate of a file open for writing: grown (virtual zeros) or cut. A cut the
        upload cannot take (into bytes already sent) is EOPNOTSUPP, the upload unharmed."""
        upload = node.upload
        current = upload.size if upload is not None else node.size
        if size == current:
            return
        if upload is not None and upload.state is UploadState.OPEN:
            try:
                await upload.truncate(size)
            except BackwardWrite:
                raise Refused(errno.EOPNOTSUPP, "cannot cut %r from %d to %d bytes: that "
                              "part of it was already sent to the store (see the log)",
                              self.ns.path(node), current, size) from None
            return
        raise Refused(errno.EOPNOTSUPP, "cannot change the size of %r from %d to %d: chute "
                      "changes the size of a file open for writing only (open it, then "
                      "ftruncate)", self.ns.path(node), current, size)

    # -- closing --------------------------------------------------------------------

    async def flush(self, fh: int) -> None:
        """A close(): finishes the file if it is the last close (see the module)."""
        handle = self.get(fh)
        upload = handle.upload
        if upload.state is not UploadState.OPEN:
            if upload.error is not None and upload.state is UploadState.FAILED:
                raise Refused(errno_for(upload.error))
            return
        if await self._held_elsewhere(handle):
            return
        await self._abort_if_writer_died(handle)
        await self._finalize(handle)

    async def release(self, fh: int) -> None:
        """The last descriptor of this open went away: finish what no flush did."""
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        handle.node.opens -= 1
        try:
            if handle.upload.state is UploadState.OPEN and not self._other_handles(handle):
                with contextlib.suppress(Exception):  # logged; release's errors reach nobody
                    async with errors_as_errno("close"):
                        await self._abort_if_writer_died(handle)
                        await self._finalize(handle)
        finally:
            self._settle(handle)
            self.ns.release(handle.node)

    def _other_handles(self, handle: Handle) -> list[Handle]:
        """The other open handles on the same upload."""
        return [h for h in self._handles.values() if h.upload is handle.upload
                and h is not handle]

    async def _held_elsewhere(self, handle: Handle) -> bool:
        """Whether a descriptor of this upload is still open: of this handle (a dup, a child)
        or of another handle joined to the same upload, each by its own opener's rule."""
        if self._mount_id is None:
            entry = mountinfo.find(self.mountpoint)
            if entry is None:
                return bool(self._other_handles(handle))
            self._mount_id = entry.mount_id
        for one in (handle, *self._other_handles(handle)):
            args = (self.mountpoint, self._mount_id, one.node.inode, one.opener_pid,
                    one.last_pid_at_open)
            pid = openers.holder(*args, max_scan=openers.INLINE_SCAN_MAX)
            if pid == openers.NOT_SCANNED:  # many processes to look at: not on the event loop
                pid = await trio.to_thread.run_sync(openers.holder, *args)
            if pid is not None:
                if pid != one.opener_pid:
                    one.holders.add(pid)
                return True
        return False

    async def _abort_if_writer_died(self, handle: Handle) -> None:
        """The last close of a file came from a process dying with a failure (killed by a
        signal, or exiting non-zero with the file open): drop the upload, so that no object
        appears and an object it was to replace stays as it was (see writer_exit.py). With
        ``--commit-partial`` the file is finished like any other. Looked for among the
        openers of every handle of the upload and the holders they were seen with."""
        upload = handle.upload
        if self.objects.policy.commit_partial or upload.unlinked_while_open:
            return  # (an unlinked file's upload is already dropped, and said so)
        joined = (handle, *self._other_handles(handle))
        pids = {pid for one in joined for pid in (one.opener_pid, *one.holders)}
        end = writer_exit.failed_closer(pids)
        if end is None:
            return
        why = f"pid {end.pid} ({end.command!r}) {end.describe()}"
        await upload.abort(why, writer_died=True)
        self._settle(handle)
        raise Refused(errno.EIO)

    async def _finalize(self, handle: Handle) -> None:
        try:
            await handle.upload.finalize()
        finally:
            self._settle(handle)
        node = handle.node
        if node.upload is None and handle.upload.state is UploadState.DONE and (
                not handle.upload.unchanged or _chmod_or_utimens_made(node)):
            await self.objects.fix_up_metadata(node)

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
        if node.gone and upload.state is not UploadState.DONE:
            pass  # unlinked while open: its name (now maybe another file's) is not its own
        elif upload.unchanged:
            pass  # an existing object opened for writing and closed unwritten: as it was
        elif upload.state is UploadState.DONE:
            node.size = upload.size
            node.xxh3_128 = upload.xxh3_128
            node.checked_at = trio.current_time()
            node.etag = upload.etag
            node.metadata = dict(upload.metadata_sent)
            sent = metadata.sent_mtime(node.metadata)
            if not node.mtime_explicit and sent is not None:
                node.mtime_ns = sent
        elif node.etag:
            # A failed replacement: the object it was to replace is still there, untouched.
            # Keep showing it; the next stat asks the store what it holds now.
            node.needs_head = True
        else:
            parent = self.ns.get(node.parent)
            if parent is not None:
                self.ns.remove(parent, node.name)
                self.ns.unsure_of(parent)
        self.ns.release(node)

    async def abort_all(self, why: str) -> None:
        await self.uploader.abort_open_uploads(why)

    # -- directories ----------------------------------------------------------------

    def open_dir(self, entries: dict[str, Node]) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = sorted(entries.items())
        return fh

    def dir_entries(self, fh: int) -> list[tuple[str, Node]]:
        return self._dirs.get(fh, [])

    def release_dir(self, fh: int) -> None:
        self._dirs.pop(fh, None)


def _rdwr(flags: int) -> bool:
    """Opened O_RDWR (``--patch-back auto`` makes such a file's upload at a temporary key)."""
    return flags & os.O_ACCMODE == os.O_RDWR


def _chmod_or_utimens_made(node: Node) -> bool:
    """Whether a chmod or utimens was made on an object opened for writing and closed
    unwritten (which otherwise stays exactly as it was)."""
    mode = metadata.chute_metadata(node)[metadata.MODE_META]
    return node.mtime_explicit or (node.mode is not None
                                   and node.metadata.get(metadata.MODE_META) != mode)
