"""MultipartSession alone, against the in-memory S3: create, parts, complete, put, abort.

No ring and no writer: the session is what a file upload says to the store, so each test
calls it directly and checks the store (objects, pending uploads, markers) afterwards.
"""

from __future__ import annotations

import hashlib

import pytest
import trio

from chute.uploader import multipart
from chute.uploader.checksums import HASH_TAG, multipart_etag
from chute.uploader.errors import StoreError, UploadFailed, UploadSessionLost
from chute.uploader.janitor import AbortJanitor
from chute.uploader.leftovers import MARKER_DIR
from chute.uploader.multipart import MultipartSession
from chute.uploader.retry import RetryPolicy, RetryReason
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
    import xxhash

    data = bytes(range(256)) * 1000
    store.put("k", data)
    session = MultipartSession(client, "k")
    assert await session.read_back_hash(len(data), 4096) == xxhash.xxh3_128_hexdigest(data)
