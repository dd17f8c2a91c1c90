"""Survive the network and the server: a fault matrix against real mounts (issue #7).

Every row of ``CATALOGUE`` (tests/support/fault_catalogue.py) is one fault, declared as data.
It runs against a real ``chute mount`` whose store is the session's SeaweedFS seen through
:class:`FaultProxy` (tests/support/faultproxy/), copies a file in with ``cp`` (23 MiB + a few
bytes = 5 parts of a 5 MiB slice, or a small file sent as one PutObject when the fault
targets PutObject), and judges what a user would see (tests/support/verdicts.py). Exactly
one of two outcomes is acceptable:

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

import json
import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from chute.fs.embedded_store import EmbeddedStore
from chute.uploader.errors import StoreUnreachable
from chute.uploader.retry import RetryPolicy
from tests.support.fault_catalogue import BIG, CATALOGUE, RETRIED, SIZES, MiB, Row, mount_options
from tests.support.faultproxy import Fault, FaultProxy, Kind, Outage, Status
from tests.support.files import close_keeping_first
from tests.support.mounts import Mount, requires_fuse, start_mount
from tests.support.store import BUCKET, direct_client
from tests.support.verdicts import LANDED, SILENT_BAD, Source, Tally, judge, make_source, run_cp

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


# -- sources and the proxy ----------------------------------------------------------------


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
        error = close_keeping_first(fd, error)
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
                raise StoreUnreachable("UploadPart", "connection error (ConnectError)")

        try:
            await RetryPolicy().run("UploadPart", attempt)
        except StoreUnreachable:
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
