"""``chute mount``'s "Upload options": the flags, their checks, and the object-lock preflight.

The flags (one argparse group, so the TOML keys and the fstab options follow from them, see
config_file.py and mount_helper.py) become an :class:`~chute.uploader.object_options.ObjectOptions`
and a :class:`~chute.uploader.bandwidth.BandwidthSchedule`, checked before anything starts,
each problem one sentence (exit 1). The S3 client then applies them to every request
(uploader/object_options.py says which headers each call gets).

Object lock: a bucket without it refuses the lock headers (InvalidRequest), which would make
every close() fail. So the mount asks first: :func:`check_object_lock` PUTs a zero-byte probe
under the mount's marker directory with the lock headers, and a refusal is one sentence at
mount, nothing mounted. The probe is retained for ``PROBE_RETAIN_SECONDS`` only (longer than
the clock skew SigV4 allows, so never "in the past" for the store) in the mount's lock mode, and
is then deleted (on a versioned, lock-enabled bucket that adds a delete marker; its one
zero-byte version expires from retention minutes later: a lifecycle rule for noncurrent
versions removes it). A mount with only ``--legal-hold`` probes with that GOVERNANCE
retention too, since a legal-held probe could never be deleted.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import logging
import uuid
from datetime import UTC, datetime, timedelta

import trio

from chute.uploader import leftovers
from chute.uploader.bandwidth import BandwidthSchedule, parse_bwlimit
from chute.uploader.errors import ConfigError, StoreError, StoreUnreachable
from chute.uploader.object_options import (
    CANNED_ACLS,
    LOCK_MODES,
    SSE_MODES,
    ObjectOptions,
    check,
)
from chute.uploader.s3 import S3Client

log = logging.getLogger(__name__)

PROBE_RETAIN_SECONDS = 20 * 60
"""How long the object-lock probe is retained: past SigV4's 15 minutes of allowed skew."""


def _bwlimit(text: str) -> BandwidthSchedule:
    try:
        return parse_bwlimit(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(mount: argparse.ArgumentParser) -> None:
    """The "upload options" group of ``chute mount``."""
    group = mount.add_argument_group("upload options")
    group.add_argument("--storage-class", metavar="CLASS",
                       help="storage class of every object (STANDARD, STANDARD_IA, ONEZONE_IA, "
                       "INTELLIGENT_TIERING, GLACIER_IR, GLACIER, DEEP_ARCHIVE, or your "
                       "store's); kept by renames and chmod (default: the bucket's)")
    group.add_argument("--sse", choices=SSE_MODES,
                       help="server-side encryption of every object, also on copies "
                       "(default: the bucket's)")
    group.add_argument("--sse-kms-key-id", metavar="KEY",
                       help="the KMS key for --sse aws:kms (default: the account's aws/s3 key)")
    group.add_argument("--sse-c-key-file", metavar="FILE",
                       help="SSE-C: encrypt every object with the 256-bit key in FILE (yours, "
                       "mode 0600; 32 raw bytes or their base64), sent on every request that "
                       "needs it, reads too")
    group.add_argument("--object-lock-mode", choices=LOCK_MODES,
                       help="object lock retention of every object (with "
                       "--object-lock-retain); the bucket must have object lock, checked at "
                       "mount; implies --no-overwrite and --no-delete")
    group.add_argument("--object-lock-retain", metavar="DURATION",
                       help="retention from each object's upload: 30d, 12h, 2w, 1y")
    group.add_argument("--legal-hold", action="store_true",
                       help="put every object under legal hold; implies --no-overwrite and "
                       "--no-delete")
    group.add_argument("--acl", choices=CANNED_ACLS, metavar="ACL",
                       help="canned ACL of every object, e.g. bucket-owner-full-control "
                       "for a bucket of another account (default: none sent)")
    group.add_argument("--no-content-type", action="store_true",
                       help="send no Content-Type (default: from the file name, Python's "
                       "mimetypes, application/octet-stream if unknown)")
    group.add_argument("--tag", action="append", metavar="KEY=VALUE",
                       help="a tag on every object beside chute's hash tag, for lifecycle "
                       "rules; repeatable, at most 9")
    group.add_argument("--bwlimit", type=_bwlimit, metavar="RATE",
                       help="upload bandwidth of the whole mount: 20MiB/s, 5M, or a schedule "
                       "'08:00,5M 19:00,off' (local times; default: off)")


def object_options(args: argparse.Namespace) -> ObjectOptions:
    """The checked ObjectOptions of parsed ``chute mount`` arguments (ConfigError if bad)."""
    return check(storage_class=args.storage_class, sse=args.sse,
                 sse_kms_key_id=args.sse_kms_key_id, sse_c_key_file=args.sse_c_key_file,
                 lock_mode=args.object_lock_mode, lock_retain=args.object_lock_retain,
                 legal_hold=args.legal_hold, acl=args.acl,
                 content_type=not args.no_content_type, tags=args.tag or ())


def describe(options: ObjectOptions, bwlimit: BandwidthSchedule | None) -> str:
    """One log line's worth: the upload options that differ from the defaults (no key)."""
    said = [f"{name} {value}" for name, value in (
        ("storage class", options.storage_class), ("SSE", options.sse),
        ("KMS key", options.sse_kms_key_id), ("object lock", options.lock_mode),
        ("ACL", options.acl)) if value]
    if options.sse_c_key is not None:
        said.append("SSE-C")
    if options.lock_retain_seconds:
        said.append(f"retained {options.lock_retain_seconds // 86400} d "
                    f"{options.lock_retain_seconds % 86400 // 3600} h")
    if options.legal_hold:
        said.append("legal hold")
    if options.tags:
        said.append("tags " + ", ".join(f"{k}={v}" for k, v in options.tags))
    if not options.content_type:
        said.append("no Content-Type")
    if bwlimit is not None:
        said.append(f"bwlimit {bwlimit.describe()}")
    return "; ".join(said) or "none"


def probe_key(client: S3Client) -> str:
    return client.bucket.key(f"{leftovers.MARKER_DIR}/lock-probe-{uuid.uuid4().hex}")


async def check_object_lock(client: S3Client, options: ObjectOptions) -> None:
    """With object lock asked for, make sure the bucket takes it: ConfigError otherwise."""
    if not options.object_lock:
        return
    until = datetime.now(UTC) + timedelta(seconds=PROBE_RETAIN_SECONDS)
    headers = {
        "Content-MD5": base64.b64encode(hashlib.md5(b"").digest()).decode(),
        "x-amz-object-lock-mode": options.lock_mode or "GOVERNANCE",
        "x-amz-object-lock-retain-until-date": until.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
    }
    key = probe_key(client)
    bucket = client.bucket.bucket
    try:
        with trio.fail_after(30):
            await client.put_object(key, b"", headers)
    except trio.TooSlowError:
        raise ConfigError(f"checking object lock on bucket {bucket!r}: no answer in 30 s"
                          ) from None
    except StoreError as exc:
        if exc.code in ("InvalidRequest", "InvalidBucketState",
                        "ObjectLockConfigurationNotFoundError"):
            raise ConfigError(f"bucket {bucket!r} does not have object lock enabled, so "
                              "--object-lock-mode/--legal-hold cannot be used with it (object "
                              "lock is chosen when a bucket is created)") from None
        if exc.code == "AccessDenied" or exc.status == 403:
            raise ConfigError(f"the credentials may not set object lock retention in bucket "
                              f"{bucket!r} (s3:PutObjectRetention): {exc.code}") from None
        raise ConfigError(f"checking object lock on bucket {bucket!r}: the store answered "
                          f"{exc}") from None
    except StoreUnreachable as exc:
        raise ConfigError(f"checking object lock on bucket {bucket!r}: {exc.description}"
                          ) from None
    log.info("bucket %s takes object lock (%s); probe %s", bucket,
             options.lock_mode or "legal hold", key)
    with contextlib.suppress(StoreError, StoreUnreachable), trio.move_on_after(10):
        await client.delete_object(key)
