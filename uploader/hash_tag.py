"""The xxh3-128 tag of a finished multipart object: the stream's hash, or one read back.

A PutObject carries the file's hash as its tag; a multipart object gets it after Complete.
When the hash the stream computed does not describe the object (parts copied server-side,
writes out of file order, late patches), the object is read back to hash it
(``MultipartSession.read_back_hash``: one chunk in memory at a time, one read-back per
mount at a time). The object is complete by then, so a failure here only logs: the close
still succeeds, and ``chute verify`` reports the missing tag. The one home of that rule for
a file's Complete (commit.py) and a composition's (recompose.py).
"""

from __future__ import annotations

import logging

from .multipart import MultipartSession

log = logging.getLogger(__name__)


async def tag_object(session: MultipartSession, path: str, xxh3_128: str | None, *,
                     size: int, chunk: int, why: str) -> tuple[str, int]:
    """Tag ``session``'s object with ``xxh3_128``, or, when it is None, with the hash of the
    object read back in ``chunk``-byte pieces (``why``: the reason, for the log). Returns
    the hash ("" if it could not be had) and the bytes read back. Never raises an
    Exception."""
    fetched = 0
    try:
        if xxh3_128 is None:
            log.info("%s: %s; reading the object back to record its xxh3-128", path, why)
            xxh3_128 = await session.read_back_hash(size, chunk)
            fetched = size
        await session.tag(xxh3_128)
    except Exception as exc:
        log.warning("%s: object complete, but storing its xxh3-128 tag failed: %s", path, exc)
    return xxh3_128 or "", fetched
