"""An in-memory store whose directory listings can be held or slowed, and the kernel's way of
making a file, for tests of lookups over a mount's FUSE handlers (tests/support/memory_mount):
tests/test_lookups_refresh.py and tests/test_lookups_paths.py share them from here.
"""

from __future__ import annotations

import errno
import os

import trio
import trio.testing

from chute.fs.namespace import ROOT_INODE, Node
from chute.fs.operations import ChuteOperations

from .memory_mount import CTX, WRITE, Mounted, errno_of
from .memory_s3 import MemoryS3

RELIST_PAGE = "1000"
"""The max-keys of a directory listing made for lookups (chute.fs.lookups.RELIST_MAX_KEYS)."""


class HeldListings(MemoryS3):
    """A store whose directory listings (ListObjectsV2 of a relist's page size) are served
    when asked but answered only once ``gate`` is open, or after ``delay`` seconds: the
    mount may change the directory between the two. HEADs may be held too, before they are
    served (``head_gate``, ``head_delay``): the object may change before one is."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.gate.set()
        self.delay = 0.0
        self.served = 0
        """Relist pages served (answered or held)."""
        self.held = trio.Event()
        """Set when a relist page has been served and is being held at the gate."""
        self.head_gate = trio.Event()
        self.head_gate.set()
        self.head_delay = 0.0
        self.head_held = trio.Event()
        """Set when a HEAD is being held at ``head_gate`` (not served yet)."""

    async def handle(self, request):  # type: ignore[no-untyped-def,override]
        if request.method == "HEAD":
            if not self.head_gate.is_set():
                self.head_held.set()
            await self.head_gate.wait()
            if self.head_delay:
                await trio.sleep(self.head_delay)
        answer = await super().handle(request)
        if request.url.params.get("max-keys") == RELIST_PAGE:
            self.served += 1
            if not self.gate.is_set():
                self.held.set()
            await self.gate.wait()
            if self.delay:
                await trio.sleep(self.delay)
        return answer

    def hold(self) -> None:
        """Hold the next listings at the gate until ``gate.set()``."""
        self.gate = trio.Event()
        self.held = trio.Event()

    def hold_heads(self) -> None:
        """Hold the next HEADs, before they are served, until ``head_gate.set()``."""
        self.head_gate = trio.Event()
        self.head_held = trio.Event()


async def write_file(ops: ChuteOperations, parent: int, name: str, data: bytes = b"x"
                     ) -> int:
    """The kernel's way: a LOOKUP that fails, then create, write, flush, release."""
    assert await errno_of(ops.lookup(parent, name.encode(), CTX)) == errno.ENOENT
    info, attrs = await ops.create(parent, name.encode(), 0o600, WRITE | os.O_CREAT, CTX)
    await ops.write(info.fh, 0, data)
    await ops.flush(info.fh)
    await ops.release(info.fh)
    return attrs.st_ino


async def landed(m: Mounted) -> None:
    """Wait until no background listing is left in flight."""
    for _ in range(100):
        if not m.ops.lookups.ahead.underway:
            return
        await trio.testing.wait_all_tasks_blocked()
    raise AssertionError("a background listing is still in flight")


async def mkdir(m: Mounted, name: str, parent: int = ROOT_INODE) -> Node:
    """A directory made through the mount (the kernel's MKDIR); its namespace node."""
    attrs = await m.ops.mkdir(parent, name.encode(), 0o755, CTX)
    return m.ops.ns.node(attrs.st_ino)
