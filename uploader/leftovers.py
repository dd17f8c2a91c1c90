"""Finding the multipart uploads a dead mount left behind, and only those.

A mount that is SIGKILLed (or loses its machine) cannot abort its open uploads; their parts
then sit in the bucket, invisible and billed, until someone aborts them. ListMultipartUploads
cannot tell chute's uploads from anybody else's: it shows no metadata. So every multipart
upload chute creates is recorded by a small marker object in the bucket, created right after
CreateMultipartUpload and deleted once the upload is completed or aborted::

    <prefix>.chute-uploads/<upload id>     x-amz-meta-chute-key:   the object key (URL-quoted)
                                           x-amz-meta-chute-owner: host:pid of the mount

At start, a mount lists the markers under its prefix and aborts the uploads whose owner is a
process on this host that is no longer running. Markers from other hosts, or from a live
process, are reported and left alone: another mount may be using them right now. The marker
directory is hidden from the mount's listing.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime
from urllib.parse import quote, unquote

from .s3 import S3Client

log = logging.getLogger(__name__)

MARKER_DIR = ".chute-uploads"
KEY_META = "chute-key"
OWNER_META = "chute-owner"


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def marker_key(client: S3Client, upload_id: str) -> str:
    return client.bucket.key(f"{MARKER_DIR}/{upload_id}")


async def record(client: S3Client, key: str, upload_id: str) -> None:
    headers = {f"x-amz-meta-{KEY_META}": quote(key, safe=""),
               f"x-amz-meta-{OWNER_META}": owner_id()}
    await client.put_object(marker_key(client, upload_id), b"", headers)


async def forget(client: S3Client, upload_id: str) -> None:
    await client.delete_object(marker_key(client, upload_id))


def _is_dead_local(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"chute" not in f.read()
    except FileNotFoundError:
        return True


async def clean(client: S3Client) -> int:
    """Abort the uploads of dead mounts on this host under this prefix; returns how many."""
    aborted = 0
    prefix = client.bucket.key(f"{MARKER_DIR}/")
    async for page in client.list(prefix, delimiter=None):
        for marker in page.objects:
            upload_id = marker.key[len(prefix):]
            info = await client.head_object(marker.key)
            if info is None:
                continue
            key = unquote(info.metadata.get(KEY_META, ""))
            owner = info.metadata.get(OWNER_META, "")
            if not key:
                continue
            if not _is_dead_local(owner):
                log.info("multipart upload of %s belongs to %s, which may be alive; left alone",
                         key, owner)
                continue
            await client.abort_multipart_upload(key, upload_id)
            await client.delete_object(marker.key)
            log.warning("aborted leftover multipart upload of %s from a mount that died (%s)",
                        key, owner)
            aborted += 1
    return aborted


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
