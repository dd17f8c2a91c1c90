"""Asking the store once, at mount, whether it keeps a backslash in a key byte-for-byte.

SeaweedFS turns ``\\`` into ``/`` (a PUT of ``a\\x.txt`` lands at ``a/x.txt``), so a name
with a backslash written through the mount would land under another key: ``trail\\`` became
a ``trail/`` directory marker and ``close()`` returned 0; with ``--allow-other`` another user
could write ``pub/root-only\\config`` and so replace ``pub/root-only/config``. AWS S3 keeps
the key as sent. Which one a store is, is measured rather than guessed from its name: a tiny
object whose key holds a backslash is PUT under the mount's own marker directory
(uploader/leftovers.py; never a user's name), the listing of its key tells whether that key
came back exactly, and the probe (and what the store made of it) is deleted again.

The answer becomes :attr:`chute.fs.namespace.Namespace.keeps_backslash`. If the probe
cannot run (no write permission, the store away), backslashes are refused: the safe answer.
Either way one log line says what was decided.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import TYPE_CHECKING

import trio

from chute.uploader import leftovers

if TYPE_CHECKING:
    from chute.uploader.s3 import S3Client

log = logging.getLogger(__name__)

PROBE_DEADLINE = 30.0
"""Seconds the whole probe may take; past that, backslashes are refused."""


def probe_key(client: S3Client) -> str:
    """A fresh key with a backslash in the mount's marker directory."""
    return client.bucket.key(f"{leftovers.MARKER_DIR}/probe-{uuid.uuid4().hex}\\x")


async def keeps_backslash(client: S3Client) -> bool:
    """Whether the store keeps ``\\`` in a key as sent (see the module); False if unsure."""
    key = probe_key(client)
    rewritten = key.replace("\\", "/")
    try:
        with trio.fail_after(PROBE_DEADLINE):
            try:
                await client.put_object(key, b"", {})
                listed: set[str] = set()
                head = key.rpartition("\\")[0]
                async with contextlib.aclosing(client.list(head, delimiter=None)) as pages:
                    async for page in pages:
                        listed.update(obj.key for obj in page.objects)
                kept = key in listed
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(PROBE_DEADLINE):
                    for one in (key, rewritten):
                        with contextlib.suppress(Exception):
                            await client.delete_object(one)
    except Exception as exc:
        log.warning("could not probe whether the store keeps a backslash in a key (%s): "
                    "names with a backslash are refused (EINVAL)", exc)
        return False
    if kept:
        log.info("the store keeps a backslash in a key: names with one are allowed")
    else:
        # The common case (SeaweedFS), not a fault: said once, at the level of the mount line.
        log.info("the store does not keep a backslash in a key (it stored %r as %s): "
                 "names with a backslash are refused (EINVAL)", key,
                 "something else" if rewritten not in listed else repr(rewritten))
    return kept
