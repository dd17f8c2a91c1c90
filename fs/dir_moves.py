"""rename(2) of a non-empty directory: a bounded server-side move of every object below it.

The checks rename(2) makes of the target (ENOTDIR, ENOTEMPTY, EEXIST) are objects.py's; the
rest is here, in this order, before anything is copied:

- a directory into its own subtree: EINVAL (the kernel checks it too);
- a file below it being written (its object does not exist yet, and its upload would land
  under the old name): EBUSY; checked again once the copies have landed (a file opened
  meanwhile rolls the move back, EBUSY). One created and closed entirely while the copies
  run lands under the old name;
- more than ``--rename-dir-max-objects`` objects or ``--rename-dir-max-bytes`` bytes below
  it: EOPNOTSUPP naming the option. The rename blocks its caller, and the kernel holds both
  parent directories locked, until every copy has landed, so the move is bounded;
- a destination key over S3's limit: ENAMETOOLONG.

Then uploader/moves.py moves the objects (a marker first, copies, sources deleted; a failure
while copying rolls back; a crash is finished or rolled back by the next mount). It is not
atomic: while it runs, other S3 clients see objects under both names. This mount shows the
move once the copies have landed, before the sources are deleted (so a file created from
then on gets its new name): the node moves with its attached subtree (paths are computed
from parents), attached files learn their new ETags, and the listing snapshots of both
parents are dropped.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio

from chute.uploader import moves
from chute.uploader.errors import StoreError, errno_for
from chute.uploader.logsafe import quoted
from chute.uploader.sizes import format_size

from .names import MAX_KEY_BYTES
from .namespace import ROOT_INODE, Namespace, Node
from .policy import MountPolicy
from .refused import Refused

if TYPE_CHECKING:
    from chute.uploader.s3 import S3Client


def subtree(ns: Namespace, node: Node) -> Iterator[tuple[str, Node]]:
    """Every attached node below ``node``, with its path relative to it."""
    for name, child in ns.children(node):
        yield name, child
        if child.is_dir:
            for rel, below in subtree(ns, child):
                yield f"{name}/{rel}", below


def refuse_into_itself(ns: Namespace, node: Node, new_parent: Node) -> None:
    """EINVAL if ``new_parent`` is ``node`` or below it."""
    current: Node | None = new_parent
    while current is not None:
        if current is node:
            raise Refused(errno.EINVAL, "cannot move directory %s into itself (%s)",
                          quoted(ns.path(node)), quoted(ns.path(new_parent) or "/"))
        if current.inode == ROOT_INODE:
            return
        current = ns.get(current.parent)


async def move_directory(ns: Namespace, client: S3Client, policy: MountPolicy, node: Node,
                         new_parent: Node, new_name: str, target: Node | None) -> None:
    """Move the non-empty directory ``node`` to ``new_name`` in ``new_parent`` (``target``:
    the empty directory it replaces, if any); see the module."""
    path = ns.path(node)

    def refuse_if_writing() -> None:
        for rel, below in subtree(ns, node):
            if below.upload is not None:
                raise Refused(errno.EBUSY, "cannot rename directory %s: %s below it is "
                              "open for writing", quoted(path), quoted(rel))

    refuse_if_writing()
    source = ns.key(node)
    dest = ns.child_key(new_parent, new_name, directory=True)
    entries = await _listed(client, source, path, policy)
    longest = max(len(e.rel.encode()) for e in entries)
    if len(dest.encode()) + longest > MAX_KEY_BYTES:
        raise Refused(errno.ENAMETOOLONG, "cannot rename directory %s: a key below it would "
                      "exceed S3's %d bytes under the new name", quoted(path), MAX_KEY_BYTES)
    try:  # a file created below while copying: refused (EBUSY), rolled back
        await moves.move(client, source, dest, entries, dest_existed=target is not None,
                         check=refuse_if_writing,
                         moved=lambda etags: _moved(ns, node, new_parent, new_name, etags))
    except moves.SourcesLeft as exc:
        raise Refused(errno_for(exc.cause), "rename of directory %s -> %s: every object was "
                      "copied, but deleting the old ones failed: %s", quoted(path),
                      quoted(ns.path(node)), exc) from exc
    except StoreError as exc:
        if exc.status != 412 and exc.code != "PreconditionFailed":
            raise
        raise Refused(errno.ESTALE, "rename of directory %s: an object below it changed "
                      "while it was copied; the copies were rolled back, retry", quoted(path)
                      ) from exc


async def _listed(client: S3Client, source: str, path: str, policy: MountPolicy
                  ) -> list[moves.Entry]:
    """Every object below ``source``, or EOPNOTSUPP beyond the mount's limits."""
    entries: list[moves.Entry] = []
    total = 0
    limit = policy.rename_dir_max_objects
    async for page in client.list(source, delimiter=None):
        for obj in page.objects:
            entries.append(moves.Entry(obj.key[len(source):], obj.size, obj.etag))
            total += obj.size
        if len(entries) > limit:
            raise Refused(errno.EOPNOTSUPP, "cannot rename directory %s: it holds more than "
                          "%d objects (--rename-dir-max-objects), and a directory rename "
                          "copies every object below it", quoted(path), limit)
        if total > policy.rename_dir_max_bytes:
            raise Refused(errno.EOPNOTSUPP, "cannot rename directory %s: it holds more than "
                          "%s (--rename-dir-max-bytes), and a directory rename copies every "
                          "object below it", quoted(path),
                          format_size(policy.rename_dir_max_bytes))
        await trio.lowlevel.checkpoint()
    if not entries:  # emptied meanwhile: the caller's dir_is_empty saw something
        raise Refused(errno.EAGAIN, "directory %s changed while it was renamed; retry",
                      quoted(path))
    return entries


def _moved(ns: Namespace, node: Node, new_parent: Node, new_name: str,
           etags: dict[str, str]) -> None:
    """The namespace shows the move (see the module)."""
    for rel, below in subtree(ns, node):
        if not below.is_dir:
            if rel in etags:
                below.etag = etags[rel]
            else:
                below.needs_head = True
    old_parent = ns.get(node.parent)
    ns.move(node, new_parent, new_name, trio.current_time())
    if old_parent is not None:
        ns.unsure_of(old_parent)
    ns.unsure_of(new_parent)

