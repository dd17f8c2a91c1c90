"""Judging what a user would see after a copy through a faulty store: landed, failed loudly,
eio-but-landed, or the two never allowed (silent-bad, unclean); and the tally of outcomes
per fault. Reads the bucket straight from the store (boto3), never through the proxy.
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import xxhash
from botocore.exceptions import ClientError

from .files import random_file
from .store import BUCKET, object_keys, pending_uploads, upload_markers

LANDED = "landed"
FAILED = "failed loudly"
UNCONFIRMED = "eio-but-landed"
SILENT_BAD = "silent-bad"
UNCLEAN = "unclean"
OUTCOMES = (LANDED, FAILED, UNCONFIRMED, SILENT_BAD, UNCLEAN)
CLEANUP_GRACE = 20.0
"""Seconds a failed upload may take to be aborted (the janitor retries every 2 s)."""


@dataclass(frozen=True)
class Source:
    path: Path
    sha256: str
    xxh3_128: str


def make_source(path: Path, size: int, seed: int) -> Source:
    random_file(path, size, seed=seed)
    sha, xxh = hashlib.sha256(), xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            xxh.update(chunk)
    return Source(path, sha.hexdigest(), xxh.hexdigest())


@dataclass
class Verdict:
    outcome: str
    detail: str = ""


def _object(s3: Any, key: str) -> tuple[str, dict[str, str]] | None:
    """sha256 and tags of an object, read straight from the store; None if absent."""
    try:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise
    digest = hashlib.sha256()
    for chunk in body.iter_chunks(1 << 20):
        digest.update(chunk)
    tags = s3.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]
    return digest.hexdigest(), {t["Key"]: t["Value"] for t in tags}


def _leftovers(s3: Any, prefix: str, key: str, others: frozenset[str]) -> list[str]:
    """What under ``prefix`` belongs to ``key`` or to no writer: multipart uploads, upload
    markers (their ``chute-key`` says whose), and objects other than the writers' own."""
    def mine(k: str) -> bool:
        return k == key or k not in others

    found = [f"upload {u['Key']} {u['UploadId']}" for u in pending_uploads(s3, prefix)
             if mine(u["Key"])]
    for marker in upload_markers(s3, prefix):
        try:
            meta = s3.head_object(Bucket=BUCKET, Key=marker)["Metadata"]
        except ClientError:
            continue  # deleted meanwhile
        if mine(unquote(meta.get("chute-key", ""))):
            found.append(f"marker {marker}")
    found += [f"object {k}" for k in object_keys(s3, prefix) if k != key and k not in others]
    return found


def judge(s3: Any, prefix: str, key: str, source: Source, rc: int, stderr: str, *,
          others: frozenset[str] = frozenset(), grace: float = CLEANUP_GRACE) -> Verdict:
    """Which of landed / failed loudly / silent-bad / unclean a finished copy is.

    ``others``: keys of concurrent writers under the same prefix, whose objects and uploads
    are theirs to answer for.
    """
    if rc == 0:
        found = _object(s3, key)
        if found is None:
            return Verdict(SILENT_BAD, "cp exited 0 but there is no object")
        sha, tags = found
        if sha != source.sha256:
            return Verdict(SILENT_BAD, "cp exited 0 but the object differs")
        if tags.get("chute-xxh3-128") != source.xxh3_128:
            return Verdict(SILENT_BAD, f"the object lacks its xxh3-128 tag: {tags}")
        left = _leftovers(s3, prefix, key, others)
        if left:
            return Verdict(UNCLEAN, f"landed, but left behind {left}")
        return Verdict(LANDED)
    if "Input/output error" not in stderr:
        return Verdict(UNCLEAN, f"cp failed without EIO: {stderr.strip()!r}")
    deadline = time.monotonic() + grace
    while True:
        left = _leftovers(s3, prefix, key, others)
        if not left:
            found = _object(s3, key)
            if found is None:
                return Verdict(FAILED, stderr.strip())
            if found[0] == source.sha256:
                return Verdict(UNCONFIRMED, "EIO, but the object landed whole")
            left.append(f"object {key} (not what was written)")
        if time.monotonic() > deadline:
            return Verdict(UNCLEAN, f"failed, but left behind {left}")
        time.sleep(0.5)


# -- the tally -------------------------------------------------------------------------------


@dataclass
class Tally:
    """Outcomes per fault, in the order faults were first seen; safe across threads."""

    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, fault: str, outcome: str) -> None:
        with self.lock:
            self.rows.setdefault(fault, dict.fromkeys(OUTCOMES, 0))[outcome] += 1

    def total(self, outcome: str) -> int:
        with self.lock:
            return sum(counts[outcome] for counts in self.rows.values())

    def table(self) -> str:
        with self.lock:
            rows = [(name, sum(c.values()), *(c[o] for o in OUTCOMES))
                    for name, c in self.rows.items()]
        rows.append(("total", *(sum(r[i] for r in rows) for i in range(1, 2 + len(OUTCOMES)))))
        header = ("fault", "runs", *OUTCOMES)
        width = max(len(r[0]) for r in [header, *rows])
        cells = [max(len(h), 4) for h in header[1:]]

        def line(row: tuple) -> str:
            return f"{row[0]:<{width}}" + "".join(f"  {v:>{w}}" for v, w in zip(row[1:], cells,
                                                                                strict=True))

        head = line(header)
        return "\n".join([head, "-" * len(head), *map(line, rows[:-1]), "-" * len(head),
                          line(rows[-1])])


def run_cp(source: Path, target: Path, timeout: float = 240) -> tuple[int, str, float]:
    """``cp source target``: its exit status, its stderr, and the seconds it took."""
    began = time.monotonic()
    result = subprocess.run(["cp", str(source), str(target)], capture_output=True, text=True,
                            timeout=timeout, check=False)
    return result.returncode, result.stderr, time.monotonic() - began
