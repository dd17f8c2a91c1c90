"""The mount's namespace: the inodes the kernel knows, their names, and the rules names obey.

No I/O, no FUSE: this is the table the FUSE handlers read and the store answers are entered
into. Times are passed in (the trio clock of the caller), so it runs in plain unit tests.

The tree is the bucket's keys under the prefix, ``/`` separating directories, plus what this
mount has created: files being written and empty directories (kept in the bucket as ``dir/``
marker objects). A node is a file or a directory of that tree.

Invariants:

- **Attached nodes.** A node is attached (in the table under an inode number the kernel may
  use) while the kernel holds lookups on it, while it is in use (an open handle, an upload),
  while attached children hang under it, and always for the root. When none of that holds it
  leaves the table (:meth:`Namespace.prune`). Inode numbers are never reused: a request for
  an inode that left answers ENOENT (:meth:`Namespace.node`), never another file.
- **Lookup counts** count exactly what the kernel counts: one for each successful reply of
  lookup, create and mkdir, and one for each readdirplus entry a reply carried (pyfuse3
  always answers readdir with readdirplus, ``FUSE_CAP_READDIRPLUS_AUTO`` off, and its
  ``readdir_reply`` returning True means the entry is in the reply). ``forget`` subtracts.
  Too low a count would drop a node the kernel still uses, too high would keep it forever.
- **One node per name.** Every attached node but the root and the removed ones still in use
  is its parent's child under its name, and the name maps back to it.
- **Listing snapshots prove absence.** A directory listed whole at ``listed_at`` (or created
  empty by this mount) keeps a snapshot of the names it held that are not attached. Until
  ``ttl`` after ``listed_at``, a name neither attached nor in the snapshot did not exist
  then. The mount's own changes keep it true, also against a listing in flight: every one
  goes through snapshots.py (a node leaving the table puts its record into its parent's
  snapshot, the name still exists; a removal or rename takes the name out), which also
  replays them on a listing that was in flight meanwhile. A listed name is kept compactly
  (only whether it is a directory: its size and ETag would be HEADed before use anyway);
  the full record of a node that left the table is kept until the next listing replaces
  the snapshot. Stale snapshots are dropped (snapshots.py).
- **Names.** A name is UTF-8 (S3 keys are), at most NAME_MAX bytes, and its key at most
  MAX_KEY_BYTES (a directory's marker counts its slash: one rule, :meth:`Namespace.check_key_fits`,
  for create, mkdir and both kinds of rename). The mount root's marker directories (see
  uploader/leftovers.py, uploader/moves.py) are chute's and are refused.
- **What can be a name here** is names.py's one rule (listings skip what breaks it, new
  names that break it are refused), and so is the decision for a name that is both a file
  and a directory.
"""

from __future__ import annotations

import errno
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from chute.uploader import leftovers, moves
from chute.uploader.logsafe import quoted

from . import names
from .names import MAX_KEY_BYTES, NAME_MAX
from .refused import Refused
from .snapshots import Flight, Snapshots

ROOT_INODE = 1
"""The kernel's inode number of the mount root (FUSE_ROOT_ID, pyfuse3.ROOT_INODE)."""
__all__ = ["MAX_KEY_BYTES", "NAME_MAX", "ROOT_INODE", "Namespace", "Node"]


@dataclass(eq=False, slots=True)
class Node:
    """A file or directory. ``inode`` is 0 while the node is a detached record (a store
    answer or a snapshot entry not entered in the table)."""

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
    """Created by this mount. It exists without asking the store only while it is being
    written or for the TTL after it was made (:meth:`Namespace.vouched_for`), like any
    name: a delete made by another client is seen after that. While the store cannot be
    asked, its lookup keeps answering what this mount knows (lookups.py)."""
    upload: Any = None
    """The FileUpload writing this file, while one is (chute.uploader's; kept untyped here
    so the namespace does not depend on the uploader's modules)."""
    xxh3_128: str = ""
    etag: str = ""
    is_link: bool = False
    """A symbolic link (fs/symlinks.py); part of its kind, like ``is_dir`` (see record)."""
    link_target: bytes | None = None
    """A link's target once written or read; None = not known (a GET reads it)."""
    metadata: dict[str, str] = field(default_factory=dict)
    """The object's user metadata as the bucket holds it (without the x-amz-meta- prefix)."""
    needs_head: bool = False
    """Seen in a listing only: mode and mtime are unknown until a HEAD."""
    mtime_explicit: bool = False
    """mtime was set by utimens since the last write (so it must reach the object)."""
    lookups: int = 0
    """The kernel's lookup count (see the module docstring)."""
    opens: int = 0
    """Open handles on this node (the handle table's)."""
    listed_at: float = -math.inf
    """Directory: when its snapshot's listing started (or this mount created it empty)."""
    listing: dict[str, Node | bool] | None = None
    """Directory: the names it held at ``listed_at`` and not attached: a detached record,
    or just whether the name is a directory (see above)."""
    gone: bool = False
    """Its name was removed (deleted, replaced): a stale record of it is never attached."""
    fits_one_page: bool = True
    """Directory: False once a listing had more than one page; then it is no longer listed
    to answer lookups, which ask about each name instead."""

    @property
    def in_use(self) -> bool:
        return self.upload is not None or self.opens > 0


class Namespace:
    """The inode table, the children maps and the listing snapshots (see the module)."""

    def __init__(self, key_of: Callable[[str], str], ttl: float) -> None:
        """``key_of`` turns a path under the mount into the bucket key (adds the prefix);
        ``ttl`` is how long a listing snapshot proves absence."""
        self._key_of = key_of
        self.ttl = ttl
        self.root = Node(ROOT_INODE, ROOT_INODE, "", True, local=True)
        self._nodes: dict[int, Node] = {ROOT_INODE: self.root}
        self._children: dict[int, dict[str, Node]] = {}
        self._next_inode = ROOT_INODE + 1
        self._snapshots = Snapshots(ttl, self._nodes.get)
        """The directories' listing snapshots: their one writer (snapshots.py)."""
        self.keeps_backslash = False
        """Whether the store keeps a ``\\`` in a key byte-for-byte (the mount's probe sets
        it, fs/store_probe.py; False until then: the safe answer)."""

    # -- reading --------------------------------------------------------------------

    def __len__(self) -> int:
        """Attached nodes, the root included."""
        return len(self._nodes)

    def get(self, inode: int) -> Node | None:
        return self._nodes.get(inode)

    def node(self, inode: int) -> Node:
        """The attached node, or ENOENT (an inode that left the table, or never existed)."""
        node = self._nodes.get(inode)
        if node is None:
            raise Refused(errno.ENOENT)
        return node

    def child(self, parent: Node, name: str) -> Node | None:
        """The attached child ``name`` of ``parent``."""
        return self._children.get(parent.inode, {}).get(name)

    def children(self, parent: Node) -> Iterator[tuple[str, Node]]:
        return iter(list(self._children.get(parent.inode, {}).items()))

    def path(self, node: Node) -> str:
        """The node's path under the mount ("" for the root)."""
        parts = []
        while node.inode != ROOT_INODE:
            parts.append(node.name)
            parent = self._nodes.get(node.parent)
            if parent is None:
                break
            node = parent
        return "/".join(reversed(parts))

    def child_path(self, parent: Node, name: str) -> str:
        return f"{self.path(parent)}/{name}".lstrip("/")

    def key(self, node: Node) -> str:
        """The node's key: a directory's is its marker's (ends with ``/``)."""
        path = self.path(node)
        return self._key_of(path + "/" if node.is_dir and path else path)

    def child_key(self, parent: Node, name: str, *, directory: bool = False) -> str:
        return self._key_of(self.child_path(parent, name) + ("/" if directory else ""))

    # -- names ----------------------------------------------------------------------

    def check_name(self, parent: Node, raw: bytes, *, directory: bool = False,
                   new: bool = False) -> str:
        """The name as a str, or a clear refusal: not UTF-8 (EINVAL), reserved (EPERM), too
        long (ENAMETOOLONG: a name over NAME_MAX, or a key over MAX_KEY_BYTES, counting a
        directory marker's slash), or not a name here (see :meth:`name_problem`): EINVAL,
        logged, for a ``new`` name (create, mkdir, rename target), else ENOENT (it cannot
        exist as far as this mount is concerned: listings skip it)."""
        if len(raw) > NAME_MAX:
            raise Refused(errno.ENAMETOOLONG, "name %r... is %d bytes, more than the %d a "
                          "name may have", raw[:40], len(raw), NAME_MAX)
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(errno.EINVAL, "name %r is not UTF-8, which S3 keys must be",
                          raw) from None
        if self.is_reserved(parent, name):
            raise Refused(errno.EPERM, "%r is chute's own marker directory (see "
                          "uploader/leftovers.py) and cannot be used through the mount", name)
        problem = self.name_problem(name)
        if problem is not None:
            if not new:
                raise Refused(errno.ENOENT)
            raise Refused(errno.EINVAL, "name %s refused in %s: %s", quoted(name),
                          quoted(self.path(parent) or "/"), problem)
        self.check_key_fits(parent, name, directory=directory)
        return name

    def name_problem(self, name: str) -> str | None:
        """Why ``name`` cannot be a file name of this mount, or None (names.py)."""
        return names.problem(name, keeps_backslash=self.keeps_backslash)

    def check_key_fits(self, parent: Node, name: str, *, directory: bool) -> None:
        """ENAMETOOLONG if ``name``'s key under ``parent`` (a directory's marker with its
        trailing slash) is over MAX_KEY_BYTES: the one key-length rule, checked before any
        request."""
        if len(self.child_key(parent, name).encode()) + directory > MAX_KEY_BYTES:
            raise Refused(errno.ENAMETOOLONG, "key for %r would exceed S3's %d bytes",
                          name, MAX_KEY_BYTES)

    @staticmethod
    def is_reserved(parent: Node, name: str) -> bool:
        """The mount root's marker and temporary directories are chute's, not the user's."""
        return parent.inode == ROOT_INODE and name in (*leftovers.OWN_DIRS, moves.MARKER_DIR)

    # -- entering and leaving -------------------------------------------------------

    def record(self, parent: Node, name: str, is_dir: bool, **attrs: Any) -> Node:
        """What the store says of ``name``: the attached node of that name and kind (a
        directory, a link if ``is_link`` says so, else a file), updated, or else a new
        detached record (entered by :meth:`attach`): an inode never changes its kind."""
        node = self.child(parent, name)
        if (node is not None and node.is_dir == is_dir
                and node.is_link == attrs.get("is_link", False)):
            for k, v in attrs.items():
                setattr(node, k, v)
            return node
        return Node(0, parent.inode, name, is_dir, **attrs)

    def attach(self, node: Node) -> Node:
        """Enter a record in the table under a new inode number (no lookup counted). If its
        name is attached meanwhile to a node of the same kind, that node is the answer; one
        of the other kind is replaced."""
        if node.inode:
            return node
        parent = self._nodes.get(node.parent)
        if parent is None:
            raise Refused(errno.ENOENT)  # the directory left the table meanwhile
        current = self.child(parent, node.name)
        if current is not None:
            if current.is_dir == node.is_dir and current.is_link == node.is_link:
                return current
            self.remove(parent, node.name)
        node.inode = self._next_inode
        self._next_inode += 1
        self._nodes[node.inode] = node
        self._children.setdefault(parent.inode, {})[node.name] = node
        self._snapshots.absent(parent, node.name, known=False)  # attached names are not in it
        return node

    def looked_up(self, node: Node) -> Node:
        """The kernel received ``node`` in a reply: attach it and count the lookup."""
        node = self.attach(node)
        node.lookups += 1
        return node

    def forget(self, inode: int, count: int) -> None:
        """The kernel dropped ``count`` lookups of ``inode``; unknown inodes are ignored
        (a node removed from the namespace while the kernel still referred to it)."""
        node = self._nodes.get(inode)
        if node is None or node is self.root:
            return
        node.lookups = max(0, node.lookups - count)
        self.prune(node)

    def prune(self, node: Node) -> None:
        """Detach ``node`` if nothing keeps it (see the module); then its parent, which may
        have been kept only by it. Its record goes into its parent's fresh snapshot."""
        while (node is not self.root and node.inode and node.lookups == 0
               and not node.in_use and not self._children.get(node.inode)):
            self._nodes.pop(node.inode, None)
            self._children.pop(node.inode, None)
            self._snapshots.drop(node)
            parent = self._nodes.get(node.parent)
            if parent is None:
                return
            siblings = self._children.get(parent.inode, {})
            if siblings.get(node.name) is node:
                del siblings[node.name]
                if not siblings:
                    self._children.pop(parent.inode, None)
                self._snapshots.exists(parent, node.name, node)  # the name still exists
            node.inode = 0
            node = parent

    def remove(self, parent: Node, name: str) -> None:
        """``name`` no longer exists (deleted, replaced, or found gone). Its node leaves the
        table, or, while in use, stays attached outside its parent until it is not."""
        siblings = self._children.get(parent.inode, {})
        node = siblings.pop(name, None)
        if not siblings:
            self._children.pop(parent.inode, None)
        self._snapshots.absent(parent, name, known=node is not None)
        if node is None:
            return
        node.gone = True
        if not node.in_use:
            self._nodes.pop(node.inode, None)
            self._children.pop(node.inode, None)
            self._snapshots.drop(node)
            node.inode = 0
        self.prune(parent)

    def release(self, node: Node) -> None:
        """``node`` stopped being in use: it leaves the table if nothing else keeps it (a
        removed node, one whose lookups were forgotten while it was open)."""
        self.prune(node)

    def move(self, node: Node, new_parent: Node, new_name: str, now: float) -> None:
        """The node takes its new name (a rename that landed); a node it replaces leaves."""
        old_parent = self._nodes.get(node.parent)
        if old_parent is not None:
            self._snapshots.absent(old_parent, node.name, known=True)
            siblings = self._children.get(old_parent.inode, {})
            if siblings.get(node.name) is node:
                del siblings[node.name]
        replaced = self.child(new_parent, new_name)
        if replaced is not None and replaced is not node:
            self.remove(new_parent, new_name)
        node.parent = new_parent.inode
        node.name = new_name
        node.checked_at = now
        if node.inode:
            self._children.setdefault(new_parent.inode, {})[new_name] = node
            self._snapshots.absent(new_parent, new_name, known=True)
        else:
            self._snapshots.exists(new_parent, new_name, node)
        if old_parent is not None:
            if not self._children.get(old_parent.inode):
                self._children.pop(old_parent.inode, None)
            self.prune(old_parent)

    # -- listing snapshots (snapshots.py) --------------------------------------------

    def listing_in_flight(self, directory: Node) -> AbstractContextManager[Flight]:
        """Hold this around a listing of ``directory``, from before its first request until
        :meth:`listed`: the changes made meanwhile are replayed when it is installed."""
        return self._snapshots.flight(directory)

    def listed(self, directory: Node, records: dict[str, Node], started: float,
               now: float, flight: Flight | None = None) -> bool:
        """A complete listing that started at ``started``: ``records`` holds every name
        under ``directory`` then (attached nodes or detached records). It becomes the
        snapshot with ``flight``'s changes replayed; False if it could not (see
        Snapshots.install)."""
        listed: dict[str, Node | bool] = {name: node.is_dir for name, node in records.items()
                                          if not node.inode}
        return self._snapshots.install(directory, listed, started, now, flight=flight,
                                       attached=self._children.get(directory.inode, {}))

    def created_empty(self, directory: Node, free_since: float, now: float) -> None:
        """This mount created ``directory`` where nothing was at ``free_since``."""
        self._snapshots.install(directory, {}, free_since, now)

    def vouched_for(self, node: Node, now: float) -> bool:
        """Whether ``node`` exists without asking the store: it is being written, or the
        store confirmed it (or this mount made it) less than the TTL ago."""
        return node.upload is not None or node is self.root or now - node.checked_at < self.ttl

    def listing_fresh(self, directory: Node, now: float) -> bool:
        return self._snapshots.fresh(directory, now)

    def from_listing(self, directory: Node, name: str) -> Node | bool | None:
        """The snapshot's entry of ``name`` (call only while the snapshot is fresh): a
        detached record, else whether it is a directory; None if the name was not there."""
        entry: Node | bool | None = self._snapshots.entry(directory, name)
        return entry

    def listed_by_name_only(self, directory: Node, name: str) -> bool:
        """Whether the directory's snapshot, fresh or expired, shows ``name`` as a file known
        by name only (its attributes need a HEAD): a hint of what a lookup will need, never
        an answer."""
        return self._snapshots.entry(directory, name) is False

    def unsure_of(self, directory: Node) -> None:
        """A name of ``directory`` left the table although its key may still exist (a
        failed replacement, a delete that failed): its listing no longer proves absence,
        and one in flight is not installed."""
        self._snapshots.drop(directory)
