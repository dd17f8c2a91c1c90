"""MultipartSession alone, against the in-memory S3: create, parts, complete, put, abort.

No ring and no writer: the session is what a file upload says to the store, so each test
calls it directly and checks the store (objects, pending uploads, markers) afterwards. The
upload marker (upload_marker.py) goes beside the first part and its deletion beside the
tag: with every request taking one (trio) second, the round trips a first part or a close
waits for are counted on the clock.
"""

from __future__ import annotations

import hashlib

import httpx
import pytest
import trio
import xxhash

from chute.uploader import multipart
from chute.uploader.checksums import HASH_TAG, multipart_etag
from chute.uploader.errors import StoreError, UploadFailed, UploadSessionLost
from chute.uploader.hash_tag import tag_object
from chute.uploader.janitor import AbortJanitor
from chute.uploader.leftovers import MARKER_DIR
from chute.uploader.multipart import MultipartSession
from chute.uploader.retry import RetryPolicy, RetryReason
from chute.uploader.upload_marker import MarkerState, UploadMarker
from tests.support.memory_s3 import MemoryS3, memory_client

MiB = 1 << 20


@pytest.fixture
def store() -> MemoryS3:
    return MemoryS3()


@pytest.fixture
async def client(store: MemoryS3):
    client = memory_client(store, policy=RetryPolicy(budget=30))
    yield client
    await client.aclose()


def markers(store: MemoryS3) -> list[str]:
    return store.keys(MARKER_DIR)


async def test_create_parts_complete(autojump_clock, store, client) -> None:
    session = MultipartSession(client, "k", checksum="crc32c")
    upload_id = await session.create({"chute-mode": "600"})
    assert await session.create({"ignored": "1"}) == upload_id  # once
    assert markers(store) == []  # the marker goes beside the first part
    first, last = bytes(range(256)) * (5 * MiB // 256), b"tail"
    # parts may be sent in any order; Complete lists them ascending
    await session.upload_part(2, last)
    assert markers(store) == [f"{MARKER_DIR}/{upload_id}"]
    await session.upload_part(1, first)
    etag = await session.complete(len(first) + len(last))
    assert etag == multipart_etag([hashlib.md5(first).hexdigest(),
                                   hashlib.md5(last).hexdigest()])
    assert store.body("k") == first + last
    assert store.objects["k"].metadata == {"chute-mode": "600"}
    assert session.metadata_sent == {"chute-mode": "600"}
    assert store.uploads == {} and markers(store) == []
    stats = session.statistics()
    assert (stats.upload_id, stats.parts_acknowledged, stats.retries) == (upload_id, 2, {})
    await session.tag("abc")
    assert store.objects["k"].tags == {HASH_TAG: "abc"}
    part = next(r for r in store.requests if r.operation == "UploadPart")
    assert "x-amz-checksum-crc32c" in part.headers


async def test_put_sends_metadata_tag_and_checksum(autojump_clock, store, client) -> None:
    session = MultipartSession(client, "small", checksum="md5")
    etag = await session.put(b"abc", {"chute-mode": "644"}, "xxh")
    assert etag == hashlib.md5(b"abc").hexdigest()
    (put,) = store.requests
    assert "content-md5" in put.headers
    assert store.objects["small"].tags == {HASH_TAG: "xxh"}
    assert store.objects["small"].metadata == {"chute-mode": "644"}


async def test_abort_leaves_nothing_and_is_idempotent(autojump_clock, store, client) -> None:
    session = MultipartSession(client, "k")
    await session.create({})
    await session.upload_part(1, b"x" * (5 * MiB))
    await session.abort()
    await session.abort()
    assert store.uploads == {} and markers(store) == [] and store.keys() == []
    assert store.operations().count("AbortMultipartUpload") == 1


async def test_nosuchupload_is_upload_session_lost(autojump_clock, store, client) -> None:
    session = MultipartSession(client, "k")
    await session.create({})
    store.uploads.clear()  # the store forgot the upload
    with pytest.raises(UploadSessionLost):
        await session.upload_part(1, b"x")


async def test_nosuchupload_after_abort_is_that_abort(autojump_clock, store, client) -> None:
    session = MultipartSession(client, "k")
    await session.create({})
    await session.abort()
    with pytest.raises(StoreError) as excinfo:
        await session.upload_part(1, b"x")
    assert not isinstance(excinfo.value, UploadSessionLost)
    assert excinfo.value.code == "NoSuchUpload"


async def test_abort_while_create_is_on_its_way(autojump_clock, store, client) -> None:
    """The file failed while its Create was in flight: the upload it makes is aborted."""
    session = MultipartSession(client, "k")
    store.fail_next("CreateMultipartUpload", status=503, delay=5.0)
    failed: list[BaseException] = []

    async def create() -> None:
        try:
            await session.create({})
        except UploadFailed as exc:
            failed.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(create)
        await trio.sleep(1.0)
        await session.abort()
    assert len(failed) == 1
    assert store.uploads == {} and markers(store) == []
    with pytest.raises(UploadFailed):
        await session.create({})


async def test_a_failed_create_is_not_tried_again(autojump_clock, store, client) -> None:
    session = MultipartSession(client, "k")
    store.fail_next("CreateMultipartUpload", code="AccessDenied")
    with pytest.raises(StoreError, match="AccessDenied"):
        await session.create({})
    with pytest.raises(StoreError, match="AccessDenied"):
        await session.create({})
    assert store.operations() == ["CreateMultipartUpload"]


async def test_lost_create_answer_aborts_the_stray_upload(autojump_clock, store,
                                                          client) -> None:
    session = MultipartSession(client, "k")
    store.fail_next("CreateMultipartUpload", after_apply=True)
    upload_id = await session.create({})
    assert session.statistics().retries == {RetryReason.CONNECTION_LOST: 1}
    assert list(store.uploads) == [upload_id]  # the first attempt's upload was found, aborted


async def test_failed_abort_goes_to_the_janitor(autojump_clock, store, client) -> None:
    janitor = AbortJanitor(client)
    session = MultipartSession(client, "k", defer_abort=janitor.defer)
    await session.create({})
    store.fail_next("AbortMultipartUpload", status=503, times=1000)
    began = trio.current_time()
    await session.abort()
    assert trio.current_time() - began <= multipart.ABORT_BUDGET + 3.0
    assert janitor.pending == 1 and len(store.uploads) == 1
    store.faults.clear()  # the store is back
    async with trio.open_nursery() as nursery:
        nursery.start_soon(janitor.run)
        await trio.sleep(5.0)
        nursery.cancel_scope.cancel()
    assert janitor.pending == 0
    assert store.uploads == {} and markers(store) == []


async def test_read_back_hash(autojump_clock, store, client) -> None:
    data = bytes(range(256)) * 1000
    store.put("k", data)
    session = MultipartSession(client, "k")
    assert await session.read_back_hash(len(data), 4096) == xxhash.xxh3_128_hexdigest(data)


async def test_the_hash_tag_after_complete_only_logs_a_failure(autojump_clock, store, client,
                                                              caplog) -> None:
    """hash_tag.tag_object: the hash read back when not given, tagged; a failed read-back
    gives no hash (not a wrong one), a failed tag keeps the hash; neither raises."""
    session = MultipartSession(client, "k")
    await session.create({})
    await session.upload_part(1, b"data")
    await session.complete(4)
    digest = xxhash.xxh3_128_hexdigest(b"data")
    assert await tag_object(session, "/k", None, size=4, chunk=2, why="test") == (digest, 4)
    assert store.objects["k"].tags == {HASH_TAG: digest}
    store.fail_next("GetObject", status=403, code="AccessDenied")
    assert await tag_object(session, "/k", None, size=4, chunk=4, why="test") == ("", 0)
    store.fail_next("PutObjectTagging", status=403, code="AccessDenied")
    assert await tag_object(session, "/k", "abc", size=4, chunk=4, why="test") == ("abc", 0)
    assert caplog.text.count("storing its xxh3-128 tag failed") == 2


# -- the upload marker (upload_marker.py) --------------------------------------

def slow(store: MemoryS3, seconds: float, only: str | None = None) -> None:
    """Every request (or only those whose key starts with ``only``) takes ``seconds``."""
    answer = store.handle

    async def slower(request: httpx.Request) -> httpx.Response:
        if only is None or request.url.path.lstrip("/").partition("/")[2].startswith(only):
            await trio.sleep(seconds)
        return await answer(request)

    store.transport.handler = slower  # type: ignore[assignment]


async def test_the_first_part_does_not_wait_for_the_marker(autojump_clock, store,
                                                           client) -> None:
    slow(store, 1.0)
    session = MultipartSession(client, "k")
    began = trio.current_time()
    upload_id = await session.create({})
    await session.upload_part(1, b"x" * (5 * MiB))
    # Create, then the part and the marker together: two round trips, not three
    assert trio.current_time() - began == pytest.approx(2.0)
    assert markers(store) == [f"{MARKER_DIR}/{upload_id}"]
    await session.upload_part(2, b"y")
    assert store.operations().count("PutObject") == 1  # the marker, once


async def test_close_waits_one_round_trip_for_the_tag_and_the_marker(
        autojump_clock, store, client) -> None:
    session = MultipartSession(client, "k")
    await session.create({})
    await session.upload_part(1, b"x")
    slow(store, 1.0)
    began = trio.current_time()
    await session.complete(1, alongside=lambda: session.tag("h"))
    # Complete, then the marker's DeleteObject beside the PutObjectTagging
    assert trio.current_time() - began == pytest.approx(2.0)
    assert markers(store) == [] and store.objects["k"].tags == {HASH_TAG: "h"}


async def test_complete_sends_a_marker_no_part_carried(autojump_clock, store,
                                                       client) -> None:
    """A marker is in the bucket before Complete even if no sent part took it along."""
    marker = UploadMarker(client)
    marker.expect("u1", "k")
    assert marker.due and markers(store) == []
    await marker.sent()
    assert marker.state is MarkerState.SENT and markers(store) == [f"{MARKER_DIR}/u1"]
    await marker.forget(wait=1.0)
    assert markers(store) == [] and marker.state is MarkerState.NONE


async def test_a_marker_never_sent_is_not_deleted(autojump_clock, store, client) -> None:
    marker = UploadMarker(client)
    marker.expect("u1", "k")
    await marker.forget(wait=1.0)
    assert "DeleteObject" not in store.operations()
    with pytest.raises(UploadFailed):  # asked for once forgotten: an error, not a hang
        await marker.sent()
    with pytest.raises(UploadFailed):
        await UploadMarker(client).sent()
    assert store.operations() == []


async def test_a_failed_marker_fails_the_complete(autojump_clock, store, client) -> None:
    """The part lands, its marker does not: the upload is not completed (the writer gets
    its error) and the abort leaves nothing."""
    store.fail_next(lambda r: r.key.startswith(MARKER_DIR), status=403, code="AccessDenied")
    session = MultipartSession(client, "k")
    await session.create({})
    await session.upload_part(1, b"x")
    with pytest.raises(StoreError) as excinfo:
        await session.complete(1)
    assert excinfo.value.code == "AccessDenied"
    assert "CompleteMultipartUpload" not in store.operations()
    await session.abort()
    assert store.uploads == {} and markers(store) == [] and store.keys() == []


async def test_a_part_failure_is_raised_bare_once_the_marker_settled(
        autojump_clock, store, client) -> None:
    slow(store, 3.0, only=MARKER_DIR)
    store.fail_next("UploadPart", status=403, code="AccessDenied")
    session = MultipartSession(client, "k")
    await session.create({})
    began = trio.current_time()
    with pytest.raises(StoreError):  # not an ExceptionGroup
        await session.upload_part(1, b"x")
    assert trio.current_time() - began == pytest.approx(3.0)
    assert len(markers(store)) == 1
    await session.abort()
    assert store.uploads == {} and markers(store) == []


async def test_an_abort_deletes_the_marker_only_after_its_put_landed(
        autojump_clock, store, client) -> None:
    """The file fails while its first part's marker is on its way: the abort's DELETE must
    not overtake the PUT, or the marker would land after it and stay."""
    slow(store, 5.0, only=MARKER_DIR)
    session = MultipartSession(client, "k")
    await session.create({})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.upload_part, 1, b"x")  # landed at once, its marker not
        await trio.sleep(1.0)
        await session.abort()
        # the PUT landed at 5 s, then the DELETE (5 s more: the marker directory is slow)
        assert trio.current_time() == pytest.approx(10.0)
    assert store.uploads == {} and markers(store) == []
    assert store.operations()[-1] == "DeleteObject"
