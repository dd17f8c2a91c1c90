"""Checks of ``chute mount``'s input that run before anything starts.

Every value a user (or a config file) gives is checked here, or in
:meth:`UploaderConfig.validate` for the uploader's numbers, before the embedded store starts,
before anything is mounted, and before ``--daemon`` detaches: a bad value is one sentence on
stderr and a non-zero exit, never a traceback and never a mount that fails every write later.

- The remote: S3's bucket naming rules, and a prefix that names keys the way the mount will
  write them (no ``.``/``..`` or empty segments, no control characters, no ``#``/``?`` that an
  HTTP client would take for a fragment or a query, at most 1024 bytes).
- The endpoint: an ``http``/``https`` URL with a host, and nothing after the path.
- The ring: it must fit in the memory the machine can give it (a 1 TiB ring is refused, not
  an ENOMEM from ``mmap`` after the store started).
- Descriptors: the soft ``RLIMIT_NOFILE`` is raised to the hard limit, and the mount is
  refused if even that leaves no reserve for FUSE work beyond the connections the options
  imply (see :func:`raise_descriptor_limit`).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import resource
import urllib.parse
from pathlib import Path

from chute.fs.data_dir import check_data_dir, default_data_dir
from chute.uploader.config import UploaderConfig, check_range
from chute.uploader.credentials import resolve_endpoint, resolve_region
from chute.uploader.errors import ConfigError
from chute.uploader.s3 import Bucket
from chute.uploader.sizes import format_size

log = logging.getLogger("chute")

MAX_PREFIX_BYTES = 1024
"""S3's key limit; a prefix longer than this leaves no room for a name."""

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

DESCRIPTOR_RESERVE = 256
"""Descriptors kept for FUSE work beyond the connections and listeners the options imply:
the store's connections, the files a request handler opens, the status socket. Listeners
are capped (metrics and status accept at most a few connections at once), so no client can
take this reserve away."""


def check_bucket_name(bucket: str) -> None:
    """S3's rules: 3-63 characters of lowercase letters, digits, dots and hyphens, starting
    and ending with a letter or digit, no ``..``, not shaped like an IP address."""
    if (not _BUCKET.match(bucket) or ".." in bucket or ".-" in bucket or "-." in bucket
            or _IPV4.match(bucket)):
        raise ConfigError(
            f"{bucket!r} is not a valid bucket name: S3 bucket names are 3 to 63 lowercase "
            "letters, digits, dots and hyphens, starting and ending with a letter or digit")


def check_prefix(prefix: str) -> None:
    """A prefix (without its trailing slash) the mount can put every key under, as given."""
    problem = None
    if len(prefix.encode()) > MAX_PREFIX_BYTES:
        problem = f"is longer than {MAX_PREFIX_BYTES} bytes"
    elif _CONTROL.search(prefix):
        problem = "contains a control character"
    elif "#" in prefix or "?" in prefix:
        problem = "contains '#' or '?'"
    elif "\\" in prefix:
        problem = "contains a backslash"
    elif any(segment in ("", ".", "..") for segment in prefix.split("/")):
        problem = "has an empty, '.' or '..' segment"
    if problem:
        raise ConfigError(f"the prefix {prefix!r} {problem}: give s3://BUCKET/PREFIX with "
                          "plain path segments")


def parse_remote(remote: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix/"), checked."""
    if not remote.startswith("s3://"):
        raise ConfigError(f"remote must look like s3://BUCKET[/PREFIX], got {remote!r}")
    bucket, _, prefix = remote[len("s3://"):].partition("/")
    if not bucket:
        raise ConfigError(f"no bucket name in {remote!r}")
    check_bucket_name(bucket)
    prefix = prefix.rstrip("/")
    if prefix:
        check_prefix(prefix)
    return bucket, f"{prefix}/" if prefix else ""


def check_endpoint(url: str) -> None:
    """An ``http://`` or ``https://`` URL with a host (and a valid port, if any)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"endpoint {url!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"endpoint {url!r} is not a URL: it must look like "
                          "https://HOST[:PORT]")
    if parts.query or parts.fragment or _CONTROL.search(url) or " " in url:
        raise ConfigError(f"endpoint {url!r} must be a plain URL, without spaces, '?' or '#'")


def available_memory() -> int:
    """Bytes the kernel could give a new mapping without swapping (MemAvailable), capped by
    RLIMIT_AS; the physical memory if /proc/meminfo does not say."""
    available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        available = min(available, soft)
    return available


def check_ring_memory(ring_size: int) -> None:
    """The ring is one anonymous mapping, allocated at mount time and touched as files are
    written: it must fit in the memory available now."""
    available = available_memory()
    if ring_size > available:
        raise ConfigError(
            f"--ring-size {format_size(ring_size)} is more than the {format_size(available)} "
            "of memory available: give a smaller --ring-size")


def raise_descriptor_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; refuse if the hard limit is below
    ``needed + DESCRIPTOR_RESERVE``. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < needed + DESCRIPTOR_RESERVE:
        raise ConfigError(
            f"the open-file limit ({soft}) is too low for this mount: it needs about "
            f"{needed + DESCRIPTOR_RESERVE}; raise it (ulimit -n) or lower "
            "--upload-concurrency")
    return soft


MAX_OWNER_ID = 2**32 - 2
"""uid/gid 4294967295 is (uid_t)-1, "no change" to chown: never an owner."""


def owner_id(text: str) -> int:
    """``--uid``/``--gid``: a number from 0 to 4294967294 (an argparse type)."""
    if not text.isdigit() or int(text) > MAX_OWNER_ID:
        raise argparse.ArgumentTypeError(
            f"must be a number from 0 to {MAX_OWNER_ID}, got {text!r}")
    return int(text)


INTERVAL_RANGE = (0.1, 3600.0)
UNMOUNT_TIMEOUT_RANGE = (0.0, 86400.0)


def check_command(args: argparse.Namespace) -> None:
    """The numbers of ``chute status`` and ``chute unmount``: finite, within a sane range."""
    if args.command == "status":
        check_range("--interval", args.interval, INTERVAL_RANGE, " seconds")
    elif args.command == "unmount":
        check_range("--timeout", args.timeout, UNMOUNT_TIMEOUT_RANGE, " seconds")


def descriptors_needed(config: UploaderConfig) -> int:
    """Descriptors the options imply: the upload connections (``upload_concurrency + 8``),
    the readers' connections (at most 64), the capped metrics and status listeners and their
    clients, the FUSE device, the lock and the log."""
    return config.upload_concurrency + 8 + 64 + 2 * (8 + 4) + 8


def check_mount(args: argparse.Namespace, config: UploaderConfig) -> Bucket | None:
    """Everything about ``chute mount``'s request that can be checked before anything
    starts; the remote's :class:`Bucket` (None for the embedded store)."""
    for flag, value in (("--uid", args.uid), ("--gid", args.gid)):  # a config file's ints too
        if value is not None:
            check_range(flag, value, (0, MAX_OWNER_ID))
    ring = config.slot_count * config.slice_size
    check_ring_memory(ring)
    if config.ring_size != ring:
        log.warning("--ring-size %s is not a multiple of --slice-size %s: the ring is rounded "
                    "down to %d slices (%s)", format_size(config.ring_size),
                    format_size(config.slice_size), config.slot_count, format_size(ring))
    raise_descriptor_limit(descriptors_needed(config))
    if not args.remote:
        check_data_dir(Path(args.data_dir) if args.data_dir else default_data_dir())
        return None
    bucket, prefix = parse_remote(args.remote)
    endpoint = resolve_endpoint(args.profile, args.endpoint_url)
    if endpoint is not None:
        check_endpoint(endpoint)
    return Bucket(bucket, prefix, endpoint_url=endpoint,
                  region=resolve_region(args.profile, args.region))
