"""Symbolic links: one small object each, in s3fs-fuse's convention.

A link is an object under the link's own name whose body is the target (1 to
MAX_LINK_TARGET bytes) and whose metadata says it is a link: ``x-amz-meta-chute-mode:
120777`` (S_IFLNK | 0777, chute's mode key) and s3fs-fuse's keys beside it,
``x-amz-meta-mode: 41471`` (the same st_mode in decimal) and ``x-amz-meta-mtime`` (seconds);
chute's ``chute-mtime-ns`` keeps the link's own mtime, which ``touch -h`` and ``rsync -a``
set (utimensat with AT_SYMLINK_NOFOLLOW: the same metadata copy as a file's).

Why s3fs-fuse's convention and not rclone's (``name.rclonelink`` objects, only with
``--links``): the key is the link's own name, so a listing, another mount (s3fs-fuse, chute)
or ``aws s3 ls`` sees the link under the name it has, and a name that already ends in
``.rclonelink`` needs no escaping. s3fs-fuse shows chute's links as links; chute shows
s3fs-fuse's (its mode key has S_IFLNK) as links too. rclone without ``--links`` shows either
convention's link as a small file holding the target.

Invariants:

- The mount never follows a link: the kernel resolves a path through a link by asking
  readlink, so dangling links and links to directories are just objects.
- A target is never longer than MAX_LINK_TARGET bytes: a longer one is refused at create
  (ENAMETOOLONG), and a longer object is a file whatever its metadata says (metadata.py), so
  readlink reads at most that many bytes.
- What the kernel was told an inode is, it stays: a file found to be a link (or the other
  way round) gets a new node (namespace.record, lookups.refresh). A listing carries no
  metadata, so readdir shows a link known only from a listing as a file until a lookup of
  its name HEADs it (``lstat`` does; ``find -type l`` trusts readdir's type).
- A link has no xattrs (no xxh3 tag: its body is not file data).
- The target is read with the ETag the node knows (If-Match): a link replaced meanwhile is
  ESTALE, never another object's body. readlink works with reads off (``--allow-read``):
  a target is a name, not file data.

Hard links stay EOPNOTSUPP (operations.py): an object store has no second name for an
object.
"""

from __future__ import annotations

import errno
import time
from typing import TYPE_CHECKING

import trio

from chute.uploader.errors import StoreError

from . import metadata
from .lookups import Lookups, bounded
from .namespace import Namespace, Node
from .refused import Refused

if TYPE_CHECKING:
    from chute.uploader.s3 import S3Client


class Symlinks:
    """Creating links and reading their targets, for one mount (see the module)."""

    def __init__(self, namespace: Namespace, lookups: Lookups, client: S3Client) -> None:
        self.ns = namespace
        self.lookups = lookups
        self.client = client

    async def create(self, parent: Node, name: str, target: bytes) -> Node:
        """symlink(2): one PutObject of the target under ``name``. The node returned is not
        attached yet (the caller counts the kernel's lookup, which attaches it)."""
        if len(target) > metadata.MAX_LINK_TARGET:
            raise Refused(errno.ENAMETOOLONG, "symlink %r: its target is %d bytes, more than "
                          "the %d a link may hold", self.ns.child_path(parent, name),
                          len(target), metadata.MAX_LINK_TARGET)
        if not target or b"\0" in target:
            raise Refused(errno.ENOENT if not target else errno.EINVAL)
        existing, _ = await self.lookups.find(parent, name)
        if existing is not None:
            raise Refused(errno.EEXIST)
        node = Node(0, parent.inode, name, False, is_link=True, link_target=target,
                    size=len(target), mtime_ns=time.time_ns(), local=True)
        headers = metadata.meta_headers(metadata.chute_metadata(node))
        node.etag = await self.client.put_object(self.ns.child_key(parent, name), target,
                                                 headers)
        node.metadata = metadata.chute_metadata(node)
        node.checked_at = trio.current_time()
        return node

    async def target(self, node: Node) -> bytes:
        """readlink(2): the cached target, else the object's body (at most
        MAX_LINK_TARGET bytes, If-Match the ETag known)."""
        if not node.is_link:
            raise Refused(errno.EINVAL)
        if node.link_target is not None:
            return node.link_target
        if node.needs_head:
            await self.lookups.refresh(node)
        etag = node.etag or None
        try:
            body = await bounded(self.client.get_range(self.ns.key(node), 0, node.size - 1,
                                                       if_match=etag))
        except StoreError as exc:
            if exc.status != 412 and exc.code != "PreconditionFailed":
                raise
            node.needs_head = True
            raise Refused(errno.ESTALE, "readlink %r: the link changed in the bucket since "
                          "chute looked at it; look it up again", self.ns.path(node)) from exc
        if b"\0" in body:
            raise Refused(errno.EIO, "readlink %r: the object's body holds a NUL byte, which "
                          "no link target can", self.ns.path(node))
        node.link_target = body
        return body
