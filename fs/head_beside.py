"""A lookup's HEAD sent beside the directory's listing: one round trip, not two.

The kernel's LOOKUP of a name not attached waits for a listing of the directory when its
snapshot is not fresh (lookups.py). A file the listing shows is known by name only
(listings carry no metadata), so its lookup needs a HEAD after the listing anyway. Where
that HEAD is likely to be needed, it is sent with the listing (:func:`worth_sending`):

- the directory was never listed: the first ``open`` in a directory new to the mount;
- its expired snapshot shows the name as a file known by name only: a reader opening the
  files of a directory listed a while ago (restic's packs, a second rsync's stats).

Not for a name the old snapshot lacked (that lookup is mostly a create's: a HEAD per
created file would be a request per file for nothing), and not while a listing is under
way (it answers sooner than a new HEAD would). The HEAD's answer is used only if the
listing shows that very object (ETag) as the file; otherwise the name is asked about as
without it. A failed HEAD leaves no answer; a failed listing fails the lookup.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from chute.uploader.errors import ChuteError

if TYPE_CHECKING:
    from chute.uploader.s3 import ObjectInfo

    from .namespace import Namespace, Node


def worth_sending(ns: Namespace, parent: Node, name: str) -> bool:
    """Whether the lookup of ``name`` will likely need a HEAD after ``parent``'s listing:
    ``parent`` was never listed, or its snapshot (expired: a hint, not an answer) shows
    ``name`` as a file known by name only."""
    return parent.listed_at == -math.inf or ns.listed_by_name_only(parent, name)


class HeadBeside:
    """The HEAD sent beside a listing, and that listing."""

    def __init__(self, sent_at: float) -> None:
        self.sent_at = self.answered_at = sent_at
        self.info: ObjectInfo | None = None
        self.listed: dict[str, Node] | None = None  # None: it waited for one under way

    async def _ask(self, head: Callable[[], Awaitable[ObjectInfo | None]]) -> None:
        with contextlib.suppress(ChuteError):  # no answer: the name is asked about again
            self.info = await head()
            self.answered_at = trio.current_time()

    def agreed(self, name: str) -> ObjectInfo | None:
        """The HEAD's answer if the listing shows that object (ETag) as the file ``name``."""
        info, listed = self.info, (self.listed or {}).get(name)
        same = info and info.etag and listed and not listed.is_dir and listed.etag == info.etag
        return info if same else None


async def list_with_head(relist: Callable[[], Awaitable[dict[str, Node] | None]],
                         head: Callable[[], Awaitable[ObjectInfo | None]]) -> HeadBeside:
    """``relist()`` with ``head()`` sent beside it (both bounded by the caller); raises what
    the listing raised, bare."""
    beside = HeadBeside(trio.current_time())
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(beside._ask, head)
        try:
            beside.listed = await relist()
        except Exception as exc:  # raised below, not wrapped in an exception group
            failure = exc
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return beside
