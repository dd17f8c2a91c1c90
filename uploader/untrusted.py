"""The one rule for values read from the store: never trusted, never raised, logged once.

Everything the store says is input chute did not choose: an object put by anyone with write
access to the bucket carries the metadata they picked (``x-amz-meta-chute-mtime-ns`` = thirty
9s), and a store, or something posing as one, may answer anything. Such a value must not
crash the mount (pyfuse3's attributes are C integers: a Python int beyond 64 bits raises
OverflowError), fail a whole directory, or be believed. So a value out of range or malformed
is ignored (the default is used) or clamped to what stat can show, and logged once per
object and problem, with the key quoted. The parsers (s3_answers.py, and fs/metadata.py for
chute's own metadata) use these helpers; nothing here raises.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict

log = logging.getLogger("chute.uploader.store")

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
"""st_size and st_mtime_ns are signed 64-bit: sizes in 0..INT64_MAX, times in ns within
INT64_MIN..INT64_MAX (the years 1677 to 2262)."""
MAX_ETAG = 1024
"""Longest ETag believed (S3's are 32 hex digits, ``-N`` for multipart; 1 KiB is generous)."""
_ETAG = re.compile(r'[\x21\x23-\x7e]+')
"""An entity tag's characters (RFC 9110 etagc, ASCII only): printable, no quote, no space."""
_WARNED_MAX = 10_000
_warned: OrderedDict[tuple[str, str], None] = OrderedDict()


def warn_once(key: str, problem: str, value: object, outcome: str) -> None:
    """Log ``problem`` about ``key`` once (per key and problem; the most recent 10,000 are
    remembered, so a directory listed again and again logs once, and memory stays bounded)."""
    seen = (key, problem)
    if seen in _warned:
        _warned.move_to_end(seen)
        return
    _warned[seen] = None
    if len(_warned) > _WARNED_MAX:
        _warned.popitem(last=False)
    log.warning("%r: the store says %s = %s, which chute cannot use; %s",
                key, problem, short(value), outcome)


def short(value: object, limit: int = 80) -> str:
    """``value`` quoted (control characters escaped), cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


def printable(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, control characters escaped (for a log line)."""
    text = text[:limit]
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def clamp(value: int, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
    return low if value < low else high if value > high else value


def parse_int(value: str | None) -> int | None:
    """A decimal integer, or None (not a number, or more digits than Python converts)."""
    if value is None:
        return None
    try:
        return int(value.strip(), 10)
    except ValueError:
        return None


def size(value: str | None, key: str, what: str) -> int:
    """A size the store sent: clamped to 0..INT64_MAX; not a number counts as 0. Logged."""
    number = parse_int(value)
    if number is None:
        if value is not None:
            warn_once(key, what, value, "shown as 0")
        return 0
    if not 0 <= number <= INT64_MAX:
        shown = clamp(number, 0)
        warn_once(key, what, value, f"shown as {shown}")
        return shown
    return number


def well_formed_etag(value: str) -> str | None:
    """The entity tag inside ``value`` (``"..."``, quotes optional in listings), or None if
    it is not one: empty, too long, or with characters an entity tag cannot hold."""
    inner = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    if not inner or len(inner) > MAX_ETAG or _ETAG.fullmatch(inner) is None:
        return None
    return inner


def etag(value: str, key: str, what: str = "ETag") -> str:
    """An object's ETag as a listing or HEAD gave it; an unusable one is "" (unknown)."""
    if not value:
        return ""
    found = well_formed_etag(value)
    if found is None:
        warn_once(key, what, value, "ignored")
        return ""
    return found
