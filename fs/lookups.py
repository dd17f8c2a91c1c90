"""Asking the store what a name is, and answering without asking while a listing is fresh.

Looking up a name that does not exist is the common case (every file ``cp`` creates), and
asking the store costs a HEAD and a LIST. A directory whose keys the mount has seen whole
(listed, or created empty by this mount) answers such lookups itself for LOOKUP_TTL after
that listing started: a name it does not hold did not exist then (the namespace's snapshot
keeps that true as the mount changes things, see snapshots.py). After that a directory that
fits one listing page is listed again (one request for every lookup of the next LOOKUP_TTL),
a larger one is asked name by name. Names created outside the mount show up within
LOOKUP_TTL.

**Refresh-ahead** (refresh_ahead.py). A lookup answered from a snapshot older than
REFRESH_AHEAD also starts a listing of that directory, and of its parent, in the background,
and does not wait for it: in a stream of creates the snapshots are renewed before they
expire and no create (nor ``cp -r`` entering its next directory) waits for a LIST. Nothing
ever relies on a snapshot older than LOOKUP_TTL: a lookup that finds it expired waits for
the listing under way, or lists, as without refresh-ahead.

**A HEAD beside the listing** (head_beside.py): a lookup that waits for a listing sends
the name's HEAD with it where one will likely be needed: one round trip, not two. Not for
creates.

A name is asked about with a HEAD (a file) and a LIST of one key under ``name/`` (a
directory). Every such metadata request is bounded by METADATA_DEADLINE, retries included:
the kernel serializes lookups per directory, so a store that is away must not hold a
``stat`` (and every lookup queued behind it) for the uploads' whole retry budget.

What the store says is entered through the namespace: attached nodes are updated in place,
names the kernel has not been given yet become detached records (see namespace.py).
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Awaitable
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import trio

from chute.uploader.errors import StoreUnreachable
from chute.uploader.logsafe import quoted

from . import metadata
from .head_beside import HeadBeside, list_with_head
from .head_beside import worth_sending as head_beside_worth_sending
from .namespace import Namespace, Node
from .refresh_ahead import RefreshAhead
from .refused import NoAnswer, Refused
from .snapshots import Flight

if TYPE_CHECKING:
    from chute.uploader.s3 import Listing, ObjectInfo, S3Client

T = TypeVar("T")
log = logging.getLogger("chute.fs.lookups")

LOOKUP_TTL = 1.0
"""Seconds a name learned from the bucket is trusted before asking the store again; also
the kernel's entry/attribute cache time. Names created outside the mount show up within it."""
METADATA_DEADLINE = 5.0
"""Seconds one lookup, stat or listing request may take, retries included, before the caller
gets EIO. The kernel serializes lookups per directory, so a store that is away must not hold
a ``stat`` (and every lookup queued behind it) for the uploads' whole retry budget."""
REFRESH_AHEAD = 0.5 * LOOKUP_TTL
"""Age of a snapshot after which a lookup it answers starts a background listing of the
directory (and of its parent, refresh_ahead.py). Half the TTL leaves the listing half a
second to land before any lookup would wait for it: five round trips at 100 ms RTT (a LIST
queued behind a busy link and a new connection's handshake), at a cost of at most two LISTs
a second per directory being written and per parent of one (one a second without
refresh-ahead)."""
RELIST_MAX_KEYS = 1000
"""A directory whose keys fit one listing page of this size is listed again to answer the
lookups of names it does not hold; a larger one is asked name by name (HEAD + LIST)."""


async def bounded(request: Awaitable[T]) -> T:
    """A metadata request (lookup, stat, listing page) that gives up after METADATA_DEADLINE
    (EIO for the caller) instead of the uploads' retry budget."""
    try:
        with trio.fail_after(METADATA_DEADLINE):
            return await request
    except trio.TooSlowError:
        raise NoAnswer(f"the store did not answer within {METADATA_DEADLINE:g} s") from None


class Lookups:
    """Store lookups and listings for one mount, entered into its namespace. Its background
    tasks (:meth:`run`) are the refresh-ahead listings (refresh_ahead.py)."""

    def __init__(self, namespace: Namespace, client: S3Client) -> None:
        self.ns = namespace
        self.client = client
        self.ahead = RefreshAhead(namespace, partial(self.list_dir, max_pages=1), REFRESH_AHEAD)
        """The listings made for lookups, in the background or waited for."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Own the background listings until cancelled (the mount's nursery runs this);
        cancelling it ends any listing in flight, which installs nothing."""
        await self.ahead.run(task_status=task_status)

    @property
    def background_failures(self) -> int:
        """Background listings that failed (logged at debug)."""
        return self.ahead.failures

    async def lookup(self, parent: Node, name: str) -> Node | None:
        """The node the kernel's LOOKUP of ``name`` should get (not yet counted), or None.
        A known node is answered from memory while it is being written, or made by this
        mount or confirmed by the store within LOOKUP_TTL; else the store is asked (a small
        directory is listed again, which confirms all its names with one request). A name
        this mount wrote is no exception: deleted by another client, it is gone after
        LOOKUP_TTL. Only while the store cannot be asked (no answer, unreachable) does a
        name this mount made keep its last known state instead of EIO."""
        node = self.ns.child(parent, name)
        if node is None:
            node, _ = await self.find(parent, name, head_beside=True)
        elif not self._known(node):
            try:
                node = await self._confirm(parent, name, node)
            except (NoAnswer, StoreUnreachable):
                if not node.local:
                    raise
                return node  # made here, and the store cannot say otherwise now
        if node is None:
            self.ns.remove(parent, name)
        return node

    async def _confirm(self, parent: Node, name: str, node: Node) -> Node | None:
        """Ask the store whether an attached name still is what the node says."""
        if self._must_relist(parent):
            await self.ahead.relist(parent)  # confirms every name it still holds at once
        if self.ns.child(parent, name) is node and self._known(node):
            return node
        return await self.in_store(parent, name, directory_first=node.is_dir)

    def _known(self, node: Node) -> bool:
        """Answered from memory: being written, or vouched for with attributes known."""
        return node.upload is not None or (
            not node.needs_head and self.ns.vouched_for(node, trio.current_time()))

    async def find(self, parent: Node, name: str, *, head_beside: bool = False
                   ) -> tuple[Node | None, float]:
        """The child ``name`` as the store has it, and the time (trio clock) the answer
        describes. An attached name is the caller's business; one that is not is answered
        from the directory's snapshot while that is fresh (re-listing a small directory if
        needed, with ``head_beside`` the name's HEAD beside), else by asking the store."""
        known = self.ns.child(parent, name)
        if known is not None:
            return known, trio.current_time()
        head = await self._relist(parent, name, head_beside) if self._must_relist(parent) else None
        if self.ns.listing_fresh(parent, trio.current_time()):
            listed_at = parent.listed_at
            entry = self.ns.child(parent, name) or self.ns.from_listing(parent, name)
            if entry is True:  # a directory, by name only
                return self.ns.record(parent, name, True, checked_at=listed_at), listed_at
            if entry is not False:
                return entry, listed_at
            # a file, by name only: its attributes need a HEAD anyway
            if head is not None and (info := head.agreed(name)) is not None:
                return self._head_record(parent, name, info, head.answered_at), head.sent_at
        asked_at = trio.current_time()
        return await self.in_store(parent, name), asked_at

    async def _relist(self, parent: Node, name: str, head_beside: bool) -> HeadBeside | None:
        """Wait for a listing of ``parent`` (ahead.relist) and, where it pays, the HEAD of
        ``name`` sent beside it (head_beside.py), each bounded."""
        if (not head_beside or parent.inode in self.ahead.underway
                or not head_beside_worth_sending(self.ns, parent, name)):
            await self.ahead.relist(parent)
            return None
        key = self.ns.child_key(parent, name)
        return await list_with_head(partial(self.ahead.relist, parent),
                                    lambda: bounded(self.client.head_object(key)))

    async def child(self, parent: Node, name: str) -> Node:
        """The node of an existing name (the kernel looked it up just before); else ENOENT."""
        node, _ = await self.find(parent, name)
        if node is None:
            raise Refused(errno.ENOENT)
        return node

    async def in_store(self, parent: Node, name: str, *, directory_first: bool = False
                       ) -> Node | None:
        """Ask the store about one name: a HEAD for a file, a LIST for a directory.

        A name that is both (see namespace.py) is the directory: ``directory_first`` (a name
        known as a directory) asks the LIST first, and a file the HEAD finds is the
        directory if the parent's fresh listing shows one of that name. (Without a fresh
        listing, in a directory of more than one page, it is the file: checking would cost
        every lookup of a file a second request.)"""
        key = self.ns.child_key(parent, name)
        if directory_first and await self._is_dir(key):
            return self.ns.record(parent, name, True, checked_at=trio.current_time())
        info = await bounded(self.client.head_object(key))
        now = trio.current_time()
        if info is not None:
            if (self.ns.listing_fresh(parent, now)
                    and self.ns.from_listing(parent, name) is True):
                log.warning("%s is both a file and a directory in the bucket: the directory "
                            "is shown, the file (key %s) is hidden behind it", quoted(
                                self.ns.child_path(parent, name)), quoted(key))
                return self.ns.record(parent, name, True, checked_at=parent.listed_at)
            return self._head_record(parent, name, info, now)
        if not directory_first and await self._is_dir(key):
            return self.ns.record(parent, name, True, checked_at=trio.current_time())
        return None

    def _head_record(self, parent: Node, name: str, info: ObjectInfo, now: float) -> Node:
        """The file a HEAD answered at ``now`` describes."""
        node = self.ns.record(parent, name, False, is_link=metadata.is_link_object(info))
        metadata.apply_head(node, info, now)
        return node

    async def _is_dir(self, key: str) -> bool:
        """Whether anything is under ``key/`` (one LIST of one key)."""
        page = await self.first_page(key + "/", max_keys=1)
        return page is not None and bool(page.objects or page.prefixes)

    async def refresh(self, node: Node) -> None:
        """HEAD a file known only from a listing; ENOENT if it has gone meanwhile, ESTALE
        if it is a link where the node is a file or the other way round (an inode never
        changes its kind: the kernel's retry of the path looks it up again, a new node)."""
        info = await bounded(self.client.head_object(self.ns.key(node)))
        if info is None or metadata.is_link_object(info) != node.is_link:
            parent = self.ns.get(node.parent)
            if parent is not None:
                self.ns.remove(parent, node.name)
                if info is not None:
                    self.ns.unsure_of(parent)  # the name still exists
            raise Refused(errno.ENOENT if info is None else errno.ESTALE)
        metadata.apply_head(node, info, trio.current_time())

    def _must_relist(self, directory: Node) -> bool:
        """Whether a lookup under ``directory`` must wait for a listing (its snapshot has
        expired and it fits one page; a larger one is asked name by name). A fresh snapshot
        past REFRESH_AHEAD is renewed in the background, and so is its parent's
        (refresh_ahead.py)."""
        now = trio.current_time()
        if not self.ns.listing_fresh(directory, now):
            return directory.fits_one_page
        self.ahead.answered_from(directory, now)
        return False

    async def list_dir(self, node: Node, *, max_pages: int | None = None) -> dict[str, Node]:
        """The directory's children as the store lists them, plus the files being written
        and the directories this mount created: attached nodes (updated) and detached
        records. If the listing is complete (not cut at ``max_pages``), it becomes the
        directory's snapshot."""
        with self.ns.listing_in_flight(node) as flight:
            return await self._list_dir(node, max_pages, flight)

    async def _list_dir(self, node: Node, max_pages: int | None, flight: Flight
                        ) -> dict[str, Node]:
        started = trio.current_time()
        prefix = self.ns.key(node)
        pages, complete = await self._list_pages(prefix, max_pages)
        entries: dict[str, Node] = {}
        now = trio.current_time()
        skipped: list[str] = []
        hidden: list[str] = []
        for page in pages:
            for prefix_key in page.prefixes:
                name = prefix_key[len(prefix):].removesuffix("/")
                if self.ns.is_reserved(node, name):
                    continue
                if self.ns.name_problem(name) is not None:
                    skipped.append(prefix_key)
                    continue
                entries[name] = self.ns.record(node, name, True, checked_at=now)
            for obj in page.objects:
                name = obj.key[len(prefix):]
                if not name:
                    continue  # the directory's own marker
                if self.ns.name_problem(name) is not None:
                    skipped.append(obj.key)
                elif name in entries and entries[name].is_dir:
                    hidden.append(obj.key)  # both a file and a directory: see namespace.py
                else:
                    entries[name] = self._listed_file(node, name, obj, now)
        node.fits_one_page = complete and len(pages) <= 1
        if any(page.objects or page.prefixes for page in pages) and node.inode and (
                self.ns.key(node) == prefix):  # not moved meanwhile
            self._vouch_for_path(node, started)
        for name, child in self.ns.children(node):
            if self.ns.vouched_for(child, now):
                entries.setdefault(name, child)
        self._report(prefix, skipped, hidden)
        if complete:
            self.ns.listed(node, entries, started, now, flight)
        return entries

    def _vouch_for_path(self, node: Node, started: float) -> None:
        """A listing of ``node`` started at ``started`` found a key under its prefix (its
        marker counts): it and every directory above it existed then. The kernel looks each
        path component up again once its entry expires, so without this a ``cp -r`` into
        ``a/b/`` waited once a second for a LIST of the root and of ``a/`` to confirm ``a``
        and ``b``, while the background listings of ``b/`` said as much."""
        while node.inode and node is not self.ns.root and not node.gone:
            node.checked_at = max(node.checked_at, started)
            parent = self.ns.get(node.parent)
            if parent is None or self.ns.child(parent, node.name) is not node:
                return
            node = parent

    @staticmethod
    def _report(prefix: str, skipped: list[str], hidden: list[str]) -> None:
        """One log line per listing for the keys it did not show (names quoted)."""
        if skipped:
            log.warning("listing %s: %d key(s) not shown, their names cannot be file names "
                        "here (control characters, a backslash this store rewrites, '.', "
                        "'..', empty, too long): %s", quoted(prefix), len(skipped),
                        ", ".join(quoted(k) for k in skipped[:5])
                        + (", ..." if len(skipped) > 5 else ""))
        if hidden:
            log.warning("listing %s: %d file(s) hidden behind a directory of the same name "
                        "(the directory is shown; rmdir of it reports ENOTEMPTY while the "
                        "file is there): %s", quoted(prefix), len(hidden),
                        ", ".join(quoted(k) for k in hidden[:5])
                        + (", ..." if len(hidden) > 5 else ""))

    def _listed_file(self, parent: Node, name: str, obj: ObjectInfo, now: float) -> Node:
        """A file seen in a listing: keep what we know if it is the same object (ETag),
        else take its size and Last-Modified and mark it for a HEAD (listings carry no
        metadata, so its mode and mtime are not known yet)."""
        known = self.ns.child(parent, name)
        if known is not None and not known.is_dir and (
                known.upload is not None or (known.etag == obj.etag and not known.needs_head)):
            known.checked_at = now
            return known
        return self.ns.record(parent, name, False, size=obj.size, etag=obj.etag,
                              checked_at=now, mtime_ns=metadata.iso_date_ns(obj.last_modified),
                              mode=None, needs_head=True)

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
                    page = await bounded(anext(it))
                except StopAsyncIteration:
                    return pages, True
                if max_pages is not None and len(pages) == max_pages:
                    return pages, False
                pages.append(page)

    async def first_page(self, prefix: str, max_keys: int) -> Listing | None:
        """The first ListObjectsV2 page under ``prefix``, bounded by METADATA_DEADLINE."""
        async with contextlib.aclosing(self.client.list(prefix, max_keys=max_keys)) as it:
            try:
                return await bounded(anext(it))
            except StopAsyncIteration:
                return None

    async def dir_is_empty(self, node: Node) -> bool:
        """Nothing but the directory's own marker under its prefix, and no file of it being
        written (those are not in the bucket yet)."""
        if any(child.upload is not None for _, child in self.ns.children(node)):
            return False
        prefix = self.ns.key(node)
        page = await self.first_page(prefix, max_keys=2)
        return page is None or (not page.prefixes and all(obj.key == prefix
                                                          for obj in page.objects))

