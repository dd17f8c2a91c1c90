"""Listing snapshots: what proves a name absent without asking the store, kept true.

A directory listed whole (or created empty by this mount) keeps a snapshot: the names it
held when that listing *started* (``listed_at``) and that are not attached (namespace.py),
each a detached record or only whether it is a directory. Until ``ttl`` after ``listed_at``,
a name neither attached nor in the snapshot did not exist then.

Invariant: **a snapshot is the store as listed at ``listed_at`` plus every change this mount
made to the directory's names since.** Two rules keep it so:

- **One writer.** Every change of a name goes through :meth:`Snapshots.exists` (a node left
  the table: its name still exists, its record goes in) or :meth:`Snapshots.absent` (a name
  was deleted, replaced or renamed away, or became attached); namespace.py calls them and
  nothing else writes ``listing``. A change the mount cannot describe (a failed replacement:
  the key may or may not exist) drops the snapshot (:meth:`Snapshots.drop`).
- **A listing installs with what changed while it was in flight.** A LIST sent at T0 and
  answered at T1 may have been served before or after a delete, create or rename the mount
  made between T0 and T1: lookups list in the background (lookups.py) and the kernel's
  directory lock does not order a listing against unlink, rename or create in it, nor is a
  FORGET ordered against anything. Installing the listing as it came could resurrect a name
  just deleted, or lose one just written. So while a listing of a directory is in flight
  (:meth:`Snapshots.flight`) the two writers also note each change in its journal (name ->
  record, or absent), and :meth:`Snapshots.install` replays the journal on the listed names.
  A drop during the flight voids it: that listing installs nothing. A listing that started
  before the snapshot held now is not installed (the held one is newer and was kept true).

Memory: a snapshot is dropped once stale, oldest first whenever another is taken, so memory
follows the latest listings (one entry per listed name), not the files ever seen. A journal
exists only while its listing is in flight and holds only the names changed meanwhile.

No I/O and no clock: times are passed in. Directories are anything with ``inode``,
``listed_at`` and ``listing`` (namespace.py's Node), records are opaque here.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class Directory(Protocol):
    """What a snapshot lives on (namespace.py's Node)."""

    inode: int
    listed_at: float
    listing: dict[str, Any] | None


class Flight:
    """One listing of a directory in flight: the changes of its names made meanwhile
    (name -> record, or None for absent), unless ``void``."""

    __slots__ = ("changes", "inode", "void")

    def __init__(self, inode: int) -> None:
        self.inode = inode
        self.changes: dict[str, object] = {}
        self.void = not inode  # a detached directory's listing is never installed


class Snapshots:
    """The listing snapshots of one namespace (see the module)."""

    def __init__(self, ttl: float, directory_of: Callable[[int], Directory | None]) -> None:
        """``ttl``: how long a snapshot proves absence; ``directory_of``: the attached
        directory of an inode number, or None."""
        self.ttl = ttl
        self._directory_of = directory_of
        self._held: OrderedDict[int, None] = OrderedDict()
        """Directories holding a snapshot, oldest listing first."""
        self._flights: dict[int, list[Flight]] = {}
        """Listings in flight, by directory inode."""

    # -- reading --------------------------------------------------------------------

    def fresh(self, directory: Directory, now: float) -> bool:
        return directory.listing is not None and now - directory.listed_at < self.ttl

    @staticmethod
    def entry(directory: Directory, name: str) -> Any:
        """The snapshot's entry of ``name``: a record, else whether it is a directory; None
        if the name was not there (or there is no snapshot)."""
        return directory.listing.get(name) if directory.listing is not None else None

    def in_flight(self, directory: Directory) -> int:
        """How many listings of ``directory`` are in flight (for tests and status)."""
        return len(self._flights.get(directory.inode, ()))

    # -- the one writer -------------------------------------------------------------

    def exists(self, directory: Directory, name: str, record: object) -> None:
        """``name`` exists and is not attached: ``record`` is what is known of it."""
        if directory.listing is not None:
            directory.listing[name] = record
        self._journal(directory, name, record)

    def absent(self, directory: Directory, name: str, *, known: bool) -> None:
        """``name`` is not in the snapshot any more: deleted, renamed away, or attached.
        ``known``: the mount changed that name itself (it was attached, or this is a rename
        or a delete), so the change must outlive a listing in flight. A name that was
        neither attached nor in the snapshot changes nothing (a lookup that found it absent
        must not hide from a listing a name created meanwhile by someone else)."""
        held = directory.listing
        if held is not None and name in held:
            del held[name]
            known = True
        if known:
            self._journal(directory, name, None)

    def drop(self, directory: Directory) -> None:
        """The snapshot no longer proves anything (a name left the table though its key may
        still exist, or the directory left the table): drop it and void the listings of
        the directory in flight."""
        directory.listing = None
        directory.listed_at = -math.inf
        self._held.pop(directory.inode, None)
        for flight in self._flights.get(directory.inode, ()):
            flight.void = True

    def _journal(self, directory: Directory, name: str, entry: object) -> None:
        for flight in self._flights.get(directory.inode, ()):
            flight.changes[name] = entry

    # -- listings -------------------------------------------------------------------

    @contextmanager
    def flight(self, directory: Directory) -> Iterator[Flight]:
        """Journal the changes of ``directory``'s names while a listing of it is in flight
        (from before its request is sent until it is installed or has failed)."""
        flight = Flight(directory.inode)
        if flight.void:
            yield flight
            return
        flights = self._flights.setdefault(flight.inode, [])
        flights.append(flight)
        try:
            yield flight
        finally:
            flights.remove(flight)
            if not flights and self._flights.get(flight.inode) is flights:
                del self._flights[flight.inode]

    def install(self, directory: Directory, listed: dict[str, Any], started: float,
                now: float, *, attached: Collection[str] = (),
                flight: Flight | None = None) -> bool:
        """Make ``listed`` (the names a complete listing that started at ``started`` found,
        not attached) the directory's snapshot, with ``flight``'s changes replayed and the
        names ``attached`` now left out. False (nothing installed) if the flight was voided,
        the directory left the table, or a newer snapshot is held."""
        if (flight is not None and flight.void) or not directory.inode:
            return False
        if directory.listing is not None and directory.listed_at > started:
            return False
        if flight is not None:
            for name, entry in flight.changes.items():
                if entry is None:
                    listed.pop(name, None)
                else:
                    listed[name] = entry
        for name in attached:
            listed.pop(name, None)
        directory.listing = listed
        directory.listed_at = started
        self._held[directory.inode] = None
        self._held.move_to_end(directory.inode)
        self._drop_stale(now)
        return True

    def _drop_stale(self, now: float) -> None:
        """Drop stale snapshots, oldest first, up to the first fresh one."""
        while self._held:
            inode = next(iter(self._held))
            oldest = self._directory_of(inode)
            if oldest is not None and now - oldest.listed_at < self.ttl:
                return
            self._held.popitem(last=False)
            if oldest is not None:
                oldest.listing = None
