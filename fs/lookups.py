"""Asking the store what a name is, and answering without asking while a listing is fresh.

Looking up a name that does not exist is the common case (every file ``cp`` creates), and
asking the store costs a HEAD and a LIST. A directory whose keys the mount has seen whole
(listed, or created empty by this mount) answers such lookups itself for LOOKUP_TTL after
that listing started: a name it does not hold did not exist then (the namespace's snapshot
keeps that true as the mount changes things, see namespace.py). After that a directory that
fits one listing page is listed again (one request for every lookup of the next LOOKUP_TTL),
a larger one is asked name by name. Names created outside the mount show up within
LOOKUP_TTL.

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
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

import trio

from . import metadata
from .namespace import Namespace, Node
from .refused import NoAnswer, Refused

if TYPE_CHECKING:
    from chute.uploader.s3 import Listing, ObjectInfo, S3Client

T = TypeVar("T")

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


async def bounded(request: Awaitable[T]) -> T:
    """A metadata request (lookup, stat, listing page) that gives up after METADATA_DEADLINE
    (EIO for the caller) instead of the uploads' retry budget."""
    try:
        with trio.fail_after(METADATA_DEADLINE):
            return await request
    except trio.TooSlowError:
        raise NoAnswer(f"the store did not answer within {METADATA_DEADLINE:g} s") from None


class Lookups:
    """Store lookups and listings for one mount, entered into its namespace."""

    def __init__(self, namespace: Namespace, client: S3Client) -> None:
        self.ns = namespace
        self.client = client
        self._relisting: dict[int, trio.Event] = {}
        """Directories being listed again for lookups, by inode (see _relist)."""

    async def lookup(self, parent: Node, name: str) -> Node | None:
        """The node the kernel's LOOKUP of ``name`` should get (not yet counted), or None.
        A known node is answered from memory while it is being written, created by this
        mount, or confirmed by the store within LOOKUP_TTL; else the store is asked."""
        node = self.ns.child(parent, name)
        if node is None:
            node, _ = await self.find(parent, name)
        else:
            fresh = trio.current_time() - node.checked_at < LOOKUP_TTL
            if node.upload is not None or (not node.needs_head and (node.local or fresh)):
                return node
            node = await self.in_store(parent, name)
        if node is None:
            self.ns.remove(parent, name)
        return node

    async def find(self, parent: Node, name: str) -> tuple[Node | None, float]:
        """The child ``name`` as the store has it, and the time (trio clock) the answer
        describes. An attached name is the caller's business; one that is not is answered
        from the directory's snapshot while that is fresh (re-listing a small directory if
        needed), else by asking the store about the name."""
        known = self.ns.child(parent, name)
        if known is not None:
            return known, trio.current_time()
        if not self.ns.listing_fresh(parent, trio.current_time()) and parent.fits_one_page:
            await self._relist(parent)
        if self.ns.listing_fresh(parent, trio.current_time()):
            listed_at = parent.listed_at
            entry = self.ns.child(parent, name) or self.ns.from_listing(parent, name)
            if entry is True:  # a directory, by name only
                return self.ns.record(parent, name, True, checked_at=listed_at), listed_at
            if entry is False:  # a file, by name only: its attributes need a HEAD anyway
                asked_at = trio.current_time()
                return await self.in_store(parent, name), asked_at
            return entry, listed_at
        asked_at = trio.current_time()
        return await self.in_store(parent, name), asked_at

    async def child(self, parent: Node, name: str) -> Node:
        """The node of an existing name (the kernel looked it up just before); else ENOENT."""
        node, _ = await self.find(parent, name)
        if node is None:
            raise Refused(errno.ENOENT)
        return node

    async def in_store(self, parent: Node, name: str) -> Node | None:
        """Ask the store about one name: a HEAD for a file, a LIST for a directory."""
        key = self.ns.child_key(parent, name)
        info = await bounded(self.client.head_object(key))
        now = trio.current_time()
        if info is not None:
            node = self.ns.record(parent, name, False)
            metadata.apply_head(node, info, now)
            return node
        page = await self.first_page(key + "/", max_keys=1)
        if page is not None and (page.objects or page.prefixes):
            return self.ns.record(parent, name, True, checked_at=now)
        return None

    async def refresh(self, node: Node) -> None:
        """HEAD a file known only from a listing; ENOENT if it has gone meanwhile."""
        info = await bounded(self.client.head_object(self.ns.key(node)))
        if info is None:
            parent = self.ns.get(node.parent)
            if parent is not None:
                self.ns.remove(parent, node.name)
            raise Refused(errno.ENOENT)
        metadata.apply_head(node, info, trio.current_time())

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
            await self.list_dir(node, max_pages=1)
        finally:
            del self._relisting[node.inode]
            done.set()

    async def list_dir(self, node: Node, *, max_pages: int | None = None) -> dict[str, Node]:
        """The directory's children as the store lists them, plus the files being written
        and the directories this mount created: attached nodes (updated) and detached
        records. If the listing is complete (not cut at ``max_pages``), it becomes the
        directory's snapshot."""
        started = trio.current_time()
        prefix = self.ns.key(node)
        pages, complete = await self._list_pages(prefix, max_pages)
        entries: dict[str, Node] = {}
        now = trio.current_time()
        for page in pages:
            for prefix_key in page.prefixes:
                name = prefix_key[len(prefix):].rstrip("/")
                if name and not self.ns.is_reserved(node, name):
                    entries[name] = self.ns.record(node, name, True, checked_at=now)
            for obj in page.objects:
                name = obj.key[len(prefix):]
                if name and "/" not in name:
                    entries[name] = self._listed_file(node, name, obj, now)
        node.fits_one_page = complete and len(pages) <= 1
        for name, child in self.ns.children(node):
            if child.local or child.upload is not None:
                entries.setdefault(name, child)
        if complete:
            self.ns.listed(node, entries, started, now)
        return entries

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
