"""Aborts that could not be made when an upload failed, retried until the store answers.

A file's upload fails mostly because the store went away; the abort of its multipart upload
then fails too. The writer must not wait for it (it gets its EIO after the short
``ABORT_BUDGET`` of multipart.py), so the abort is handed here and tried again every
``JANITOR_INTERVAL`` seconds, one attempt each time: the store coming back is what makes one
succeed. What is left when the mount stops is logged; its marker stays in the bucket, so the
next mount of the prefix aborts it (leftovers.py).

An upload at a temporary key (recompose.py) is handed here the same way when its temporary
object could not be deleted: for such a key the object is deleted too once the abort worked
(an abort of an upload already completed counts as done), and only then its marker.
"""

from __future__ import annotations

import contextlib
import logging

import trio

from . import leftovers
from .retry import RetryPolicy
from .s3 import S3Client

log = logging.getLogger(__name__)

JANITOR_INTERVAL = 2.0


class AbortJanitor:
    """Multipart uploads (key, upload id) whose abort failed; :meth:`run` retries them."""

    def __init__(self, client: S3Client) -> None:
        self._client = client
        self._orphans: set[tuple[str, str]] = set()

    @property
    def pending(self) -> int:
        return len(self._orphans)

    def defer(self, key: str, upload_id: str) -> None:
        """Abort ``upload_id`` of ``key`` later (its marker is deleted once that worked)."""
        self._orphans.add((key, upload_id))

    async def run(self) -> None:
        """Retry the deferred aborts until cancelled."""
        once = RetryPolicy(max_attempts=1)
        try:
            while True:
                await trio.sleep(JANITOR_INTERVAL)
                for key, upload_id in sorted(self._orphans):
                    try:
                        await self._client.abort_multipart_upload(key, upload_id, policy=once)
                        if leftovers.is_temp_key(self._client.bucket.prefix, key):
                            await self._client.delete_object(key, policy=once)
                    except Exception as exc:
                        log.debug("abort of %s (%s) still failing: %s", key, upload_id, exc)
                    else:
                        log.info("aborted leftover multipart upload of %s%s", key,
                                 " and deleted it" if leftovers.is_temp_key(
                                     self._client.bucket.prefix, key) else "")
                        self._orphans.discard((key, upload_id))
                        with contextlib.suppress(Exception):
                            await leftovers.forget(self._client, upload_id)
        finally:
            for key, upload_id in sorted(self._orphans):
                log.warning("multipart upload %s of %s could not be aborted; the next mount "
                            "of this prefix will", upload_id, key)
