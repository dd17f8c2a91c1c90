"""Finding the multipart uploads a dead mount left behind, and only those.

A mount that is SIGKILLed (or loses its machine) cannot abort its open uploads; their parts
then sit in the bucket, invisible and billed, until someone aborts them. ListMultipartUploads
cannot tell chute's uploads from anybody else's: it shows no metadata. So every multipart
upload chute creates is recorded by a small marker object in the bucket, created right after
CreateMultipartUpload and deleted once the upload is completed or aborted::

    <prefix>.chute-uploads/<upload id>   x-amz-meta-chute-key:   the object key (URL-quoted)
                                         x-amz-meta-chute-owner: who made it (below)

The owner is ``v2 boot=B pidns=N pid=P start=S machine=M host=H``: the kernel's boot id, the
PID namespace (inode of /proc/self/ns/pid), the pid, the process start time (field 22 of
/proc/PID/stat, so a recycled pid is not taken for the owner), /etc/machine-id and the URL-quoted
host name. While an upload is live its owner rewrites the marker every ``REFRESH_INTERVAL``
(``keep_fresh``, run by the uploader), so the marker's Last-Modified is a lease.

**The rule** (``verdict``, kept with ``Owner`` in owners.py). At start, a mount judges each
marker under its prefix:

1. same boot and same PID namespace as the judge: alive iff process P exists with start time S;
2. another boot of the same machine (same non-empty machine id and host name): dead;
3. anything else (another PID namespace on this boot, such as a container with the same host
   name; another machine; a marker of the older ``host:pid`` format): the owner cannot be
   checked, so it is alive unless the marker has not been rewritten for ``STALE_AFTER`` (one
   hour, six refresh intervals; generous against clock skew between machine and store). An
   unreadable date counts as fresh: in doubt, nothing is aborted.

A dead marker's upload is aborted only if every check holds; anything else is left alone:

* Markers are untrusted input (anyone who can write the bucket can plant one): the upload id
  (the marker's name) and both values are size-bounded and must be well-formed; the key must
  lie under the mount's own prefix and outside the marker directory. A bad marker is logged
  once (quoted) and ignored, never deleted, never a crash.
* The upload must be listed by ListMultipartUploads under the mount's prefix with exactly the
  marker's key (SeaweedFS aborts by upload id alone, ignoring the key: without this check a
  planted marker could abort anybody's upload). A dead marker whose upload is not pending
  (completed or aborted already) is deleted.

**Temporary objects** (recompose.py: ``<prefix>.chute-temp/<hex>``, ``TEMP_DIR``) are the
uploads of files composed at close. Their marker is the upload's own, kept past the upload's
Complete until the temporary object is deleted (``MultipartSession.keep_marker``), and
renewed all that while. So the rule above covers them: a dead owner's marker whose upload is
no longer pending names a temporary key, and that object is deleted before the marker; a live
owner's is left alone.

The marker directory and the temporary directory are hidden from the mount's listing
(fs/namespace.py).
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import quote, unquote

import trio

from .object_options import TEMP_KEY_DIR, is_temp_key
from .owners import (  # re-exported: the liveness rule is used through this module too
    LEGACY,
    OWNER_V1,
    STALE_AFTER,
    Owner,
    process_start,
    this_process,
    verdict,
)
from .s3 import S3Client

__all__ = ["KEY_META", "MARKER_DIR", "OWNER_META", "OWN_DIRS", "REFRESH_INTERVAL", "STALE_AFTER",
           "TEMP_DIR", "Owner", "abort_lost_creates", "clean", "forget", "is_temp_key",
           "keep_fresh", "marker_key", "process_start", "record", "this_process", "timestamp",
           "verdict"]

log = logging.getLogger(__name__)

MARKER_DIR = ".chute-uploads"
TEMP_DIR = TEMP_KEY_DIR
"""Where temporary objects live (recompose.py), under the mount's prefix."""
OWN_DIRS = (MARKER_DIR, TEMP_DIR)
"""This module's directories at the mount's root: hidden from its listing (fs/namespace.py)."""
KEY_META = "chute-key"
OWNER_META = "chute-owner"
REFRESH_INTERVAL = 600.0
"""Seconds between rewrites of a live upload's marker (its lease)."""

_MAX_UPLOAD_ID = 1024
_MAX_KEY_BYTES = 1024  # S3's limit on a key
_MAX_VALUE = 3 * _MAX_KEY_BYTES + 16  # a fully quoted key, with room to spare
_UPLOAD_ID = re.compile(rf"[!-.0-~]{{1,{_MAX_UPLOAD_ID}}}")  # printable ASCII, no "/"
_MAX_REPORTED = 10_000


# -- the owner's side -------------------------------------------------------------------------


@dataclass
class _Live:
    client: S3Client
    marker: str
    headers: dict[str, str]
    lock: trio.Lock = field(default_factory=trio.Lock)


_live: dict[tuple[int, str], _Live] = {}
"""Markers of this process's live uploads, by (id of client, upload id); keep_fresh renews
them. The entry holds its client, so the id is not reused while it is here."""


def marker_key(client: S3Client, upload_id: str) -> str:
    return client.bucket.key(f"{MARKER_DIR}/{upload_id}")


async def record(client: S3Client, key: str, upload_id: str) -> None:
    """Write the marker of a new upload of ``key`` (and renew it until ``forget``)."""
    headers = {f"x-amz-meta-{KEY_META}": quote(key, safe=""),
               f"x-amz-meta-{OWNER_META}": this_process().encode()}
    entry = _Live(client, marker_key(client, upload_id), headers)
    _live[(id(client), upload_id)] = entry
    try:
        async with entry.lock:
            await client.put_object(entry.marker, b"", headers)
    except BaseException:
        _live.pop((id(client), upload_id), None)
        raise


async def forget(client: S3Client, upload_id: str) -> None:
    """The upload was completed or aborted: delete its marker (after any renewal under way)."""
    entry = _live.pop((id(client), upload_id), None)
    if entry is None:
        await client.delete_object(marker_key(client, upload_id))
        return
    async with entry.lock:
        await client.delete_object(entry.marker)


async def keep_fresh(client: S3Client, interval: float = REFRESH_INTERVAL) -> None:
    """Rewrite this process's live markers on ``client`` every ``interval`` s, until cancelled.

    A renewal that fails is logged and tried again next time: a marker only goes stale after
    ``STALE_AFTER``, six intervals.
    """
    while True:
        await trio.sleep(interval)
        for (client_id, upload_id), entry in list(_live.items()):
            if client_id != id(client):
                continue
            async with entry.lock:
                if _live.get((client_id, upload_id)) is not entry:
                    continue  # forgotten meanwhile: must not come back
                try:
                    await client.put_object(entry.marker, b"", entry.headers)
                except Exception as exc:
                    log.warning("could not renew the marker of upload %r: %s", upload_id, exc)


# -- the judge's side -------------------------------------------------------------------------


async def clean(client: S3Client, *, now: float | None = None) -> int:
    """Abort the uploads of dead mounts under this mount's prefix; returns how many.

    ``now`` (for tests) is the time markers' ages are measured at, default the clock's.
    """
    judge = _Judge(client, this_process(), time.time() if now is None else now)
    async for page in client.list(judge.marker_prefix, delimiter=None):
        for marker in page.objects:
            try:
                await judge.one(marker.key, marker.last_modified)
            except Exception as exc:  # a store error on one marker must not stop the rest
                _report(marker.key, f"could not be judged ({exc})")
    return judge.aborted


class _Judge:
    def __init__(self, client: S3Client, here: Owner, now: float) -> None:
        self.client = client
        self.here = here
        self.now = now
        self.prefix = client.bucket.key("")
        self.marker_prefix = marker_key(client, "")
        self.aborted = 0
        self._pending: dict[str, str] | None = None

    async def one(self, marker: str, listed_modified: str) -> None:
        if not marker.startswith(self.marker_prefix):
            _report(marker, "is not in the marker directory")
            return
        upload_id = marker[len(self.marker_prefix):]
        if not _UPLOAD_ID.fullmatch(upload_id):
            _report(marker, "does not end in a well-formed upload id")
            return
        info = await self.client.head_object(marker)
        if info is None:
            return  # deleted meanwhile: its upload was completed or aborted
        parsed = self._parse(info.metadata)
        if isinstance(parsed, str):
            _report(marker, parsed)
            return
        key, owner = parsed
        modified = timestamp(info.last_modified) or timestamp(listed_modified)
        age = None if modified is None else self.now - modified
        dead, why = verdict(owner, self.here, age)
        if not dead:
            log.info("multipart upload of %r is left alone: %s", key, why)
            return
        pending = await self._pending_uploads()
        listed_key = pending.get(upload_id)
        if listed_key is None:
            if is_temp_key(self.prefix, key):
                await self.client.delete_object(key)
                log.warning("deleted leftover temporary object %r: %s", key, why)
            await self.client.delete_object(marker)
            log.info("deleted the marker of upload %r of %r: %s, and the upload is no longer "
                     "pending", upload_id, key, why)
            return
        if listed_key != key:
            _report(marker, f"names {key!r}, but upload {upload_id!r} is of {listed_key!r}")
            return
        await self.client.abort_multipart_upload(key, upload_id)
        await self.client.delete_object(marker)
        log.warning("aborted leftover multipart upload of %r: %s", key, why)
        self.aborted += 1

    def _parse(self, metadata: dict[str, str]) -> tuple[str, Owner | str] | str:
        """(key, owner) from a marker's metadata, or what is wrong with it."""
        quoted, owner_text = metadata.get(KEY_META, ""), metadata.get(OWNER_META, "")
        if not quoted or len(quoted) > _MAX_VALUE or len(owner_text) > _MAX_VALUE:
            return "has a missing or oversized key or owner"
        try:
            key = unquote(quoted, errors="strict")
        except UnicodeDecodeError:
            return f"names a key that is not UTF-8: {quoted[:200]!r}"
        if len(key.encode()) > _MAX_KEY_BYTES:
            return "names a key longer than S3 allows"
        if not key.startswith(self.prefix) or key == self.prefix:
            return f"names {key!r}, outside this mount's prefix {self.prefix!r}"
        if key.startswith(self.marker_prefix):
            return f"names {key!r}, inside the marker directory"
        if any(part in (".", "..") for part in key[len(self.prefix):].split("/")):
            return f"names {key!r}, with '.' or '..' segments (a store may resolve them)"
        owner = Owner.decode(owner_text)
        if owner is not None:
            return key, owner
        if OWNER_V1.fullmatch(owner_text):
            return key, LEGACY
        return f"has an owner that is not well-formed: {owner_text[:200]!r}"

    async def _pending_uploads(self) -> dict[str, str]:
        """upload id -> key of the uploads pending under this mount's prefix (asked once)."""
        if self._pending is None:
            uploads = await self.client.list_multipart_uploads(self.prefix)
            self._pending = {u.upload_id: u.key for u in uploads
                             if u.key.startswith(self.prefix)}
        return self._pending


_reported: set[str] = set()


def _report(marker: str, problem: str) -> None:
    """Log a bad marker once per process (at most _MAX_REPORTED different ones)."""
    if marker in _reported or len(_reported) >= _MAX_REPORTED:
        return
    _reported.add(marker)
    log.warning("ignoring upload marker %r: it %s", marker, problem)


def timestamp(text: str) -> float | None:
    """Seconds since the epoch from an HTTP date or an ISO 8601 one; None if neither."""
    if not text or len(text) > 64:
        return None
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError):
        return None


# -- a Create whose answer was lost -----------------------------------------------------------


async def abort_lost_creates(client: S3Client, key: str, upload_id: str,
                             window: float) -> int:
    """Abort uploads of ``key`` that a CreateMultipartUpload whose answer was lost made.

    The retry that got through created ``upload_id``; the lost attempts came before it, within
    ``window`` seconds (the time the Create took with its retries). So an upload of the same
    key, initiated in that window before ours (by the store's clock, read off the listing, so
    no clock skew enters), with no marker, is ours and nobody else's, short of another client
    creating an upload of this very key at the same moment without chute's marker. Failing
    here only logs: the file's upload itself is fine. Returns how many were aborted.
    """
    try:
        pending = [u for u in await client.list_multipart_uploads(key) if u.key == key]
        initiated = {u.upload_id: _when(u.initiated) for u in pending}
        ours = initiated.get(upload_id)
        if ours is None:
            log.warning("%s: a CreateMultipartUpload answer was lost, and the listing does not "
                        "show the upload that got through; cannot look for a stray one", key)
            return 0
        aborted = 0
        for upload in pending:
            when = initiated[upload.upload_id]
            if upload.upload_id == upload_id or when is None:
                continue
            if not ours - window - _CLOCK_SLACK <= when <= ours:
                continue
            if await client.head_object(marker_key(client, upload.upload_id)) is not None:
                continue
            await client.abort_multipart_upload(key, upload.upload_id)
            log.warning("%s: aborted multipart upload %s, made by a CreateMultipartUpload whose "
                        "answer was lost", key, upload.upload_id)
            aborted += 1
        return aborted
    except Exception as exc:
        log.warning("%s: a CreateMultipartUpload answer was lost and looking for the upload it "
                    "may have made failed (%s); `chute mount` does not find it later", key, exc)
        return 0


_CLOCK_SLACK = 2.0
"""The store's Initiated has a resolution of a second (SeaweedFS) or a millisecond (AWS)."""


def _when(initiated: str) -> float | None:
    try:
        return datetime.fromisoformat(initiated.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
