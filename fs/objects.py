"""Changing what the bucket holds, other than by writing a file: metadata, names, removals.

- chmod / utimens of a finished object is a CopyObject onto itself with new metadata (the
  one way S3 changes metadata), guarded by the ETag chute knows (If-Match): if the object
  changed behind our back nothing is copied (ESTALE). One made while the file is being
  written is recorded for its Create/Put, or fixed up the same way after close
  (:meth:`ObjectOps.fix_up_metadata`). A directory keeps them in memory (a marker cannot be
  copied onto itself on SeaweedFS).
- rename of a file is a server-side copy, then a delete of the source only once the copy
  succeeded; of an empty directory a new marker, then the old one deleted; of a non-empty
  one a bounded server-side move of every object below it (dir_moves.py). unlink is a
  DeleteObject, rmdir the deletion of an empty directory's marker, mkdir a ``dir/``
  marker. A file still being written cannot be renamed (EBUSY): its object does not exist
  yet; its unlink removes the name at once and drops its upload (no object at the last
  close; :meth:`ObjectOps.unlink`).
- The mount policies (policy.py) are decided here, before any request.

Metadata copies and renames of one object are serialized (one lock per node, held only
while something waits on it).
"""

from __future__ import annotations

import contextlib
import errno
import stat
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import trio

from chute.uploader.copy import MAX_COPY_BYTES, copy_in_parts
from chute.uploader.errors import StoreError, errno_for
from chute.uploader.file_upload import UploadState
from chute.uploader.logsafe import quoted

from . import dir_moves, metadata
from .lookups import Lookups
from .namespace import Namespace, Node
from .policy import MountPolicy
from .refused import Refused

if TYPE_CHECKING:
    from chute.uploader.s3 import S3Client


class ObjectOps:
    """Server-side changes for one mount (see the module)."""

    def __init__(self, namespace: Namespace, lookups: Lookups, client: S3Client,
                 policy: MountPolicy) -> None:
        self.ns = namespace
        self.lookups = lookups
        self.client = client
        self.policy = policy
        self._locks: dict[Node, trio.Lock] = {}

    @contextlib.asynccontextmanager
    async def locked(self, node: Node) -> AsyncIterator[None]:
        """Serialize this object's metadata copies and renames."""
        lock = self._locks.setdefault(node, trio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(node, None)

    # -- policies -------------------------------------------------------------------

    def refuse_if_no_overwrite(self, node: Node) -> None:
        """--no-overwrite: an object already in the bucket is never opened for writing
        (O_TRUNC or not: either would replace it). A name that appears in the bucket while
        its file is written is caught by the upload itself (If-None-Match), at close."""
        if self.policy.no_overwrite:
            raise Refused(errno.EEXIST, "%r exists and the mount has --no-overwrite: it is "
                          "not opened for writing", self.ns.path(node))

    def refuse_if_no_delete(self, node: Node, what: str) -> None:
        """--no-delete: every unlink, rmdir and rename would delete a key (a rename is a
        copy, then a delete of the source), so each is EPERM."""
        if self.policy.no_delete:
            raise Refused(errno.EPERM, "%s of %r refused: the mount has --no-delete, and it "
                          "would delete %r from the bucket", what, self.ns.path(node),
                          self.ns.key(node))

    def refuse_if_writing(self, node: Node, what: str) -> None:
        """EBUSY for a file still being written: its object does not exist until the last
        close, and its upload would land under the old name afterwards."""
        if node.upload is not None:
            raise Refused(errno.EBUSY, "cannot %s %r: it is still open for writing and its "
                          "object exists only once the last close completes it", what,
                          self.ns.path(node))

    # -- metadata -------------------------------------------------------------------

    async def change_mode_mtime(self, node: Node, mode: int | None, mtime_ns: int | None
                                ) -> None:
        """chmod and/or utimens (see the module)."""
        if node.is_dir or node.upload is not None:
            metadata.apply_mode_mtime(node, mode, mtime_ns)
            metadata.sync_upload_metadata(node)
            return
        async with self.locked(node):
            if node.needs_head:
                await self.lookups.refresh(node)
            metadata.apply_mode_mtime(node, mode, mtime_ns)
            await self._store_metadata(node)

    async def fix_up_metadata(self, node: Node) -> None:
        """A chmod or utimens made after Create/Put was sent reaches the object now, at the
        last close, so the close reports whether it did."""
        if self._wanted_metadata(node) is None:
            return  # nothing changed since Create/Put (each small file's close): no lock taken
        try:
            async with self.locked(node):
                await self._store_metadata(node)
        except Refused:
            raise
        except Exception as exc:
            raise Refused(errno_for(exc), "%r: the object is complete, but storing the mode "
                          "and mtime set while it was written failed: %s", self.ns.path(node),
                          exc) from exc

    async def _store_metadata(self, node: Node) -> None:
        """Make the object's chute metadata match the node (a self-copy, if it differs).
        Caller holds the node's lock. If the copy fails the node is marked for a HEAD, so
        the next stat shows what the bucket really holds."""
        wanted = self._wanted_metadata(node)
        if wanted is None:
            return
        key = self.ns.key(node)
        try:
            await self._copy(node, key, key, wanted)
        except BaseException:
            node.needs_head = True
            raise

    @staticmethod
    def _wanted_metadata(node: Node) -> dict[str, str] | None:
        """The user metadata the object should carry, or None if it already does."""
        wanted = {**node.metadata, **metadata.chute_metadata(node)}
        return None if wanted == node.metadata else wanted

    async def _copy(self, node: Node, source_key: str, dest_key: str,
                    wanted: dict[str, str]) -> None:
        """Server-side copy of ``node``'s object carrying ``wanted`` metadata; the node
        learns the new ETag and metadata. Guarded by the ETag we know (ESTALE if it
        changed)."""
        etag = node.etag or None
        try:
            if node.size > MAX_COPY_BYTES:
                node.etag = await copy_in_parts(self.client, source_key, dest_key, node.size,
                                                metadata.meta_headers(wanted),
                                                if_match_etag=etag)
            else:
                keep = wanted == node.metadata and source_key != dest_key
                node.etag = await self.client.copy_object(
                    source_key, dest_key, None if keep else metadata.meta_headers(wanted),
                    if_match_etag=etag,
                )
        except StoreError as exc:
            if exc.status != 412 and exc.code != "PreconditionFailed":
                raise
            node.needs_head = True
            raise Refused(errno.ESTALE, "%r changed in the bucket since chute last looked at "
                          "it (ETag was %s); nothing was copied, stat it and retry",
                          self.ns.path(node), etag) from exc
        node.metadata = dict(wanted)

    # -- directories ----------------------------------------------------------------

    async def mkdir(self, parent: Node, name: str, mode: int) -> Node:
        """A new empty directory: its marker is written, or there is no directory. The node
        is attached (the caller counts the kernel's lookup)."""
        existing, free_since = await self.lookups.find(parent, name)
        if existing is not None:
            raise Refused(errno.EEXIST)
        node = self.ns.attach(self.ns.record(parent, name, True, local=True,
                                             mode=stat.S_IMODE(mode), mtime_ns=time.time_ns(),
                                             checked_at=trio.current_time()))
        # Nothing was under its prefix then: the new directory starts out fully known.
        self.ns.created_empty(node, free_since, trio.current_time())
        try:
            await self.client.put_object(self.ns.key(node), b"", metadata.meta_headers(
                metadata.chute_metadata(node)))
        except BaseException:
            self.ns.remove(parent, name)  # no marker, no directory
            raise
        node.checked_at = trio.current_time()
        return node

    async def rmdir(self, parent: Node, name: str) -> None:
        node = await self.lookups.child(parent, name)
        if not node.is_dir:
            raise Refused(errno.ENOTDIR)
        self.refuse_if_no_delete(node, "rmdir")
        if not await self.lookups.dir_is_empty(node):
            raise Refused(errno.ENOTEMPTY)
        await self.client.delete_object(self.ns.key(node))
        self.ns.remove(parent, name)
        file_key = self.ns.child_key(parent, name)
        if await self.client.head_object(file_key) is not None:
            # A file of the same name was hidden behind the directory (namespace.py): the
            # name is not free, so rmdir must not report success (rm -rf would exit 0).
            self.ns.unsure_of(parent)
            raise Refused(errno.ENOTEMPTY, "rmdir %s: the directory is removed, but the "
                          "bucket also holds a file of that name (key %s), which it hid; "
                          "the file shows once the kernel asks again", quoted(self.ns.child_path(
                              parent, name)), quoted(file_key))

    # -- files ----------------------------------------------------------------------

    async def unlink(self, parent: Node, name: str) -> None:
        node = await self.lookups.child(parent, name)
        if node.is_dir:
            raise Refused(errno.EISDIR)
        self.refuse_if_no_delete(node, "unlink")
        if node.upload is not None and node.upload.state is UploadState.OPEN:
            await self._unlink_open(parent, name, node)
            return
        self.refuse_if_writing(node, "unlink")
        await self.client.delete_object(self.ns.key(node))
        self.ns.remove(parent, name)

    async def _unlink_open(self, parent: Node, name: str, node: Node) -> None:
        """unlink of a file still being written (qemu-img, mksquashfs removing their failed
        output): the name goes now, and the upload is dropped at once, so the last close
        makes no object (writes through open descriptors go nowhere). An object the upload
        was to replace or continue is what the name showed: it is deleted now, as any
        unlink deletes it. A new file of the same name is a new node and upload."""
        upload = node.upload
        if node.etag:
            await self.client.delete_object(self.ns.key(node))
            node.etag = ""
        self.ns.remove(parent, name)
        await upload.unlinked()

    async def rename(self, old_parent: Node, old_name: str, new_parent: Node, new_name: str,
                     *, noreplace: bool) -> None:
        node = await self.lookups.child(old_parent, old_name)
        self.ns.check_key_fits(new_parent, new_name, directory=node.is_dir)
        target = self.ns.child(new_parent, new_name)
        if target is node:
            return
        self.refuse_if_no_delete(node, "rename")
        if target is not None and noreplace:
            raise Refused(errno.EEXIST)
        if self.policy.no_overwrite:
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
            target = await self.lookups.in_store(parent, name)
        if target is not None:
            raise Refused(errno.EEXIST, "rename onto %r refused: it exists and the mount has "
                          "--no-overwrite", self.ns.child_path(parent, name))

    async def _rename_file(self, node: Node, new_parent: Node, new_name: str,
                           target: Node | None) -> None:
        """CopyObject to the new key with the node's current metadata, then delete the old
        key, only once the copy has succeeded: a failure leaves the file where it was."""
        self.refuse_if_writing(node, "rename")
        if target is not None:
            if target.is_dir:
                raise Refused(errno.EISDIR)
            self.refuse_if_writing(target, "replace")
        async with self.locked(node):
            if node.needs_head:
                await self.lookups.refresh(node)
            source_key = self.ns.key(node)
            dest_key = self.ns.child_key(new_parent, new_name)
            await self._copy(node, source_key, dest_key,
                             {**node.metadata, **metadata.chute_metadata(node)})
            old_path = self.ns.path(node)
            old_parent = self.ns.node(node.parent)
            self.ns.move(node, new_parent, new_name, trio.current_time())
            try:
                await self.client.delete_object(source_key)
            except Exception as exc:
                self.ns.unsure_of(old_parent)
                raise Refused(errno_for(exc), "rename %r -> %r: copied, but deleting the old "
                              "object failed (%s); both names now exist", old_path,
                              self.ns.path(node), exc) from exc

    async def _rename_dir(self, node: Node, new_parent: Node, new_name: str,
                          target: Node | None) -> None:
        """An empty directory is only its marker: write the new marker, delete the old.

        A non-empty one is moved object by object, within the mount's limits (dir_moves.py:
        EINVAL into itself, EBUSY while a file below is written, EOPNOTSUPP beyond
        ``--rename-dir-max-*``; not atomic, crash-safe by a marker). rename(2)'s rules for
        the target come first: a file is ENOTDIR, a non-empty directory ENOTEMPTY (borg's
        lock relies on that refusal), an empty one is replaced.
        """
        dir_moves.refuse_into_itself(self.ns, node, new_parent)
        if target is None:  # the kernel looked it up, but a tree must never merge into one
            target, _ = await self.lookups.find(new_parent, new_name)
        if target is not None:
            if not target.is_dir:
                raise Refused(errno.ENOTDIR)
            if not await self.lookups.dir_is_empty(target):
                raise Refused(errno.ENOTEMPTY)
        if not await self.lookups.dir_is_empty(node):
            await dir_moves.move_directory(self.ns, self.client, self.policy, node,
                                           new_parent, new_name, target)
            return
        old_key = self.ns.key(node)
        dest_key = self.ns.child_key(new_parent, new_name, directory=True)
        await self.client.put_object(dest_key, b"", metadata.meta_headers(
            metadata.chute_metadata(node)))
        old_parent = self.ns.node(node.parent)
        self.ns.move(node, new_parent, new_name, trio.current_time())
        try:
            await self.client.delete_object(old_key)
        except BaseException:
            self.ns.unsure_of(old_parent)
            raise
