"""FileUpload and the Uploader's workers against the in-memory S3: no FUSE, root or SeaweedFS.

Each test runs an Uploader (ring, workers, janitor) on trio's virtual clock
(``autojump_clock``: retries' backoff and the janitor's sleeps take no real time) over
tests/support/memory_s3.py, and checks what the store holds afterwards.
"""

from __future__ import annotations

import errno
import hashlib

import pytest
import trio
import xxhash

from chute.uploader.checksums import HASH_TAG, multipart_etag
from chute.uploader.errors import BackwardWrite, ObjectExists, UploadFailed, errno_for
from chute.uploader.file_upload import FileUpload, UploadState
from chute.uploader.leftovers import MARKER_DIR
from chute.uploader.retry import RetryReason
from chute.uploader.uploader import Uploader
from tests.support.memory_s3 import MemoryS3
from tests.support.memory_uploader import SLICE, data_of, run_sliced

MiB = 1 << 20


@pytest.fixture
def store() -> MemoryS3:
    return MemoryS3()


run = run_sliced


async def write_all(upload: FileUpload, data: bytes, chunk: int = MiB, start: int = 0) -> None:
    for offset in range(start, len(data), chunk):
        await upload.write(offset, data[offset : offset + chunk])


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def assert_nothing_left(store: MemoryS3, uploader: Uploader) -> None:
    assert store.uploads == {}, "a multipart upload was left pending"
    assert store.keys(MARKER_DIR) == []
    assert uploader.ring.statistics().free == len(uploader.ring.slots)


async def test_small_file_is_one_put_with_metadata_tag_and_checksum(autojump_clock,
                                                                    store) -> None:
    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("d/small", "/d/small", {"chute-mode": "644"})
        upload.metadata["chute-mtime-ns"] = "7"  # may change until the Put is sent
        await upload.write(0, b"hello ")
        await upload.write(6, b"world")
        await upload.finalize()
        assert upload.state is UploadState.DONE
        assert upload.metadata_sent == {"chute-mode": "644", "chute-mtime-ns": "7"}
        assert upload.xxh3_128 == xxhash.xxh3_128_hexdigest(b"hello world")
        assert upload.etag == store.objects["d/small"].etag

    uploader = await run(store, body)
    assert store.operations() == ["PutObject"]
    (put,) = store.requests
    assert "x-amz-checksum-crc32c" in put.headers
    stored = store.objects["d/small"]
    assert stored.body == b"hello world"
    assert stored.metadata == {"chute-mode": "644", "chute-mtime-ns": "7"}
    assert stored.tags == {HASH_TAG: xxhash.xxh3_128_hexdigest(b"hello world")}
    totals = uploader.statistics().totals
    assert (totals.files_opened, totals.files_done, totals.bytes_written,
            totals.bytes_uploaded, totals.parts) == (1, 1, 11, 11, 0)
    assert_nothing_left(store, uploader)


async def test_empty_file_is_an_empty_put(autojump_clock, store) -> None:
    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("empty", "/empty")
        await upload.finalize()

    await run(store, body)
    assert store.body("empty") == b""
    assert store.objects["empty"].tags == {HASH_TAG: xxhash.xxh3_128_hexdigest(b"")}


async def test_multi_slice_file_completes_in_order_with_multipart_etag(autojump_clock,
                                                                       store) -> None:
    data = data_of(3 * SLICE + 7)
    seen: list[int] = []

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("big", "/big", {"chute-mode": "600"})
        await write_all(upload, data, chunk=3 * MiB)
        assert uploader.statistics().files[0].bytes_received == len(data)
        await upload.finalize()
        seen.append(upload.statistics().parts_acknowledged)
        assert upload.etag == multipart_etag(
            [md5_hex(data[i : i + SLICE]) for i in range(0, len(data), SLICE)])
        assert upload.xxh3_128 == xxhash.xxh3_128_hexdigest(data)

    uploader = await run(store, body, upload_concurrency=1)
    assert seen == [4]
    parts = [int(r.query["partNumber"]) for r in store.requests if r.operation == "UploadPart"]
    # the first slice is retained for header patches and sent last, as part 1
    assert parts == [2, 3, 4, 1]
    assert store.body("big") == data
    assert store.objects["big"].etag.endswith("-4")
    assert store.objects["big"].metadata == {"chute-mode": "600"}
    assert store.objects["big"].tags == {HASH_TAG: xxhash.xxh3_128_hexdigest(data)}
    assert uploader.statistics().totals.parts == 4
    assert_nothing_left(store, uploader)


async def test_header_patch_into_the_retained_first_slice(autojump_clock, store) -> None:
    """Patched before the first slice was hashed, and after (the object is read back)."""
    data = bytearray(data_of(3 * SLICE + 11, seed=2))

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("patched", "/patched")
        await write_all(upload, bytes(data[: SLICE + 3]))
        await upload.write(0, b"RIFF")  # first slice full, nothing sealed yet
        await write_all(upload, bytes(data), start=SLICE + 3)
        await upload.write(4, b"\x01\x02")  # slice 2 sealed: the head was hashed
        await upload.finalize()

    data[0:4] = b"RIFF"
    data[4:6] = b"\x01\x02"
    await run(store, body)
    assert store.body("patched") == bytes(data)
    assert store.objects["patched"].tags == {HASH_TAG: xxhash.xxh3_128_hexdigest(bytes(data))}
    assert "GetObject" in store.operations()  # hashed by reading the object back


async def test_backward_write_into_sent_data_is_einval_and_aborts(autojump_clock,
                                                                  store) -> None:
    data = data_of(3 * SLICE + 1)

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("back", "/back")
        await write_all(upload, data)  # slice 2 is sealed once slice 3 is full
        await upload.wait_acknowledged()  # ... and sent: the multipart upload exists
        assert store.uploads
        with pytest.raises(BackwardWrite) as excinfo:
            await upload.write(SLICE + 10, b"x")
        assert errno_for(excinfo.value) == errno.EINVAL
        assert upload.state is UploadState.FAILED
        with pytest.raises(UploadFailed):
            await upload.write(len(data), b"more")
        with pytest.raises(UploadFailed):
            await upload.finalize()
        assert uploader.uploads == set()

    uploader = await run(store, body)
    assert "back" not in store.objects
    assert "AbortMultipartUpload" in store.operations()
    assert uploader.statistics().totals.failures == 1
    assert_nothing_left(store, uploader)


async def test_a_503_on_a_part_is_retried_from_the_ring(autojump_clock, store) -> None:
    data = data_of(2 * SLICE + 100, seed=3)
    store.fail_next("UploadPart", status=503, times=2)

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("retried", "/retried")
        await write_all(upload, data)
        await upload.finalize()
        stats = upload.statistics()
        assert stats.retries == 2
        assert stats.retries_by_reason == {RetryReason.THROTTLED: 2}

    uploader = await run(store, body)
    assert store.body("retried") == data
    totals = uploader.statistics().totals
    assert totals.retries == {"UploadPart": 2}
    assert totals.retries_by_reason == {RetryReason.THROTTLED: 2}
    assert_nothing_left(store, uploader)


async def test_lost_complete_answer_is_accepted_when_the_object_is_ours(autojump_clock,
                                                                        store) -> None:
    data = data_of(SLICE + 5, seed=4)
    store.fail_next("CompleteMultipartUpload", after_apply=True)

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("lost", "/lost")
        await write_all(upload, data)
        await upload.finalize()
        assert upload.state is UploadState.DONE
        assert upload.etag == store.objects["lost"].etag

    uploader = await run(store, body)
    assert store.body("lost") == data
    # the retry met NoSuchUpload (the first attempt had completed it); the object was checked
    assert store.operations().count("CompleteMultipartUpload") == 2
    assert "HeadObject" in store.operations()
    assert_nothing_left(store, uploader)


async def test_nosuchupload_on_complete_is_refused_when_the_object_is_not_ours(
        autojump_clock, store) -> None:
    data = data_of(SLICE + 5, seed=5)
    store.put("other", b"somebody else's object")
    store.fail_next("CompleteMultipartUpload", code="NoSuchUpload", times=1)

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("other", "/other")
        await write_all(upload, data)
        with pytest.raises(UploadFailed):
            await upload.finalize()
        assert upload.state is UploadState.FAILED

    uploader = await run(store, body)
    assert store.body("other") == b"somebody else's object"
    assert_nothing_left(store, uploader)


async def test_lost_put_answer_with_no_clobber_is_accepted_when_ours(autojump_clock,
                                                                     store) -> None:
    store.fail_next("PutObject", after_apply=True)

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("once", "/once", no_clobber=True)
        await upload.write(0, b"mine")
        await upload.finalize()
        assert upload.state is UploadState.DONE

    await run(store, body)
    assert store.body("once") == b"mine"
    assert store.operations().count("PutObject") == 2


@pytest.mark.parametrize("size", [10, 2 * SLICE + 3], ids=["put", "multipart"])
async def test_no_clobber_on_an_existing_key_is_eexist(autojump_clock, store, size) -> None:
    store.put("taken", b"old")

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("taken", "/taken", no_clobber=True)
        await write_all(upload, data_of(size))
        with pytest.raises(ObjectExists) as excinfo:
            await upload.finalize()
        assert errno_for(excinfo.value) == errno.EEXIST
        assert upload.state is UploadState.FAILED

    uploader = await run(store, body)
    assert store.body("taken") == b"old"
    assert_nothing_left(store, uploader)


async def test_abort_leaves_nothing(autojump_clock, store) -> None:
    async def body(uploader: Uploader) -> None:
        small = uploader.open_file("small", "/small")
        await small.write(0, b"abc")
        big = uploader.open_file("big", "/big")
        await write_all(big, data_of(3 * SLICE + 2))
        await uploader.abort_open_uploads("the test is over")
        assert (small.state, big.state) == (UploadState.ABORTED, UploadState.ABORTED)
        with pytest.raises(UploadFailed):
            await big.finalize()

    uploader = await run(store, body)
    assert store.keys() == []
    assert uploader.statistics().totals.files_abandoned == 2
    assert_nothing_left(store, uploader)


async def test_backpressure_blocks_the_writer_then_progresses(autojump_clock, store) -> None:
    """A ring of two slots and a slow store: the writer waits for a slot, then goes on."""
    data = data_of(4 * SLICE + 9, seed=6)
    store.fail_next("UploadPart", status=503, delay=20.0)  # a part that takes 20 s, then again

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("pressed", "/pressed")
        done = trio.Event()

        async def writer() -> None:
            await write_all(upload, data)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await trio.sleep(10.0)  # the first part is still on its way
            assert uploader.ring.statistics().writers_waiting == 1
            assert not done.is_set()
            assert upload.size < len(data)
            await done.wait()
        await upload.finalize()

    uploader = await run(store, body, slots=2, upload_concurrency=1)
    assert store.body("pressed") == data
    assert uploader.ring.statistics().blocked_seconds >= 20.0
    assert_nothing_left(store, uploader)
