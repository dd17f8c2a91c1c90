"""Refresh-ahead: listing a busy directory, and the one above it, again before the snapshot
a lookup relies on expires.

Why: a lookup of a name a directory does not hold is answered from its listing snapshot
while that is younger than LOOKUP_TTL (lookups.py); past it the lookup waits a round trip
for a LIST. A lookup answered from a snapshot older than ``after`` (lookups.REFRESH_AHEAD)
starts a listing of that directory in the background and does not wait: in a stream of
creates the snapshot is renewed before it expires, and no create waits for a LIST.

**The parent too.** ``cp -r`` spends seconds writing inside one subdirectory, and nothing
looks up in the directory above it meanwhile: its snapshot expired, and entering the next
subdirectory (the lookup of its new name in the parent) waited for a LIST of the parent,
once per directory. So a lookup answered from a directory's snapshot also renews its
parent's, under the same rules. One level only: a lookup answered from the parent's
snapshot renews the grandparent in turn, but a listing renews nothing above it (a tree
two levels deep pays one LIST when ``cp`` climbs two levels, not two LISTs a second for
every ancestor of every busy directory).

Rules for every background listing (of the directory or its parent):
- only of a directory whose snapshot is fresh (held, younger than LOOKUP_TTL), older than
  ``after``, and that fits one listing page (a larger one is asked name by name);
- one listing at a time per directory (:attr:`underway`): a lookup that finds the snapshot
  expired waits for the listing under way (:meth:`relist`) rather than sending another;
- not again for the same snapshot after a background listing of it failed (a store refusing
  LISTs would otherwise get one per lookup): it expires and a lookup lists, and reports;
- a failure has no caller to tell: it is logged at debug, counted (:attr:`failures`), and
  changes nothing.

Invariants: this module only starts listings; it never extends a snapshot, so nothing ever
relies on one older than LOOKUP_TTL (names made elsewhere show within it). A listing is
installed through snapshots.py: the changes the mount made while it was in flight are
replayed on it, and it is not installed over a snapshot newer than its start.

Cost: at most one background listing per ``after`` (plus a listing's time) of each
directory being written and of its parent: two LISTs a second each, at most.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from chute.uploader.errors import ChuteError
from chute.uploader.logsafe import quoted

from .background import BackgroundTasks
from .namespace import Namespace, Node

log = logging.getLogger("chute.fs.refresh_ahead")


class RefreshAhead(BackgroundTasks):
    """The listings of one mount's directories made for lookups: in the background (in the
    nursery :meth:`run` owns, see background.py; cancelling it ends any listing in flight,
    which installs nothing), or waited for (:meth:`relist`)."""

    def __init__(self, namespace: Namespace,
                 list_page: Callable[[Node], Awaitable[dict[str, Node]]], after: float
                 ) -> None:
        """``list_page`` lists a directory's first page, installs it as its snapshot if
        that is the whole listing and returns the names it found (Lookups.list_dir);
        ``after``: the age of a snapshot past which a lookup it answers renews it."""
        self.ns = namespace
        self._list_page = list_page
        self.after = after
        self.underway: dict[int, trio.Event] = {}
        """Directories being listed (in the background or waited for), by inode."""
        self.failures = 0
        """Background listings that failed (logged at debug)."""
        self._failed: dict[int, float] = {}
        """Directory inode -> ``listed_at`` of the snapshot a background listing failed to
        renew: that snapshot is not renewed in the background again."""

    def answered_from(self, directory: Node, now: float) -> None:
        """A lookup under ``directory`` was answered from its fresh snapshot: renew that
        snapshot, and its parent's, in the background if due (see the module)."""
        self._renew_if_due(directory, now)
        if directory is self.ns.root or not directory.inode:
            return
        parent = self.ns.get(directory.parent)
        if parent is not None and self.ns.child(parent, directory.name) is directory:
            self._renew_if_due(parent, now)

    def _renew_if_due(self, directory: Node, now: float) -> None:
        if (self._nursery is None or not directory.fits_one_page
                or not self.ns.listing_fresh(directory, now)
                or now - directory.listed_at < self.after
                or directory.inode in self.underway
                or self._failed.get(directory.inode) == directory.listed_at):
            return
        self._failed.pop(directory.inode, None)
        done = self.underway[directory.inode] = trio.Event()
        self._nursery.start_soon(self._renew, directory, done)

    async def relist(self, node: Node) -> dict[str, Node] | None:
        """List a directory (that may fit one page) again and wait for it, so that the
        lookups of the next LOOKUP_TTL are answered without a request each; if a listing of
        it is under way (maybe a background one), wait for that one instead (if it failed,
        the caller asks about its name). The names this listing found (the ETags a lookup
        compares a HEAD with), or None if it waited for another one."""
        inode = node.inode
        underway = self.underway.get(inode)
        if underway is not None:
            await underway.wait()
            return None
        done = self.underway[inode] = trio.Event()
        self._failed.pop(inode, None)
        try:
            return await self._list_page(node)
        finally:
            del self.underway[inode]
            done.set()

    async def _renew(self, node: Node, done: trio.Event) -> None:
        """A background listing (``done`` is its entry in :attr:`underway`). A failure is
        logged and counted, the snapshot held is left to expire, and the next lookup after
        that lists (and reports) as usual."""
        inode, renewing = node.inode, node.listed_at
        try:
            await self._list_page(node)
        except ChuteError as exc:  # NoAnswer, StoreUnreachable, StoreError, a bad answer
            self._failed[inode] = renewing
            self.failures += 1
            log.debug("background listing of %s failed: %s",
                      quoted(self.ns.path(node) or "/"), exc)
        except Exception:  # a bug: logged loudly, but it must not end the mount
            self._failed[inode] = renewing
            self.failures += 1
            log.warning("background listing of %s failed", quoted(self.ns.path(node) or "/"),
                        exc_info=True)
        finally:
            del self.underway[inode]
            done.set()
