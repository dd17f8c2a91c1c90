"""Leftover cleanup (uploader/leftovers.py) on the in-memory S3: what a starting mount aborts.

Each test plants markers and pending uploads directly in the store, as a dead mount, a live
one, another PID namespace, another machine or an attacker would have left them, then runs
``clean`` as a mount of the prefix ``mine/`` does at start and checks what is still pending.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import time
import uuid
from urllib.parse import quote

import pytest
import trio

from chute.uploader import leftovers
from chute.uploader.leftovers import MARKER_DIR, STALE_AFTER, Owner
from chute.uploader.retry import RetryPolicy
from tests.support.memory_s3 import MemoryS3, StoredObject, memory_client

PREFIX = "mine/"
MACHINE = "5f0c1a2b3c4d5e6f708192a3b4c5d6e7"


@pytest.fixture
def store() -> MemoryS3:
    return MemoryS3()


@pytest.fixture
def here(monkeypatch: pytest.MonkeyPatch) -> Owner:
    """This process as its markers name it, with a machine id even where /etc has none."""
    owner = dataclasses.replace(leftovers.this_process(), machine=MACHINE)
    monkeypatch.setattr(leftovers, "this_process", lambda: owner)
    monkeypatch.setattr(leftovers, "_reported", set())
    return owner


@pytest.fixture
async def client(store: MemoryS3):
    client = memory_client(store, prefix=PREFIX, policy=RetryPolicy(budget=30))
    yield client
    await client.aclose()


@pytest.fixture
async def other_client(store: MemoryS3):
    """Another client of the same bucket, writing outside ``mine/``."""
    client = memory_client(store, prefix="theirs/", policy=RetryPolicy(budget=30))
    yield client
    await client.aclose()


async def start_upload(client, name: str) -> str:
    return await client.create_multipart_upload(client.bucket.key(name), {})


def plant(store: MemoryS3, upload_id: str, key: str, owner: str, *,
          age: float = 0.0, marker_prefix: str = PREFIX) -> str:
    """A marker object as any writer of the bucket could put it."""
    marker = f"{marker_prefix}{MARKER_DIR}/{upload_id}"
    store.objects[marker] = leftovers_object(quote(key, safe=""), owner, age)
    return marker


def leftovers_object(quoted_key: str, owner: str, age: float) -> StoredObject:
    return StoredObject(b"", "d41d8cd98f00b204e9800998ecf8427e",
                        metadata={"chute-key": quoted_key, "chute-owner": owner},
                        modified=time.time() - age)


def pending(store: MemoryS3) -> set[str]:
    return set(store.uploads)


def aborts(store: MemoryS3) -> list[str]:
    return [r.query.get("uploadId", "") for r in store.requests
            if r.operation == "AbortMultipartUpload"]


def ended_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- liveness ---------------------------------------------------------------------------------


async def test_live_mount_in_this_namespace_is_left_alone(store, client, here) -> None:
    upload_id = await start_upload(client, "big")
    await leftovers.record(client, "mine/big", upload_id)
    try:
        assert await leftovers.clean(client) == 0
        assert upload_id in pending(store)
        assert store.keys(f"{PREFIX}{MARKER_DIR}/") == [f"{PREFIX}{MARKER_DIR}/{upload_id}"]
    finally:
        await leftovers.forget(client, upload_id)


async def test_ended_process_and_recycled_pid_are_dead(store, client, here) -> None:
    gone = await start_upload(client, "gone")
    plant(store, gone, "mine/gone", dataclasses.replace(here, pid=ended_pid()).encode())
    recycled = await start_upload(client, "recycled")
    # our own pid, but a start time that is not ours: the pid was reused by this process
    plant(store, recycled, "mine/recycled",
          dataclasses.replace(here, start=here.start + 1).encode())
    assert await leftovers.clean(client) == 2
    assert pending(store) == set()
    assert store.keys(f"{PREFIX}{MARKER_DIR}/") == []


async def test_another_boot_of_this_machine_is_dead(store, client, here) -> None:
    upload_id = await start_upload(client, "f")
    owner = dataclasses.replace(here, boot=str(uuid.uuid4()))
    plant(store, upload_id, "mine/f", owner.encode())  # fresh: age plays no part
    assert await leftovers.clean(client) == 1
    assert pending(store) == set()


async def test_other_pid_namespace_with_a_fresh_lease_is_kept(store, client, here) -> None:
    upload_id = await start_upload(client, "f")
    # Same boot and host name, another PID namespace: its pid means nothing here (it may even
    # be a pid that has ended in ours).
    owner = dataclasses.replace(here, pidns=str(int(here.pidns or "1") + 1), pid=ended_pid())
    plant(store, upload_id, "mine/f", owner.encode(), age=STALE_AFTER - 120)
    assert await leftovers.clean(client) == 0
    assert upload_id in pending(store)


async def test_other_pid_namespace_with_a_stale_lease_is_dead(store, client, here) -> None:
    upload_id = await start_upload(client, "f")
    owner = dataclasses.replace(here, pidns=str(int(here.pidns or "1") + 1), pid=1)
    plant(store, upload_id, "mine/f", owner.encode(), age=STALE_AFTER + 120)
    assert await leftovers.clean(client) == 1
    assert pending(store) == set()


async def test_another_machine_is_judged_by_its_lease(store, client, here) -> None:
    fresh, stale = await start_upload(client, "fresh"), await start_upload(client, "stale")
    other = dataclasses.replace(here, boot=str(uuid.uuid4()), machine="a" * 32, pid=1)
    plant(store, fresh, "mine/fresh", other.encode(), age=60)
    plant(store, stale, "mine/stale", other.encode(), age=STALE_AFTER + 60)
    # the same host name on a machine without a machine id: cannot be told from a reboot
    unknown = dataclasses.replace(here, boot=str(uuid.uuid4()), machine="", pid=1)
    nameless = await start_upload(client, "nameless")
    plant(store, nameless, "mine/nameless", unknown.encode(), age=60)
    assert await leftovers.clean(client) == 1
    assert pending(store) == {fresh, nameless}


async def test_legacy_host_pid_markers_are_judged_by_age(store, client, here) -> None:
    fresh, stale = await start_upload(client, "fresh"), await start_upload(client, "stale")
    plant(store, fresh, "mine/fresh", f"{here.host}:{ended_pid()}", age=60)
    plant(store, stale, "mine/stale", f"{here.host}:{ended_pid()}", age=STALE_AFTER + 60)
    assert await leftovers.clean(client) == 1
    assert pending(store) == {fresh}


async def test_now_is_what_ages_are_measured_at(store, client, here) -> None:
    upload_id = await start_upload(client, "f")
    owner = dataclasses.replace(here, pidns="1" + (here.pidns or "1"), pid=1)
    plant(store, upload_id, "mine/f", owner.encode())
    assert await leftovers.clean(client) == 0
    assert await leftovers.clean(client, now=time.time() + STALE_AFTER + 60) == 1


# -- untrusted markers ------------------------------------------------------------------------


async def test_marker_naming_a_key_outside_the_prefix_is_ignored(
    store, client, other_client, here, caplog: pytest.LogCaptureFixture,
) -> None:
    theirs = await start_upload(other_client, "big")
    dead = dataclasses.replace(here, boot=str(uuid.uuid4())).encode()
    plant(store, theirs, "theirs/big", dead)
    # the same, hiding behind a key that only looks like it is under the prefix
    plant(store, theirs + "x", "mine/../theirs/big", dead)
    with caplog.at_level(logging.WARNING, logger="chute.uploader.leftovers"):
        assert await leftovers.clean(client) == 0
        assert await leftovers.clean(client) == 0
    assert theirs in pending(store) and aborts(store) == []
    warnings = [r.getMessage() for r in caplog.records]
    assert len([w for w in warnings if "outside this mount's prefix" in w]) == 1
    assert len([w for w in warnings if "'..'" in w]) == 1
    assert len(warnings) == 2
    # A marker naming a key of ours with their upload id (SeaweedFS aborts by upload id
    # alone, whatever the key): their upload is not pending under our prefix, so no abort;
    # the marker, dead and in our own marker directory, is deleted.
    marker = plant(store, theirs, "mine/big", dead)
    assert await leftovers.clean(client) == 0
    assert theirs in pending(store) and aborts(store) == []
    assert marker not in store.objects


async def test_marker_whose_key_differs_from_its_uploads_key_is_ignored(
    store, client, here, caplog: pytest.LogCaptureFixture,
) -> None:
    real = await start_upload(client, "real")
    dead = dataclasses.replace(here, boot=str(uuid.uuid4())).encode()
    plant(store, real, "mine/decoy", dead)
    with caplog.at_level(logging.WARNING, logger="chute.uploader.leftovers"):
        assert await leftovers.clean(client) == 0
    assert real in pending(store) and aborts(store) == []
    assert any("is of 'mine/real'" in r.getMessage() for r in caplog.records)


async def test_malformed_markers_are_ignored_logged_once_and_do_not_stop_the_rest(
    store, client, here, caplog: pytest.LogCaptureFixture,
) -> None:
    dead = dataclasses.replace(here, boot=str(uuid.uuid4())).encode()
    victims = {name: await start_upload(client, name) for name in ("a", "b", "c", "d", "e")}
    plant(store, victims["a"], "mine/a", "v2 boot=" + "x" * 5000)           # oversized owner
    plant(store, victims["b"], "mine/b", "not an owner\nat all")              # malformed owner
    store.objects[f"{PREFIX}{MARKER_DIR}/{victims['c']}"] = leftovers_object(
        "%ff%fe", dead, 0)                                                    # key not UTF-8
    plant(store, victims["d"], f"mine/{MARKER_DIR}/x", dead)                  # inside markers
    store.objects[f"{PREFIX}{MARKER_DIR}/{victims['e']}"] = leftovers_object(
        "mine%2F" + "k" * 4000, dead, 0)                                      # oversized key
    plant(store, "weird/id", "mine/a", dead)                                  # id with a slash
    plant(store, "\x1b[31mred", "mine/a", dead)                               # control chars
    store.objects[f"{PREFIX}{MARKER_DIR}/nometa"] = leftovers_object("", "", 0)
    good = await start_upload(client, "good")
    plant(store, good, "mine/good", dead)
    with caplog.at_level(logging.WARNING, logger="chute.uploader.leftovers"):
        assert await leftovers.clean(client) == 1
        first = len(caplog.records)
        assert await leftovers.clean(client) == 0
    assert pending(store) == set(victims.values())
    bad = [r.getMessage() for r in caplog.records if "ignoring upload marker" in r.getMessage()]
    assert len(bad) == first - 1 == 8  # each bad marker once; the abort's line is the other
    assert len(caplog.records) == first  # nothing new on the second pass
    assert all("\n" not in m and "\x1b" not in m for m in bad)  # quoted, not raw


async def test_dead_marker_whose_upload_is_gone_is_deleted(store, client, here) -> None:
    owner = dataclasses.replace(here, boot=str(uuid.uuid4()))
    marker = plant(store, "finished-long-ago", "mine/f", owner.encode())
    assert await leftovers.clean(client) == 0
    assert marker not in store.objects and aborts(store) == []


async def test_a_store_error_on_one_marker_does_not_stop_the_rest(
    store, here, caplog: pytest.LogCaptureFixture,
) -> None:
    client = memory_client(store, prefix=PREFIX, policy=RetryPolicy(max_attempts=1))
    try:
        dead = dataclasses.replace(here, boot=str(uuid.uuid4())).encode()
        first, second = await start_upload(client, "a"), await start_upload(client, "b")
        plant(store, first, "mine/a", dead)
        plant(store, second, "mine/b", dead)
        store.fail_next("HeadObject", status=500, code="InternalError")
        assert await leftovers.clean(client) == 1
        assert len(pending(store)) == 1
    finally:
        await client.aclose()


# -- the owner's side -------------------------------------------------------------------------


async def test_live_markers_are_renewed_and_a_forgotten_one_stays_gone(
    autojump_clock, store, client, here,
) -> None:
    upload_id = await start_upload(client, "big")
    await leftovers.record(client, "mine/big", upload_id)
    marker = f"{PREFIX}{MARKER_DIR}/{upload_id}"
    store.objects[marker].modified -= 3000  # as if written 50 minutes ago

    def puts() -> int:
        return sum(1 for r in store.requests if r.operation == "PutObject" and r.key == marker)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(leftovers.keep_fresh, client, 10.0)
        await trio.sleep(25)
        assert puts() == 3  # the record and two renewals
        assert time.time() - store.objects[marker].modified < 60
        assert Owner.decode(store.objects[marker].metadata["chute-owner"]) == here
        await leftovers.forget(client, upload_id)
        await trio.sleep(25)
        nursery.cancel_scope.cancel()
    assert marker not in store.objects and puts() == 3


def test_owner_round_trips_and_reads_this_process() -> None:
    me = leftovers.this_process()
    assert me.pid > 0 and me.start == leftovers.process_start(me.pid)
    odd = dataclasses.replace(me, host="a host/with:odd chars")
    assert Owner.decode(odd.encode()) == odd
    assert Owner.decode(odd.encode() + " extra") is None
    assert leftovers.process_start(ended_pid()) is None
