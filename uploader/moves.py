"""Moving every object under one key prefix to another, and finishing a move a crash cut.

S3 has no rename: a directory is renamed by copying each object below it server-side
(CopyObject, which keeps metadata and tags; :func:`copy.copy_in_parts` above 5 GiB) and then
deleting the sources. That is not atomic: while it runs, and if it is cut, objects exist under
both prefixes. So a move is recorded before anything is copied, by a marker object::

    <prefix>.chute-moves/<id>    body: JSON {"version": 1, "owner": "<leftovers' owner>",
                                 "source": "<key prefix>/", "dest": "<key prefix>/",
                                 "keys": [key below source, ...], "dest_existed": bool,
                                 "phase": "copying" | "copied"}

The phases, in order: the marker is written (``copying``); every key is copied, each guarded
by the ETag its listing showed (a source changed meanwhile fails the copy: 412); the marker is
rewritten (``copied``); the sources are deleted; the marker is deleted.

**Invariant: no object is ever lost.** A source is deleted only once every copy has landed
(and, at recovery, only if its copy is still there); a copy is deleted only while its source
still exists. A failure while copying rolls back at once (the copies made are deleted, the
sources stay) and the caller gets the error. A failure while deleting the sources leaves the
move visible under both names and its marker in place.

**Recovery** (:func:`recover`, at the next mount of the prefix): each marker whose owner is
dead by leftovers.py's one liveness rule (``leftovers.verdict``) is finished (``copied``:
delete the sources whose copy exists) or rolled back (``copying``: delete the copies whose
source exists, keeping the destination's own marker if it existed before), then deleted. A
move whose owner lives, or cannot be checked and wrote its marker less than
``leftovers.STALE_AFTER`` ago, is left alone (a move is bounded by the mount's
``--rename-dir-max-*`` limits and takes seconds, so its marker is not renewed). Markers are
untrusted input: size-bounded, well-formed, both prefixes under the mount's own prefix and
outside chute's marker directories, no ``.``/``..`` segments, every key within S3's length
limit; anything else is logged once and left alone, never deleted.

The marker directory is hidden from the mount and its name reserved (fs/namespace.py).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from . import leftovers
from .bounded import each_bounded
from .copy import MAX_COPY_BYTES, copy_in_parts
from .errors import StoreError
from .s3 import S3Client

log = logging.getLogger(__name__)

MARKER_DIR = ".chute-moves"
MAX_MARKER_BYTES = 32 << 20
"""A marker larger than this is not read (10,000 keys of 1 KiB fit with room to spare)."""
MAX_KEYS = 10_000
"""The most keys one move may hold (the ceiling of ``--rename-dir-max-objects``)."""
IN_FLIGHT = 8
"""Copies (or deletes) of one move sent at once."""
_MAX_KEY_BYTES = 1024
_ID = re.compile(r"[0-9a-f]{32}")
_PHASES = ("copying", "copied")


@dataclass(frozen=True)
class Entry:
    """One object to move: its key below the source prefix, size and listed ETag."""

    rel: str
    size: int
    etag: str
    implied: bool = False
    """A directory that holds keys but has no marker of its own (deletes only, see
    :func:`_deepest_last`)."""


def marker_key(client: S3Client, move_id: str) -> str:
    return client.bucket.key(f"{MARKER_DIR}/{move_id}")


async def move(client: S3Client, source: str, dest: str, entries: Sequence[Entry], *,
               dest_existed: bool, check: Callable[[], None] = lambda: None,
               moved: Callable[[dict[str, str]], None] = lambda etags: None) -> None:
    """Move ``entries`` from prefix ``source`` to prefix ``dest`` (see the module).

    Once every copy has landed, ``check()`` may still refuse the move (by raising); then,
    with the marker at ``copied``, ``moved(etags)`` (rel -> new ETag) is told before the
    sources are deleted. A failure before that is rolled back before it is raised (the
    sources are untouched); one while deleting the sources is raised as
    :class:`SourcesLeft`."""
    marker = marker_key(client, uuid.uuid4().hex)
    record = {"version": 1, "owner": leftovers.this_process().encode(), "source": source,
              "dest": dest, "keys": [e.rel for e in entries], "dest_existed": dest_existed,
              "phase": "copying"}
    await _write(client, marker, record)
    etags: dict[str, str] = {}
    try:
        await _each(entries, lambda e: _copy_one(client, source, dest, e, etags))
        check()
        record["phase"] = "copied"
        await _write(client, marker, record)
    except Exception:
        copied = [e for e in entries if e.rel in etags]
        try:
            await _deepest_last(copied, lambda e: client.delete_object(dest + e.rel),
                                keep_top=dest_existed)
            await client.delete_object(marker)
        except Exception as exc:
            log.warning("move %s -> %s failed and rolling back its copies failed too (%s): "
                        "the next mount rolls it back (marker %s)", source, dest, exc, marker)
        raise
    moved(etags)
    try:
        await _deepest_last(entries, lambda e: client.delete_object(source + e.rel))
        await client.delete_object(marker)
    except Exception as exc:
        raise SourcesLeft(exc, marker) from exc


class SourcesLeft(Exception):
    """Every object was copied, but deleting the sources (or the marker) failed: the next
    mount finishes the move."""

    def __init__(self, cause: Exception, marker: str) -> None:
        super().__init__(f"{cause}; the next mount finishes the move (marker {marker})")
        self.cause = cause


async def _write(client: S3Client, marker: str, record: dict[str, object]) -> None:
    body = json.dumps(record, ensure_ascii=False).encode()
    await client.put_object(marker, body, {"Content-Type": "application/json"})


async def _copy_one(client: S3Client, source: str, dest: str, entry: Entry,
                    etags: dict[str, str]) -> None:
    """CopyObject keeping metadata and tags; in parts above 5 GiB (metadata from a HEAD).
    An empty directory marker (``dir/``) is written anew with its metadata and tags:
    SeaweedFS answers a CopyObject of one 404 NoSuchKey."""
    if entry.size == 0 and (entry.rel == "" or entry.rel.endswith("/")):
        info = await client.head_object(source + entry.rel)
        if info is None:
            raise StoreError("HeadObject", 404, "NoSuchKey", f"{source + entry.rel} is gone")
        headers = {f"x-amz-meta-{k}": v for k, v in info.metadata.items()}
        try:
            tags = await client.get_tags(source + entry.rel)
        except StoreError:
            tags = {}  # a store that keeps no tags on a directory marker
        if tags:
            headers["x-amz-tagging"] = urlencode(tags)
        etags[entry.rel] = await client.put_object(dest + entry.rel, b"", headers)
    elif entry.size > MAX_COPY_BYTES:
        info = await client.head_object(source + entry.rel)
        if info is None:
            raise StoreError("HeadObject", 404, "NoSuchKey", f"{source + entry.rel} is gone")
        headers = {f"x-amz-meta-{k}": v for k, v in info.metadata.items()}
        etags[entry.rel] = await copy_in_parts(client, source + entry.rel, dest + entry.rel,
                                               entry.size, headers,
                                               if_match_etag=entry.etag or None)
    else:
        etags[entry.rel] = await client.copy_object(source + entry.rel, dest + entry.rel, None,
                                                    if_match_etag=entry.etag or None)


async def _each(items: Sequence[Entry], job: Callable[[Entry], Awaitable[object]]) -> None:
    """Run ``job`` on every item, IN_FLIGHT at a time; the first failure stops the rest and
    is raised."""
    await each_bounded(items, job, IN_FLIGHT)


async def _deepest_last(items: Sequence[Entry], job: Callable[[Entry], Awaitable[object]],
                        *, keep_top: bool = False) -> None:
    """``_each`` for deletes: the files first, then the directory markers, deepest first,
    including those of directories that have none (``implied``). SeaweedFS keeps a directory
    that still held something when its marker was deleted, and one that never had a marker,
    and lists it (empty) for good: the old name would stay visible. Deleting a key that does
    not exist is harmless on S3, and on SeaweedFS removes such an empty directory.
    ``keep_top``: the top directory's marker is not deleted (it existed before the move)."""
    markers: dict[int, list[Entry]] = {}
    for item in _with_implied_dirs(items):
        if keep_top and item.rel == "":
            continue
        if item.rel == "" or item.rel.endswith("/"):
            markers.setdefault(item.rel.count("/"), []).append(item)
    await _each([item for item in items if not (item.rel == "" or item.rel.endswith("/"))], job)
    for depth in sorted(markers, reverse=True):
        await _each(markers[depth], job)


def _with_implied_dirs(items: Sequence[Entry]) -> list[Entry]:
    """``items`` and, as ``implied`` entries, every directory level above them (the top
    one, ``""``, included) that has no marker among them."""
    have = {item.rel for item in items}
    implied: dict[str, Entry] = {}
    for item in items:
        parts = item.rel.rstrip("/").split("/")[:-1] if item.rel else []
        for depth in range(len(parts) + 1):
            rel = "".join(part + "/" for part in parts[:depth])
            if rel not in have:
                implied.setdefault(rel, Entry(rel, 0, "", implied=True))
    return [*items, *implied.values()]


# -- recovery at the next mount ---------------------------------------------------------------


async def recover(client: S3Client, *, now: float | None = None) -> int:
    """Finish or roll back the moves of dead mounts under this mount's prefix; returns how
    many were. ``now`` (for tests): the time markers' ages are measured at."""
    here = leftovers.this_process()
    prefix = marker_key(client, "")
    done = 0
    async for page in client.list(prefix, delimiter=None):
        for listed in page.objects:
            try:
                done += await _recover_one(client, listed.key, here,
                                           time.time() if now is None else now)
            except Exception as exc:  # one bad marker must not stop the rest
                _report(listed.key, f"could not be recovered ({exc})")
    return done


async def _recover_one(client: S3Client, marker: str, here: leftovers.Owner,
                       now: float) -> int:
    if not _ID.fullmatch(marker.removeprefix(marker_key(client, ""))):
        _report(marker, "is not named by a move id")
        return 0
    info = await client.head_object(marker)
    if info is None:
        return 0  # finished meanwhile
    if not 0 < info.size <= MAX_MARKER_BYTES:
        _report(marker, f"has a size of {info.size} bytes")
        return 0
    parsed = parse(client, await client.get_range(marker, 0, info.size - 1))
    if isinstance(parsed, str):
        _report(marker, parsed)
        return 0
    owner = leftovers.Owner.decode(parsed["owner"])
    assert owner is not None  # parse checked it
    modified = leftovers.timestamp(info.last_modified)
    dead, why = leftovers.verdict(owner, here, None if modified is None else now - modified)
    if not dead:
        log.info("move %s -> %s is left alone: %s", parsed["source"], parsed["dest"], why)
        return 0
    source, dest, keys = parsed["source"], parsed["dest"], parsed["keys"]
    entries = [Entry(k, 0, "") for k in keys]
    kept: list[str] = []
    if parsed["phase"] == "copied":
        async def finish(e: Entry) -> None:
            if not e.implied and await client.head_object(dest + e.rel) is None:
                kept.append(source + e.rel)  # its copy is gone: the source is the only one
            else:
                await client.delete_object(source + e.rel)
        await _deepest_last(entries, finish)
        what = "finished (sources deleted)"
    else:
        async def roll_back(e: Entry) -> None:
            if e.rel == "" and parsed["dest_existed"]:
                return
            if not e.implied and await client.head_object(source + e.rel) is None:
                kept.append(dest + e.rel)  # its source is gone: the copy is the only one
            else:
                await client.delete_object(dest + e.rel)
        await _deepest_last(entries, roll_back)
        what = "rolled back (copies deleted)"
    await client.delete_object(marker)
    log.warning("move of directory %s -> %s, cut by the end of its mount (%s), %s%s",
                source, dest, why, what, f"; kept {len(kept)} object(s) that had no other "
                f"copy, e.g. {kept[:3]}" if kept else "")
    return 1


def parse(client: S3Client, body: bytes) -> dict | str:
    """The marker's record, or what is wrong with it (untrusted input, see the module)."""
    try:
        record = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "is not JSON"
    if not isinstance(record, dict) or record.get("version") != 1:
        return "is not a version 1 move record"
    owner, source, dest = record.get("owner"), record.get("source"), record.get("dest")
    keys, phase = record.get("keys"), record.get("phase")
    if not all(isinstance(v, str) for v in (owner, source, dest)) or phase not in _PHASES:
        return "lacks its owner, prefixes or phase"
    if not isinstance(record.get("dest_existed"), bool):
        return "lacks dest_existed"
    if not isinstance(keys, list) or not 0 < len(keys) <= MAX_KEYS or not all(
            isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
        return "has no well-formed list of keys"
    if len(owner) > 2000 or leftovers.Owner.decode(owner) is None:
        return f"has an owner that is not well-formed: {owner[:200]!r}"
    mine = client.bucket.key("")
    reserved = (client.bucket.key(f"{MARKER_DIR}/"), client.bucket.key(
        f"{leftovers.MARKER_DIR}/"))
    for name, value in (("source", source), ("dest", dest)):
        if not value.startswith(mine) or value == mine or not value.endswith("/"):
            return f"has a {name} {value[:300]!r} that is not a directory under {mine!r}"
        if value.startswith(reserved):
            return f"has a {name} {value[:300]!r} inside chute's marker directories"
        if _dot_segment(value[len(mine):-1]):
            return f"has a {name} {value[:300]!r} with '.' or '..' segments"
    if source.startswith(dest) or dest.startswith(source):
        return "moves a directory into itself"
    longest = max(len(source.encode()), len(dest.encode()))
    for key in keys:
        if longest + len(key.encode()) > _MAX_KEY_BYTES or (key and _dot_segment(key)):
            return f"names a key {key[:300]!r} that is too long or has '.' or '..' segments"
    return record


def _dot_segment(path: str) -> bool:
    return any(part in (".", "..") for part in path.split("/"))


_reported: set[str] = set()


def _report(marker: str, problem: str) -> None:
    """Log a bad marker once per process."""
    if marker in _reported or len(_reported) >= 10_000:
        return
    _reported.add(marker)
    log.warning("ignoring directory-move marker %r: it %s", marker, problem)
