"""Survive the network and the server: a fault matrix against real mounts (issue #7).

Every row of ``CATALOGUE`` is one fault, declared as data. It runs against a real
``chute mount`` whose store is the session's SeaweedFS seen through :class:`FaultProxy`,
copies a file in with ``cp`` (23 MiB + a few bytes = 5 parts of a 5 MiB slice, or a small
file sent as one PutObject when the fault targets PutObject), and judges what a user would
see. Exactly one of two outcomes is acceptable:

* **landed**: ``cp`` exited 0, the object is byte-identical (sha256 read with boto3 straight
  from the store, not through the proxy), its ``chute-xxh3-128`` tag is right, and nothing
  else is left under the prefix (no multipart upload, no upload marker, no other object);
* **failed loudly**: ``cp`` exited non-zero saying ``Input/output error``, and there is no
  object, no multipart upload and no marker under the prefix (after a few seconds for the
  janitor's abort).

Transient faults must land; only permanent ones may fail loudly. One permanent fault has a
third, honest outcome, *eio-but-landed*: the store acted on the request that makes the object
(PutObject, CompleteMultipartUpload), its answer was lost, and the store then stayed away
past the budget. Nobody can know, so the writer gets EIO, the log says the object may exist,
and it does, byte-identical. Anything else is *silent-bad* (``cp`` said yes and the bucket
says otherwise: never allowed) or *unclean* (a failure that left something behind or did not
say EIO, or a success that leaked a multipart upload). The session's tally is printed as a
table when the module ends, and silent-bad must be 0 there too. A row whose fault exposes a
bug outside this module's reach names it in ``bug``: it runs, is tallied, and is an expected
failure until that fix lands.

The scenario is set once the mount is up, so the mount's preflight and leftover scan are not
faulted. Budgets and timeouts are small so the module takes about three minutes.
``scripts/soak.py`` runs the same catalogue with concurrent writers for as long as asked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import httpx
import pytest
import trio
import trio.testing
import xxhash
from botocore.config import Config
from botocore.exceptions import ClientError

from chute.fs.embedded_store import EmbeddedStore
from chute.uploader.retry import RetryPolicy

from .conftest import (
    BUCKET,
    Mount,
    is_mounted,
    object_keys,
    pending_uploads,
    random_file,
    requires_fuse,
    upload_markers,
)
from .faultproxy import (
    ExpiredTokenFor,
    Fault,
    FaultProxy,
    Kind,
    Outage,
    ResetAfter,
    ResetBefore,
    StallRequest,
    StallResponse,
    Status,
    Throttle,
)

KiB = 1 << 10
MiB = 1 << 20
RING = 40 * MiB
BIG = 23 * MiB + 4099
"""Five parts: four full 5 MiB slices and a 3 MiB tail."""
SMALL = MiB + 17
"""Below one slice: a single PutObject."""
SLOW_SMALL = 600 * KiB + 17
"""A single PutObject that takes six seconds at 100 KiB/s."""
HUGE = 2 * RING + 3 * MiB + 11
"""Twice the ring: the writer waits for slots while the fault plays out (backpressure)."""
SIZES = (BIG, SMALL, SLOW_SMALL, HUGE)

LANDED = "landed"
FAILED = "failed loudly"
UNCONFIRMED = "eio-but-landed"
SILENT_BAD = "silent-bad"
UNCLEAN = "unclean"
OUTCOMES = (LANDED, FAILED, UNCONFIRMED, SILENT_BAD, UNCLEAN)
CLEANUP_GRACE = 20.0
"""Seconds a failed upload may take to be aborted (the janitor retries every 2 s)."""
RETRIED = "retrying "
"""What the mount logs once per retry (uploader/retry.py)."""


# -- the catalogue -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One fault scenario: what the proxy does, what must come of it, and the mount options."""

    name: str
    faults: tuple[Fault, ...]
    expect: str
    """LANDED (a transient fault) or FAILED (a permanent one); UNCONFIRMED when the fault
    takes the answer of the request that makes the object and then the store itself."""
    size: int = BIG
    budget: float = 20.0
    """--retry-budget, seconds."""
    stall: float = 3.0
    """--stall-timeout, seconds."""
    logs: tuple[str, ...] = ()
    """Lines the mount's log must contain: how the user learns what happened."""
    once: bool = False
    """Each of ``logs`` must appear exactly once (one failure, one explanation)."""
    not_cut: bool = False
    """No transfer may be cancelled or retried: the fault slowed it but it kept moving."""
    min_seconds: float = 0.0
    """The copy cannot honestly have been faster: the fault really held it up."""
    max_seconds: float = 120.0
    """A failure must reach the writer about when the retry budget says, not much later."""
    settle: float = 0.0
    """Seconds to let the mount finish what is still in flight before its log is read."""
    solo: bool = False
    """Transient only if one writer meets all of it: with concurrent writers (scripts/soak.py)
    another writer may take part of it and, for that writer, it is permanent."""
    bug: str | None = None
    """A known bug this row exposes, and where its fix goes (outside this module's reach)."""
    strict: bool = True
    """Whether the bug shows every time (else timing may hide it now and then)."""

    @property
    def options(self) -> tuple[str, ...]:
        return mount_options(self.budget, self.stall)


def mount_options(budget: float, stall: float) -> tuple[str, ...]:
    """Every mount here: 5 MiB slices in an 8-slot ring, a small budget and stall timeout."""
    return ("--slice-size", "5MiB", "--ring-size", "40MiB",
            "--retry-budget", f"{budget:g}", "--stall-timeout", f"{stall:g}")


PART = Kind.UPLOAD_PART
CREATE = Kind.CREATE_MULTIPART_UPLOAD
COMPLETE = Kind.COMPLETE_MULTIPART_UPLOAD
PUT = Kind.PUT_OBJECT
HEAD = Kind.HEAD_OBJECT
LIST = Kind.LIST_OBJECTS_V2
TAGGING = Kind.PUT_OBJECT_TAGGING
DELETE = Kind.DELETE_OBJECT
ABORT = Kind.ABORT_MULTIPART_UPLOAD
FOREVER = 300.0
"""The duration of a fault meant to outlast the copy (bounded, as the proxy wants)."""
STALLED = "failed: timeout ("
"""How a transfer cancelled by --stall-timeout is logged."""
MAY_HAVE_LANDED = "the object may have landed although the writer gets EIO"
OUTAGE_BUDGET = 30.0
"""For outages of 5 s: well past the outage, so the row shows an outage ridden out, not the
last attempt at the budget's end racing the outage's end."""

CATALOGUE: tuple[Row, ...] = (
    # Transient answers of the store on parts: retried with backoff.
    Row("500 InternalError on UploadPart x2", (Status(500, kind=PART, times=2),), LANDED),
    Row("503 ServiceUnavailable on UploadPart x3", (Status(503, kind=PART, times=3),), LANDED),
    Row("503 SlowDown on UploadPart x3", (Status(503, "SlowDown", kind=PART, times=3),), LANDED),
    Row("429 TooManyRequests on UploadPart x2", (Status(429, kind=PART, times=2),), LANDED),
    Row("400 RequestTimeout on UploadPart", (Status(400, "RequestTimeout", kind=PART),), LANDED),
    # The connection, before and after the store acted.
    Row("reset mid-body of UploadPart", (ResetBefore(kind=PART, after_body_bytes=MiB),), LANDED),
    Row("reset after UploadPart x2 (answer lost)", (ResetAfter(kind=PART, times=2),), LANDED),
    Row("stall 10 s mid-body of UploadPart (stall-timeout 2 s)",
        (StallRequest(10.0, kind=PART),), LANDED, stall=2.0, logs=(STALLED,)),
    Row("stall 10 s in UploadPart's answer (stall-timeout 2 s)",
        (StallResponse(10.0, kind=PART),), LANDED, stall=2.0, logs=(STALLED,)),
    Row("UploadPart at 200 KiB/s, 26 s (stall-timeout 8 s)", (Throttle(200 * KiB, kind=PART),),
        LANDED, stall=8.0, not_cut=True, min_seconds=20.0),
    Row("every PutObject at 100 KiB/s (stall-timeout 3 s)",
        (Throttle(100 * KiB, kind=PUT, times=None, duration=FOREVER),), LANDED,
        size=SLOW_SMALL, not_cut=True, min_seconds=5.0),
    Row("ExpiredToken on every write for 3 s",
        (ExpiredTokenFor(3.0, kind=(PART, CREATE, PUT, COMPLETE)),), LANDED,
        logs=("credentials: ExpiredToken",)),
    # Creating and completing the multipart upload.
    Row("500 on CreateMultipartUpload x2", (Status(500, kind=CREATE, times=2),), LANDED),
    Row("reset after CreateMultipartUpload (answer lost)", (ResetAfter(kind=CREATE),), LANDED,
        logs=("made by a CreateMultipartUpload whose answer was lost",)),
    Row("503 on CompleteMultipartUpload x2", (Status(503, kind=COMPLETE, times=2),), LANDED),
    Row("reset after CompleteMultipartUpload (answer lost)", (ResetAfter(kind=COMPLETE),),
        LANDED),
    Row("reset after Complete, retry told NoSuchUpload (as AWS does)",
        (ResetAfter(kind=COMPLETE), Status(404, "NoSuchUpload", kind=COMPLETE)), LANDED,
        logs=("the object is ours",), solo=True),
    Row("outage 5 s at CompleteMultipartUpload (budget 30 s)", (Outage(5.0, kind=COMPLETE),),
        LANDED, budget=OUTAGE_BUDGET, min_seconds=4.5),
    Row("500 on PutObjectTagging", (Status(500, kind=TAGGING),), LANDED),
    Row("503 on DeleteObject x2 (the upload marker)", (Status(503, kind=DELETE, times=2),),
        LANDED),
    # A small file: one PutObject.
    Row("503 on PutObject x2 (small file)", (Status(503, kind=PUT, times=2),), LANDED,
        size=SMALL),
    Row("reset after PutObject (small file, answer lost)", (ResetAfter(kind=PUT),), LANDED,
        size=SMALL),
    # cp's lookup of the destination: HeadObject, then ListObjectsV2.
    Row("503 on HeadObject x2 + 500 on ListObjectsV2 x2 (lookup)",
        (Status(503, kind=HEAD, times=2), Status(500, kind=LIST, times=2)), LANDED),
    Row("reset after HeadObject and ListObjectsV2 (lookup)",
        (ResetAfter(kind=HEAD), ResetAfter(kind=LIST)), LANDED),
    # The server goes away for less than the retry budget.
    Row("outage 5 s from the start (budget 30 s)", (Outage(5.0),), LANDED,
        budget=OUTAGE_BUDGET, min_seconds=4.5),
    Row("outage 5 s at the 3rd part (budget 30 s)", (Outage(5.0, kind=PART, after=2),), LANDED,
        budget=OUTAGE_BUDGET, min_seconds=4.5),
    Row("outage 5 s, file twice the ring (budget 30 s)", (Outage(5.0, kind=PART, after=3),),
        LANDED, size=HUGE, budget=OUTAGE_BUDGET, min_seconds=4.5),
    # Permanent: the writer must hear of it soon, and nothing may stay behind.
    Row("NoSuchUpload on UploadPart (session lost)", (Status(404, "NoSuchUpload", kind=PART),),
        FAILED, logs=("the parts already sent are gone",), max_seconds=10.0),
    Row("NoSuchUpload on UploadPart while another crawls (abort mid-part)",
        (Status(404, "NoSuchUpload", kind=PART), Throttle(MiB, kind=PART)), FAILED,
        size=HUGE, stall=2.0, logs=("the parts already sent are gone",), once=True,
        max_seconds=10.0, settle=5.0),
    Row("AccessDenied on every UploadPart, 503 on the abort x2",
        (Status(403, "AccessDenied", kind=PART, times=None, duration=FOREVER),
         Status(503, kind=ABORT, times=2)), FAILED,
        logs=("HTTP 403 AccessDenied",), max_seconds=10.0),
    Row("NoSuchUpload on CompleteMultipartUpload (no object)",
        (Status(404, "NoSuchUpload", kind=COMPLETE),), FAILED, max_seconds=10.0),
    Row("ExpiredToken on CreateMultipartUpload for 60 s (never refreshed)",
        (ExpiredTokenFor(60.0, kind=CREATE),), FAILED, logs=("credentials: ExpiredToken",),
        max_seconds=12.0),
    Row("outage 10 s at the 2nd part (budget 3 s)", (Outage(10.0, kind=PART, after=1),),
        FAILED, budget=3.0, logs=("could not abort multipart upload",
                                  "aborted leftover multipart upload"), max_seconds=10.0),
    Row("outage 20 s at CreateMultipartUpload (budget 3 s)", (Outage(20.0, kind=CREATE),),
        FAILED, budget=3.0, max_seconds=7.0),
    Row("outage 20 s from the start (lookup, budget 3 s)", (Outage(20.0),), FAILED, budget=3.0,
        max_seconds=7.0),
    # Permanent, after the store acted on the request that makes the object: nobody can know
    # whether it landed. The writer gets EIO and the log says the object may exist.
    Row("reset after PutObject, then outage 10 s (budget 3 s)",
        (ResetAfter(kind=PUT), Outage(10.0, kind=PUT)), UNCONFIRMED, size=SMALL, budget=3.0,
        logs=(MAY_HAVE_LANDED,), max_seconds=7.0),
    Row("reset after Complete, then outage 10 s (budget 3 s)",
        (ResetAfter(kind=COMPLETE), Outage(10.0, kind=COMPLETE)), UNCONFIRMED, budget=3.0,
        logs=(MAY_HAVE_LANDED,), max_seconds=10.0),
)


# -- judging an outcome ------------------------------------------------------------------------


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


# -- the tally, printed when the module ends -----------------------------------------------------


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


TALLY = Tally()


@pytest.fixture(scope="module", autouse=True)
def summary(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the fault table once the module is done; silent-bad must be 0."""
    yield
    if not TALLY.rows:
        return
    text = f"\nfault matrix (issue #7)\n{TALLY.table()}\n"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(text)
    else:  # pragma: no cover -- pytest always has one unless -p no:terminal
        print(text)
    assert TALLY.total(SILENT_BAD) == 0, "a copy reported success for a wrong object"


# -- mounts, proxies and writers -----------------------------------------------------------------


def start_mount(where: Path, endpoint_url: str, env: dict[str, str], options: tuple[str, ...],
                prefix: str | None = None) -> Mount:
    """``chute mount`` on ``where/mnt`` as conftest's mount_factory does it, with ``env`` as
    the whole environment (so credentials may come from a profile instead)."""
    prefix = prefix or f"t-{uuid.uuid4().hex[:10]}/"
    path = where / "mnt"
    path.mkdir(parents=True)
    log_path = where / "mount.log"
    args = [sys.executable, "-m", "chute.fs.cli", "mount", str(path),
            f"s3://{BUCKET}/{prefix.rstrip('/')}", "--endpoint-url", endpoint_url, "-v",
            *options]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    mount = Mount(path, prefix, proc, log_path, args)
    deadline = time.monotonic() + 30
    while not is_mounted(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            mount.unmount(timeout=10)
            raise RuntimeError(f"chute mount did not come up:\n{mount.log()}")
        time.sleep(0.05)
    return mount


def store_env(server: Any) -> dict[str, str]:
    """The environment mount_factory gives a mount: the store's keys, no profile."""
    env = {k: v for k, v in os.environ.items() if k != "AWS_PROFILE"}
    env |= {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "AWS_REGION": server.region}
    return env


def direct_client(server: Any) -> Any:
    """boto3 straight to a store (never through a proxy): what really is in the bucket."""
    return boto3.client(
        "s3", endpoint_url=server.endpoint_url, aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key, region_name=server.region,
        config=Config(retries={"max_attempts": 10, "mode": "standard"}),
    )


def run_cp(source: Path, target: Path, timeout: float = 240) -> tuple[int, str, float]:
    began = time.monotonic()
    result = subprocess.run(["cp", str(source), str(target)], capture_output=True, text=True,
                            timeout=timeout, check=False)
    return result.returncode, result.stderr, time.monotonic() - began


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Source]:
    where = tmp_path_factory.mktemp("sources")
    return {size: make_source(where / f"src-{size}", size, seed=size) for size in SIZES}


@pytest.fixture
def proxy(store: EmbeddedStore) -> Iterator[FaultProxy]:
    """Requested before mount_factory, so it is stopped only after the mounts are gone."""
    with FaultProxy.for_store(store) as p:
        yield p


# -- the matrix --------------------------------------------------------------------------------


def _param(row: Row) -> Any:
    marks = [pytest.mark.xfail(reason=row.bug, strict=row.strict)] if row.bug else []
    return pytest.param(row, id=row.name, marks=marks)


@pytest.mark.parametrize("row", [_param(r) for r in CATALOGUE])
@pytest.mark.e2e
@requires_fuse
def test_fault(row: Row, proxy: FaultProxy, mount_factory: Callable[..., Mount], s3: Any,
               sources: dict[int, Source]) -> None:
    source = sources[row.size]
    mount = mount_factory(*row.options, server=proxy)
    proxy.reset_stats()
    proxy.set_scenario(row.faults)
    rc, stderr, seconds = run_cp(source.path, mount.path / "f")
    injected = proxy.log
    verdict = judge(s3, mount.prefix, mount.key("f"), source, rc, stderr)
    proxy.set_scenario(None)
    TALLY.add(row.name, verdict.outcome)
    time.sleep(row.settle)
    log = mount.log()
    assert mount.unmount() == 0, log
    context = (f"{row.name}: {verdict.outcome} after {seconds:.1f}s (cp exit {rc}) "
               f"{verdict.detail}\ninjected: {injected}\n--- mount log ---\n{log}")
    # An outage that starts with the scenario takes no request, so leaves no log entry.
    immediate = any(isinstance(f, Outage) and f.immediate for f in row.faults)
    assert injected or immediate, f"the fault was never injected: {context}"
    assert verdict.outcome == row.expect, f"expected {row.expect}: {context}"
    for line in row.logs:
        assert line in log, f"the log lacks {line!r}: {context}"
        assert not row.once or log.count(line) == 1, f"{line!r} more than once: {context}"
    if row.not_cut:
        assert RETRIED not in log, f"a moving transfer was cut: {context}"
    assert seconds >= row.min_seconds, f"too fast for the fault: {context}"
    assert seconds <= row.max_seconds, f"the writer was kept waiting: {context}"


# -- credential rotation -----------------------------------------------------------------------


class RevokingProxy(FaultProxy):
    """A FaultProxy that, once ``revoked`` names an access key id, answers every request
    signed with that key ``403 InvalidAccessKeyId``, as a store does once the key is deleted."""

    revoked: str | None = None
    rejected = 0
    _invalid = Status(403, "InvalidAccessKeyId",
                      message="The AWS Access Key Id you provided does not exist in our records.")

    async def _exchange(self, conn: Any, request: Any, method: str, path: str, kind: Kind,
                        fault: Fault | None) -> bool:
        revoked = self.revoked
        if revoked and f"Credential={revoked}/" in (request.get("authorization") or ""):
            self.rejected += 1
            fault = self._invalid
        return await super()._exchange(conn, request, method, path, kind, fault)


def _credentials_file(path: Path, key: str, secret: str) -> None:
    """Replace the file at once (rename), as a rotation tool or credential helper does."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"[rotating]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
    tmp.replace(path)


ROTATION = "key revoked mid-upload, new key in the profile 0.5 s later"


def _write_rotating(target: Path, data: bytes, proxy: RevokingProxy, old_key: str,
                    credentials: Path, new: tuple[str, str]) -> OSError | None:
    """Write ``data`` to ``target``; halfway, revoke ``old_key`` at the proxy and put the new
    key into the credentials file half a second later. The error a write or close gave."""
    half = 12 * MiB
    rotate = threading.Timer(0.5, _credentials_file, (credentials, *new))
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    error: OSError | None = None
    rotating = False
    try:
        os.write(fd, data[:half])
        os.fsync(fd)  # two parts acknowledged under the old key
        proxy.revoked = old_key
        rotate.start()
        rotating = True
        view = memoryview(data)[half:]
        while view:
            view = view[os.write(fd, view[:MiB]):]
    except OSError as exc:
        error = exc
    finally:
        try:
            os.close(fd)
        except OSError as exc:
            error = error or exc
        if rotating:
            rotate.join()
    return error


@pytest.mark.e2e
@requires_fuse
def test_credential_rotation(tmp_path: Path, sources: dict[int, Source]) -> None:
    """The mount's profile names key 1; halfway through a file the store stops accepting it
    and the credentials file gets key 2. chute re-reads the profile and the copy lands."""
    server = EmbeddedStore(tmp_path / "store", bucket=BUCKET)
    old_key, old_secret = server.access_key, server.secret_key
    new_key, new_secret = secrets.token_hex(10).upper(), secrets.token_hex(20)
    identities = json.loads(server.identities_file.read_text())
    identities["identities"][0]["credentials"].append(
        {"accessKey": new_key, "secretKey": new_secret})
    server.identities_file.write_text(json.dumps(identities))
    credentials = tmp_path / "credentials"
    _credentials_file(credentials, old_key, old_secret)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"AWS_SHARED_CREDENTIALS_FILE": str(credentials), "AWS_PROFILE": "rotating",
            "AWS_CONFIG_FILE": str(tmp_path / "no-config"), "AWS_REGION": server.region}
    source = sources[BIG]
    data = source.path.read_bytes()
    server.start()
    try:
        s3 = direct_client(server)
        with RevokingProxy(server.endpoint_url) as proxy:
            mount = start_mount(tmp_path / "m", proxy.url, env, mount_options(20.0, 3.0))
            try:
                error = _write_rotating(mount.path / "f", data, proxy, old_key, credentials,
                                        (new_key, new_secret))
                rc = 0 if error is None else 1
                stderr = "" if error is None else f"{error.strerror}"
                verdict = judge(s3, mount.prefix, mount.key("f"), source, rc, stderr)
                TALLY.add(ROTATION, verdict.outcome)
                log = mount.log()
            finally:
                status = mount.unmount()
        assert status == 0, log
        assert proxy.rejected >= 1, log
        assert verdict.outcome == LANDED, f"{verdict}\n{log}"
        assert "credentials: InvalidAccessKeyId" in log
    finally:
        server.stop()


# -- the default budget, on a virtual clock ----------------------------------------------------


def test_default_budget_rides_out_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    """What no end-to-end row can afford to wait for: with the mount's default policy
    (--retry-budget 120), 200 requests to a store that refuses connections for 110 s
    all get through. The attempt cap must not end them first (it did, at 15 attempts, after
    86 s on average), nor a jittered delay that would end past the budget (the last attempt
    is made when the budget ends)."""
    caplog.set_level(logging.CRITICAL, logger="chute.uploader.retry")

    async def through_outage(seconds: float) -> bool:
        began = trio.current_time()

        async def attempt() -> None:
            if trio.current_time() - began < seconds:
                raise httpx.ConnectError("all attempts to connect failed")

        try:
            await RetryPolicy().run("UploadPart", attempt)
        except httpx.ConnectError:
            return False
        return True

    state = random.getstate()
    try:
        random.seed(7)
        landed = [trio.run(through_outage, 110.0,
                           clock=trio.testing.MockClock(autojump_threshold=0))
                  for _ in range(200)]
    finally:
        random.setstate(state)
    assert landed.count(False) == 0
