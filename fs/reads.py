"""Open files for reading: finished objects read through ranged GETs (``--allow-read``).

A read handle is one FUSE open of a *finished* object for reading. With ``--allow-read`` it
pins the object's version at open (key, size and ETag, from the node if the store confirmed
it within LOOKUP_TTL, else from a fresh HEAD) and serves every read() through an
:class:`chute.uploader.prefetch.ObjectReader`: ranged GETs sent with ``If-Match``, charged to
the mount's one :class:`~chute.uploader.read_budget.ReadBudget` (separate from the write
ring), running as tasks of the nursery :meth:`ReadHandles.run` owns (so unmounting cancels
them). The rules, and why:

- **Reads off (the default).** An open for reading of a finished object succeeds and its
  first read() fails with EACCES; the refusal is logged once per mount, naming
  ``--allow-read``. rsync opens every file it received O_RDONLY to set its mode through the
  descriptor: refusing the open would fail the transfer, refusing the read fails nothing that
  worked before.
- **A file being written** (its upload not ended) cannot be opened for reading: EBUSY, reads
  on or off. Its bytes are in the ring or already sent, never in one place to read from; and
  a reading descriptor would look like a holder of the writing open to openers.py.
- **Consistency.** The reader sees the version pinned at open; a replaced or deleted object
  makes its next GET fail (412/404) and the read fail with ESTALE, never a mix of versions.
  A store that stays away past the retry budget gives EIO.
- **The kernel page cache** may keep a file's pages across opens only while its ETag is
  unchanged: ``keep_cache`` is set on an open only if the previous open for reading of the
  node pinned the same ETag and nothing opened the node for writing since; otherwise the
  kernel drops the node's pages at open. An open that finds an older version still open for
  reading also clears the memory (that reader may still fill pages from its window), so the
  open after it drops the pages again.
- **``--direct-reads``** opens every read handle with FUSE direct I/O instead: no page
  cache, so each read() is one READ of the reader's size (up to 1 MiB), answered straight
  into the reader's buffer, and nothing is kept between opens. It saves the kernel's two
  copies of each byte (into the page cache, out of it) for readers of 1 MiB at a time, and
  costs small readers dearly: read in 10 KiB pieces (tar's records), 2 GiB came at 120 MB/s
  on 6.0 s of mount CPU per GiB, against 440 MB/s and 0.8 s through the page cache
  (docs/performance.md). A shared mmap of such a file is ENODEV
  (the kernel's rule for direct I/O; a private one works). Off by default for that reason.
- **O_RDWR is a write open** (handles.py), never a read handle: with O_TRUNC (or creating) a
  new upload, without O_TRUNC an upload that continues the object (the old object stays
  until its close replaces it; closed unwritten, the object stays as it was). A read()
  through it is EACCES: nothing of a file being written is readable until its last close,
  and the bytes a continuing upload copies server-side never pass through the mount. Tools
  that only read open O_RDONLY (restic, duplicity, borg, cp, cmp do).

Read handles have file handle numbers from READ_FH_BASE up, so the FUSE adapter can tell
them from the write handles of handles.py without asking either table.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import trio

from chute.uploader.errors import ObjectChanged
from chute.uploader.prefetch import DEFAULT_TUNING, ObjectReader, RangeSource, ReadTuning
from chute.uploader.read_budget import ReadBudget, ReadStatistics
from chute.uploader.read_buffers import BufferPool

from .background import BackgroundTasks
from .lookups import LOOKUP_TTL
from .namespace import Namespace, Node
from .readahead import READ_AHEAD_KIB
from .refused import Refused

if TYPE_CHECKING:
    from .lookups import Lookups

log = logging.getLogger(__name__)

READ_FH_BASE = 1 << 48
"""File handles of read handles start here (handles.py counts up from 1)."""
REQUEST = 8 * 1024 * 1024
"""The largest GET of a mount's readers, and the blocks a sequential reader's GETs are
aligned to (ReadTuning.align): thirteen fit the default budget's window. Measured against
SeaweedFS, 1 GiB read in the same runs (docs/performance.md, Reads): 6 MiB GETs, which
straddle its chunks, cost the store 2.9-3.1 s of CPU per GiB against 2.2-2.4 for 8 MiB
aligned ones (as much as a direct download), and read at 137-210 MB/s against 262-351;
4 MiB aligned GETs sat in between."""
MAX_WINDOW = 128 * 1024 * 1024
"""A lone reader's window stops growing here, however large the budget: eight GETs of 8 MiB in
flight and room for as many answered ahead of the reader (see mount_tuning); more would only
hold memory. Reached from a 192 MiB budget."""
MAX_IN_FLIGHT = 8
"""GETs a streaming reader keeps in flight at most: as many as the direct download keeps.
Over a 100 ms link with no cap (bench --link, 1 GiB) eight of the default window's thirteen
read at 0.95 of the direct download, seven at 0.75-0.87 (docs/performance.md)."""
MIN_IN_FLIGHT = 4
"""GETs a sequential reader keeps in flight at least (the window permitting): on loopback
four 8 MiB GETs keep SeaweedFS busy (it is the bound on 2 cores)."""
STREAM_FROM_START = READ_AHEAD_KIB * 1024
"""A sequential run from a file's first byte streams once this long
(ReadTuning.stream_from_start): one READ of the kernel's full readahead, i.e. a reader that
asked for 1 MiB or more from the start (dd, cp, tar, a checksum) or read on that far. A run
that began at a jump (restic's and borg's pieces of a pack) still grows its requests from
512 KiB, one ahead per read, and streams only once REQUEST long, so a piece read costs about
itself. Streaming from the 8 MiB mark instead, a reader over a 100 ms link waited 1.2 s for
GETs one at a time on new connections before going wide; from 1 MiB the first GETs share
their slow start (bench --link, 256 MiB: 0.61 -> 0.81-0.84 of the direct download)."""
CACHE_MEMORY = 65536
"""Nodes whose last pinned ETag is remembered for ``keep_cache``; a forgotten one only costs
the kernel dropping pages it could have kept."""


@dataclass(frozen=True)
class ReadSetup:
    """What a mount gives its read handles (built by mount.py from ``--allow-read``)."""

    allow: bool = False
    direct: bool = False
    """``--direct-reads``: read opens bypass the page cache (see the module docstring)."""
    source: RangeSource | None = None
    """Where ranged GETs go: an S3Client of its own, with the mount's credentials and
    retry policy (so readers never queue behind uploads for connections)."""
    budget: ReadBudget | None = None
    tuning: ReadTuning | None = None
    """None: :func:`mount_tuning` of the budget."""
    on_first_open: Callable[[], object] | None = None
    """Called once, at the first open for reading: the kernel has answered INIT by then (it
    resets a mount's readahead when it does), and a file takes its readahead when it is
    opened, so raising it here (readahead.py) holds for every reader, the first included."""


def mount_tuning(budget: ReadBudget) -> ReadTuning:
    """The prefetcher's sizes for a mount: requests of up to REQUEST bytes, a window that may
    grow to the prefetch part of the budget less two requests (the budget does not see the
    idle receive buffers the readers' pool keeps, two requests' worth, see ReadHandles, nor
    each connection's buffers, and the mount's peak RSS must stay within the budget +
    64 MiB), and at most five eighths of that window (MAX_IN_FLIGHT at most) in GETs in
    flight.

    Why not all of it in flight: chunks are consumed in order, so a GET that answers while
    the one before it is still coming has to wait in the window; the rest is where it
    waits while its connection goes straight on to the next GET (prefetch.py's fill). With
    the whole window in flight, a connection that answered early sat idle until the reader
    caught up, and on a long link an idle spell over the retransmission timeout sends TCP
    back to slow start: at 100 ms RTT an 8 MiB GET then takes 1.0 s instead of 0.31, the
    GETs behind it wait idle in turn, and the read settled at a third of the link (bench
    --link, docs/performance.md). With the default 128 MiB budget the window is 104 MiB:
    eight 8 MiB GETs in flight, as the direct download keeps, and five more of room (half of
    it in flight, seven, read 1 GiB at 100 ms at 0.75-0.87 of the direct download against
    0.95); with more readers each one's fair share of the budget caps the window.
    (Measured before: the engine's default window, 32 MiB, read 1 GiB on loopback at
    145 MB/s where the direct download made 300.)"""
    window = max(min(budget.prefetch_capacity - 2 * REQUEST, MAX_WINDOW), 2 * REQUEST,
                 DEFAULT_TUNING.initial_request)
    in_flight = max(MIN_IN_FLIGHT, min(MAX_IN_FLIGHT, window * 5 // (8 * REQUEST)))
    return replace(DEFAULT_TUNING, max_request=REQUEST, align=REQUEST, max_window=window,
                   max_in_flight=in_flight, stream_from_start=STREAM_FROM_START)


@dataclass(eq=False)
class ReadHandle:
    node: Node
    reader: ObjectReader | None
    """None while reads are off: the first read() is EACCES."""
    path: str


class ReadHandles(BackgroundTasks):
    """The read handles of one mount; see the module docstring. Its background tasks
    (:meth:`run`, background.py) are the readers' GETs."""

    def __init__(self, namespace: Namespace, lookups: Lookups, setup: ReadSetup) -> None:
        self.ns = namespace
        self.lookups = lookups
        self.allow = setup.allow
        self.direct = setup.direct and setup.allow
        self._source = setup.source
        self._budget = setup.budget if setup.budget is not None else ReadBudget()
        self._tuning = setup.tuning or mount_tuning(self._budget)
        self._buffers = BufferPool(2 * self._tuning.max_request)
        """The readers' receive buffers (read_buffers.py): GET bodies land in reused memory
        and read() replies are views of it, not copies."""
        self._handles: dict[int, ReadHandle] = {}
        self._next_fh = READ_FH_BASE
        self._cached: OrderedDict[int, str] = OrderedDict()
        """inode -> ETag the kernel may hold pages of (see the module docstring)."""
        self._refusal_logged = False
        self._on_first_open = setup.on_first_open
        self.opened = 0
        self.refused_reads = 0
        self.stale_reads = 0

    def __len__(self) -> int:
        return len(self._handles)

    @staticmethod
    def owns(fh: int) -> bool:
        return fh >= READ_FH_BASE

    # -- opening --------------------------------------------------------------------

    def wants(self, node: Node, flags: int) -> bool:
        """Whether this open of an existing node is a read handle's (else handles.py's)."""
        return not node.is_dir and flags & (os.O_ACCMODE | os.O_TRUNC) == os.O_RDONLY

    async def open(self, node: Node, flags: int) -> tuple[int, bool]:
        """Open ``node`` for reading: its file handle, and whether the kernel may keep the
        pages it has of it (``keep_cache``)."""
        path = self.ns.path(node)
        if node.upload is not None:
            raise Refused(errno.EBUSY, "%s is being written: it can be read once its last "
                          "close has returned", path)
        if not self.allow:
            return self._add(ReadHandle(node, None, path)), False
        if self._nursery is None or self._source is None:
            raise Refused(errno.EIO, "%s: reads are not running on this mount", path)
        if self._on_first_open is not None:
            first, self._on_first_open = self._on_first_open, None
            first()
        if node.needs_head or not node.etag or \
                trio.current_time() - node.checked_at >= LOOKUP_TTL:
            await self.lookups.refresh(node)  # ENOENT if it has gone
            if node.upload is not None:
                raise Refused(errno.EBUSY, "%s is being written: it can be read once its "
                              "last close has returned", path)
        reader = ObjectReader(self._source, self._budget, key=self.ns.key(node),
                              size=node.size, etag=node.etag, nursery=self._nursery,
                              tuning=self._tuning, buffers=self._buffers)
        keep = self._keep_cache(node, node.etag)
        self.opened += 1
        return self._add(ReadHandle(node, reader, path)), keep

    def _add(self, handle: ReadHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        handle.node.opens += 1
        return fh

    def _keep_cache(self, node: Node, etag: str) -> bool:
        older_open = any(h.node is node and h.reader is not None and h.reader.etag != etag
                         for h in self._handles.values())
        keep = self._cached.get(node.inode) == etag and not older_open
        self._cached[node.inode] = "" if older_open else etag
        self._cached.move_to_end(node.inode)
        while len(self._cached) > CACHE_MEMORY:
            self._cached.popitem(last=False)
        return keep

    def forget_cache(self, node: Node) -> None:
        """``node`` is opened for writing: the next open for reading drops its pages."""
        self._cached.pop(node.inode, None)

    # -- reading --------------------------------------------------------------------

    def get(self, fh: int) -> ReadHandle:
        handle = self._handles.get(fh)
        if handle is None:
            raise Refused(errno.EBADF)
        return handle

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        """The bytes for a READ; a view valid until the handle's next read or release (the
        FUSE adapter replies with it at once: ObjectReader.read_view)."""
        handle = self.get(fh)
        if handle.reader is None:
            self.refused_reads += 1
            if not self._refusal_logged:
                self._refusal_logged = True
                raise Refused(errno.EACCES, "%s: the mount is write-only, every read() is "
                              "EACCES (logged once per mount): mount with --allow-read to "
                              "read finished objects", handle.path)
            raise Refused(errno.EACCES)
        try:
            return await handle.reader.read_view(offset, size)
        except ObjectChanged:
            self.stale_reads += 1
            handle.node.needs_head = True  # the next stat asks the store what it holds now
            self._cached.pop(handle.node.inode, None)
            raise

    def refuse_write(self, fh: int) -> None:
        """A write through a read handle (the kernel refuses those of an O_RDONLY open)."""
        handle = self.get(fh)
        raise Refused(errno.EBADF, "%s is open for reading only", handle.path)

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        handle.node.opens -= 1
        try:
            if handle.reader is not None:
                await handle.reader.aclose()
        finally:
            self.ns.release(handle.node)
            if not self._handles:
                self._buffers.clear()  # nobody reads: the idle buffers go back to the system

    def statistics(self) -> ReadStatistics:
        return self._budget.statistics()
