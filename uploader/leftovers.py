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
