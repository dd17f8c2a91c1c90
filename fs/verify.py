"""``chute verify LOCAL_FILE REMOTE``: is the uploaded object the local file? Without downloading.

chute hashes every file with xxh3-128 while streaming it and stores the digest with the object
(tag ``chute-xxh3-128``, shown in a mount as the xattr ``user.chute.xxh3_128``). Verifying is
then hashing the local file and comparing with that stored digest: one small request, or one
getxattr, however large the object. REMOTE is a path inside a chute mount, or
``s3://BUCKET/KEY`` read with chute's own S3 client (credentials, region and endpoint by the
AWS conventions, like ``chute mount``).

The sizes are compared first, so a truncated or grown file is a mismatch without hashing it.

Exit status like cmp(1): 0 the same, 1 different, 2 cannot tell (no such file or object, no
digest stored, store unreachable).
"""

from __future__ import annotations

import errno
import os
import sys
from dataclasses import dataclass

import trio
import xxhash

from chute.uploader.checksums import HASH_TAG
from chute.uploader.credentials import CredentialSource, resolve_endpoint, resolve_region
from chute.uploader.errors import ConfigError, StoreError, StoreUnreachable
from chute.uploader.retry import RetryPolicy
from chute.uploader.s3 import Bucket, S3Client

XATTR = "user.chute.xxh3_128"
CHUNK = 1 << 20
SAME, DIFFERENT, TROUBLE = 0, 1, 2


class CannotVerify(Exception):
    """No digest to compare with; the message says why, in one sentence."""


@dataclass(frozen=True)
class Stored:
    digest: str
    size: int


def local_digest(path: str) -> str:
    hasher = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _from_mount(path: str) -> Stored:
    try:
        size = os.stat(path).st_size
        digest = os.getxattr(path, XATTR).decode()
    except FileNotFoundError:
        raise CannotVerify(f"{path} does not exist") from None
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            raise CannotVerify(f"{path} has no {XATTR}: not a finished file in a chute mount"
                               ) from None
        raise CannotVerify(f"cannot read {XATTR} of {path}: {exc.strerror}") from None
    return Stored(digest, size)


def _parse_object(remote: str) -> tuple[str, str]:
    bucket, _, key = remote[len("s3://"):].partition("/")
    if not bucket or not key:
        raise ConfigError(f"REMOTE must be s3://BUCKET/KEY or a path in a mount, got {remote!r}")
    return bucket, key


async def _fetch(client: S3Client, key: str) -> Stored:
    try:
        info = await client.head_object(key)
        if info is None:
            raise CannotVerify(f"there is no object s3://{client.bucket.bucket}/{key}")
        tags = await client.get_tags(key)
    except StoreError as exc:
        raise CannotVerify(f"the store answered {exc}") from None
    except StoreUnreachable as exc:
        raise CannotVerify(f"cannot reach the store: {exc.description}") from None
    finally:
        await client.aclose()
    if not tags.get(HASH_TAG):
        raise CannotVerify(f"s3://{client.bucket.bucket}/{key} has no {HASH_TAG} tag: it was "
                           "not uploaded by chute, or its tag could not be stored")
    return Stored(tags[HASH_TAG], info.size)


def _from_store(remote: str, *, endpoint_url: str | None, region: str | None,
                profile: str | None) -> Stored:
    bucket_name, key = _parse_object(remote)
    bucket = Bucket(bucket_name, "", endpoint_url=resolve_endpoint(profile, endpoint_url),
                    region=resolve_region(profile, region))
    credentials = CredentialSource(profile)
    credentials.load_blocking()
    client = S3Client(bucket, credentials, RetryPolicy(max_attempts=3, budget=20))
    return trio.run(_fetch, client, key)


def verify(local: str, remote: str, *, endpoint_url: str | None = None,
           region: str | None = None, profile: str | None = None) -> int:
    """Print the verdict; the exit status (SAME, DIFFERENT, TROUBLE)."""
    try:
        size = os.stat(local).st_size
        if remote.startswith("s3://"):
            stored = _from_store(remote, endpoint_url=endpoint_url, region=region,
                                 profile=profile)
        else:
            stored = _from_mount(remote)
        if size != stored.size:
            print(f"MISMATCH: {local} is {size} bytes, {remote} is {stored.size} bytes")
            return DIFFERENT
        digest = local_digest(local)
    except (CannotVerify, ConfigError) as exc:
        print(f"chute: cannot verify: {exc}", file=sys.stderr)
        return TROUBLE
    except OSError as exc:  # the local file
        print(f"chute: cannot read {exc.filename or local}: {exc.strerror}", file=sys.stderr)
        return TROUBLE
    if digest == stored.digest.strip().lower():
        print(f"match: {local} = {remote} (xxh3-128 {digest})")
        return SAME
    print(f"MISMATCH: {local} has xxh3-128 {digest}, {remote} has {stored.digest}")
    return DIFFERENT
