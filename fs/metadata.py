"""The metadata codec: how a file's mode and mtime travel with its object, and how a node's
attributes are read back from what the store says.

Mode and mtime travel as ``x-amz-meta-chute-mode`` (octal) and ``x-amz-meta-chute-mtime-ns``,
so ``rsync -a`` finds its files unchanged on the next run, even after a remount. They are sent
with Create/Put; changing them on a finished object is a CopyObject onto itself (objects.py).
An object written by something else carries neither: it shows as 0644 with its
Last-Modified. A listing carries no metadata, so a file only seen in a listing is marked
``needs_head`` and HEADed before its mode and mtime are trusted.

Everything read back is untrusted (an object put by anyone, chute.uploader.untrusted): a
mode outside 0..0o177777 or an mtime outside what stat can show (signed 64-bit ns, the years
1677 to 2262) is ignored, the default shown (0644/0755, Last-Modified), and logged once per
object; dates are clamped into that range. Nothing here raises on what the store said.

A symbolic link (fs/symlinks.py) is an object whose body is the target and whose mode has
S_IFLNK: chute-mode ``120777``, and s3fs-fuse's own keys beside it (``x-amz-meta-mode``, the
decimal st_mode, and ``x-amz-meta-mtime``, seconds), so s3fs-fuse shows chute's links as links
and chute shows s3fs-fuse's. An object is a link only if its body could be a target (1 to
MAX_LINK_TARGET bytes): anything larger is a file whatever its metadata says.

Pure functions over nodes and the S3 client's records; no I/O.
"""

from __future__ import annotations

import stat
import time
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from chute.uploader import untrusted

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
MAX_STORED_MODE = 0o177777
"""The largest chute-mode believed: permission bits, possibly with file-type bits (which are
dropped); anything larger or negative was not written by chute."""
S3FS_MODE_META = "mode"
"""s3fs-fuse's user metadata key (x-amz-meta-mode): st_mode in decimal, file type included."""
S3FS_MTIME_META = "mtime"
"""s3fs-fuse's user metadata key (x-amz-meta-mtime): seconds, possibly with a fraction."""
LINK_MODE = stat.S_IFLNK | 0o777
"""A symbolic link's st_mode (Linux ignores a link's permission bits)."""
MAX_LINK_TARGET = 4095
"""The longest link target: PATH_MAX counts the terminating NUL, and the kernel's FUSE
readlink takes at most a page less one byte."""


def mode_of(node: Node) -> int:
    """The permission bits shown (the default when not known)."""
    if node.is_link:
        return stat.S_IMODE(LINK_MODE)
    if node.mode is not None:
        return node.mode
    return DEFAULT_DIR_MODE if node.is_dir else DEFAULT_FILE_MODE


def chute_metadata(node: Node) -> dict[str, str]:
    """The user metadata chute keeps on an object: mode (octal) and mtime (ns); a link's
    also in s3fs-fuse's keys (see the module)."""
    if node.is_link:
        return {MODE_META: f"{LINK_MODE:o}", MTIME_META: str(node.mtime_ns),
                S3FS_MODE_META: str(LINK_MODE), S3FS_MTIME_META: str(node.mtime_ns // 10**9)}
    return {MODE_META: f"{mode_of(node):04o}", MTIME_META: str(node.mtime_ns)}


def meta_headers(metadata: dict[str, str]) -> dict[str, str]:
    return {f"x-amz-meta-{k}": v for k, v in metadata.items()}


def apply_head(node: Node, info: ObjectInfo, now: float) -> None:
    """Attributes from a HEAD: size, and mode/mtime from chute's metadata, falling back to
    0644 and Last-Modified for objects written by something else (or whose values are not
    usable: see the module docstring)."""
    mode = stored_mode(info.metadata, info.key)
    mtime_ns = stored_mtime(info.metadata, info.key)
    if mtime_ns is None and is_link_object(info):
        mtime_ns = s3fs_mtime(info.metadata)
    if info.etag != node.etag:
        node.link_target = None  # another object: its target is read again
    node.size = untrusted.clamp(info.size, 0)
    node.etag = info.etag
    node.metadata = dict(info.metadata)
    node.mode = mode
    node.mtime_ns = http_date_ns(info.last_modified) if mtime_ns is None else mtime_ns
    node.needs_head = False
    node.checked_at = now


def is_link_object(info: ObjectInfo) -> bool:
    """Whether the object is a symbolic link: chute-mode (else s3fs-fuse's mode) has
    S_IFLNK, and its size could be a target's (see the module)."""
    if not 0 < info.size <= MAX_LINK_TARGET:
        return False
    if MODE_META in info.metadata:
        mode = int_or_none(info.metadata[MODE_META], base=8)
    else:
        mode = int_or_none(info.metadata.get(S3FS_MODE_META))
    return mode is not None and 0 <= mode <= MAX_STORED_MODE and stat.S_ISLNK(mode)


def s3fs_mtime(metadata: dict[str, str]) -> int | None:
    """s3fs-fuse's x-amz-meta-mtime ("seconds" or "seconds.fraction") in ns, if usable."""
    seconds, _, fraction = metadata.get(S3FS_MTIME_META, "").partition(".")
    digits = seconds + fraction
    whole = int_or_none(seconds) if digits.isascii() and digits.isdigit() and seconds else None
    if whole is None:
        return None
    mtime_ns = whole * 10**9 + int(fraction[:9].ljust(9, "0"))
    return mtime_ns if untrusted.clamp(mtime_ns) == mtime_ns else None


def stored_mode(metadata: dict[str, str], key: str = "") -> int | None:
    """The permission bits stored as chute-mode, or None if absent or not usable."""
    raw = metadata.get(MODE_META)
    mode = int_or_none(raw, base=8)
    if mode is None or not 0 <= mode <= MAX_STORED_MODE:
        if raw is not None:
            untrusted.warn_once(key, f"x-amz-meta-{MODE_META}", raw, "the default mode is shown")
        return None
    return stat.S_IMODE(mode)


def stored_mtime(metadata: dict[str, str], key: str = "") -> int | None:
    """The mtime (ns) stored as chute-mtime-ns, or None if absent or not usable."""
    raw = metadata.get(MTIME_META)
    mtime_ns = int_or_none(raw)
    if mtime_ns is None or untrusted.clamp(mtime_ns) != mtime_ns:
        if raw is not None:
            untrusted.warn_once(key, f"x-amz-meta-{MTIME_META}", raw,
                                "its Last-Modified is shown instead")
        return None
    return mtime_ns


def apply_mode_mtime(node: Node, mode: int | None, mtime_ns: int | None) -> None:
    """chmod and/or utimens on the node (the object learns them separately)."""
    if mode is not None and not node.is_link:  # a link's mode never changes
        node.mode = stat.S_IMODE(mode)
    if mtime_ns is not None:
        node.mtime_ns = mtime_ns
        node.mtime_explicit = True


def sync_upload_metadata(node: Node) -> None:
    """A file being written: its Create/Put (if not sent yet) carries the current values."""
    if node.upload is not None and not node.is_dir:
        node.upload.metadata.update(chute_metadata(node))


def sent_mtime(metadata: dict[str, str]) -> int | None:
    """The mtime an object was stored with, if chute stored it (and it is usable)."""
    return stored_mtime(metadata)


def int_or_none(value: str | None, base: int = 10) -> int | None:
    try:
        return int(value, base) if value is not None else None
    except ValueError:  # also: more digits than Python converts
        return None


def http_date_ns(value: str) -> int:
    """A Last-Modified header (RFC 7231 date) in ns, clamped to what stat can show; now if
    it cannot be read."""
    try:
        return untrusted.clamp(int(parsedate_to_datetime(value).timestamp() * 1e9))
    except (TypeError, ValueError, OverflowError, IndexError):
        return time.time_ns()


def iso_date_ns(value: str) -> int:
    """A listing's LastModified (ISO 8601) in ns, clamped to what stat can show; now if it
    cannot be read."""
    try:
        return untrusted.clamp(
            int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e9))
    except (TypeError, ValueError, OverflowError):
        return time.time_ns()
