"""The upload marker beside the first part, and its deletion beside the tag (upload_marker.py).

Against the in-memory S3 with every request taking one (trio) second, so that the round
trips a close or a first part waits for can be counted on the clock; and the ordering rules
that keep a marker from outliving its upload.
"""

from __future__ import annotations

import httpx
import pytest
import trio

from chute.uploader.errors import StoreError
from chute.uploader.leftovers import MARKER_DIR
from chute.uploader.multipart import MultipartSession
from chute.uploader.retry import RetryPolicy
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


def slow(store: MemoryS3, seconds: float, only: str | None = None) -> None:
    """Every request (or only those whose key starts with ``only``) takes ``seconds``."""
    answer = store.handle

    async def slower(request: httpx.Request) -> httpx.Response:
        if only is None or request.url.path.lstrip("/").partition("/")[2].startswith(only):
            await trio.sleep(seconds)
        return await answer(request)

    store.transport.handler = slower  # type: ignore[assignment]


def markers(store: MemoryS3) -> list[str]:
    return store.keys(MARKER_DIR)


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
    assert markers(store) == [] and store.objects["k"].tags == {"chute-xxh3-128": "h"}


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
