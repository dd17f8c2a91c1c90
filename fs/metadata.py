"""The metadata codec: how a file's mode and mtime travel with its object, and how a node's
attributes are read back from what the store says.

Mode and mtime travel as ``x-amz-meta-chute-mode`` (octal) and ``x-amz-meta-chute-mtime-ns``,
so ``rsync -a`` finds its files unchanged on the next run, even after a remount. They are sent
with Create/Put; changing them on a finished object is a CopyObject onto itself (objects.py).
An object written by something else carries neither: it shows as 0644 with its
Last-Modified. A listing carries no metadata, so a file only seen in a listing is marked
``needs_head`` and HEADed before its mode and mtime are trusted.

Pure functions over nodes and the S3 client's records; no I/O.
"""

from __future__ import annotations

import stat
import time
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from .namespace import Node

if TYPE_CHECKING:
    from chute.uploader.s3 import ObjectInfo

MODE_META = "chute-mode"
"""User metadata key (x-amz-meta-chute-mode): the file's permission bits, in octal."""
MTIME_META = "chute-mtime-ns"
"""User metadata key (x-amz-meta-chute-mtime-ns): the file's mtime in nanoseconds."""
DEFAULT_FILE_MODE = 0o644
"""Mode of an object that carries no chute-mode (written by something else)."""
DEFAULT_DIR_MODE = 0o755


def mode_of(node: Node) -> int:
    """The permission bits shown (the default when not known)."""
    if node.mode is not None:
        return node.mode
    return DEFAULT_DIR_MODE if node.is_dir else DEFAULT_FILE_MODE


def chute_metadata(node: Node) -> dict[str, str]:
    """The user metadata chute keeps on an object: mode (octal) and mtime (ns)."""
    return {MODE_META: f"{mode_of(node):04o}", MTIME_META: str(node.mtime_ns)}


def meta_headers(metadata: dict[str, str]) -> dict[str, str]:
    return {f"x-amz-meta-{k}": v for k, v in metadata.items()}


def apply_head(node: Node, info: ObjectInfo, now: float) -> None:
    """Attributes from a HEAD: size, and mode/mtime from chute's metadata, falling back to
    0644 and Last-Modified for objects written by something else."""
    mode = int_or_none(info.metadata.get(MODE_META), base=8)
    mtime_ns = int_or_none(info.metadata.get(MTIME_META))
    node.size = info.size
    node.etag = info.etag
    node.metadata = dict(info.metadata)
    node.mode = None if mode is None else stat.S_IMODE(mode)
    node.mtime_ns = http_date_ns(info.last_modified) if mtime_ns is None else mtime_ns
    node.needs_head = False
    node.checked_at = now


def apply_mode_mtime(node: Node, mode: int | None, mtime_ns: int | None) -> None:
    """chmod and/or utimens on the node (the object learns them separately)."""
    if mode is not None:
        node.mode = stat.S_IMODE(mode)
    if mtime_ns is not None:
        node.mtime_ns = mtime_ns
        node.mtime_explicit = True


def sync_upload_metadata(node: Node) -> None:
    """A file being written: its Create/Put (if not sent yet) carries the current values."""
    if node.upload is not None and not node.is_dir:
        node.upload.metadata.update(chute_metadata(node))


def sent_mtime(metadata: dict[str, str]) -> int | None:
    """The mtime an object was stored with, if chute stored it."""
    return int_or_none(metadata.get(MTIME_META))


def int_or_none(value: str | None, base: int = 10) -> int | None:
    try:
        return int(value, base) if value is not None else None
    except ValueError:
        return None


def http_date_ns(value: str) -> int:
    """A Last-Modified header (RFC 7231 date) in ns; now if it cannot be read."""
    try:
        return int(parsedate_to_datetime(value).timestamp() * 1e9)
    except (TypeError, ValueError):
        return time.time_ns()


def iso_date_ns(value: str) -> int:
    """A listing's LastModified (ISO 8601) in ns; now if it cannot be read."""
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        return time.time_ns()
