"""Issue 17, case 1: a file over an existing object (its *base*), written anywhere, resized.

Each test runs an Uploader over the in-memory S3 (tests/support/memory_s3.py) on trio's
virtual clock, with 5 MiB slices, and checks the object, the requests that made it (untouched
slices copied or sent as zeros, touched ones fetched and sent, every read of the base pinned to
its ETag) and the file's cost record (bytes sent, copied, fetched).
"""

from __future__ import annotations

import errno
import random

import pytest
import xxhash

from chute.uploader.checksums import HASH_TAG
from chute.uploader.errors import BackwardWrite, TruncateRefused, UploadFailed, errno_for
from chute.uploader.file_upload import FileUpload, UploadState
from chute.uploader.leftovers import MARKER_DIR
from chute.uploader.overlay import Base, UntouchedPlan, plan_untouched, without
from chute.uploader.uploader import Uploader
from tests.support.memory_s3 import LoggedRequest, MemoryS3
from tests.support.memory_uploader import SLICE, data_of, run_sliced

MiB = 1 << 20
BLOCK = 14_480  # the block rsync chose for a 200 MiB file (/tmp/issue17-findings.md)


@pytest.fixture
def store() -> MemoryS3:
    return MemoryS3()


run = run_sliced


def put_base(store: MemoryS3, key: str, body: bytes) -> Base:
    return Base(key, len(body), store.put(key, body).etag)


def part_numbers(store: MemoryS3, operation: str) -> list[int]:
    return sorted(int(r.query["partNumber"]) for r in store.requests
                  if r.operation == operation)


def assert_nothing_left(store: MemoryS3, uploader: Uploader) -> None:
    assert store.uploads == {}
    assert store.keys(MARKER_DIR) == []
    assert uploader.ring.statistics().free == len(uploader.ring.slots)


def assert_tagged(store: MemoryS3, key: str) -> None:
    assert store.objects[key].tags == {HASH_TAG: xxhash.xxh3_128_hexdigest(store.body(key))}


# -- the plan -------------------------------------------------------------------------------


def test_plan_groups_copies_and_zeroes_what_lies_past_the_base() -> None:
    s = 10
    # base of 45 bytes, file grown to 80: slices 0..3 copy (1 touched), 4 straddles, 5..7 zero
    plan = plan_untouched(80, 45, s, {1})
    assert plan == UntouchedPlan(copies=((1, 0, 9), (3, 20, 39)), zeros=((6, 10), (7, 10),
                                                                         (8, 10)),
                                 straddling=(4,))
    assert plan.copied_bytes == 30 and plan.part_numbers == {1, 3, 5, 6, 7, 8}
    # the file's last slice, short and inside the base, is copied with the run before it
    assert plan_untouched(35, 40, s, set()).copies == ((1, 0, 34),)
    assert plan_untouched(0, 40, s, set()) == UntouchedPlan()


def test_without_cuts_a_write_out_of_the_holes() -> None:
    """overlay.without (bisection, in place) against the obvious definition."""
    def reference(holes: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
        kept = [(a, b) for a, b in holes if b <= start or a >= end]
        kept += [(a, start) for a, b in holes if a < start < b]
        kept += [(end, b) for a, b in holes if a < end < b]
        return sorted(kept)

    rng = random.Random(7)
    for _ in range(3000):
        holes = [(0, rng.randrange(1, 100))]
        for _ in range(rng.randrange(8)):
            start = rng.randrange(110)
            end = start + rng.randrange(1, 20)
            expected = reference(holes, start, end)
            assert without(list(holes), start, end) == expected, (holes, start, end)
            holes = expected


# -- in-place writes --------------------------------------------------------------------------


async def test_rsync_inplace_blocks_send_only_the_slices_they_touch(autojump_clock,
                                                                    store) -> None:
    """Ten rsync blocks, ascending, one straddling a slice boundary, over a 60 MiB object."""
    old = data_of(60 * MiB)
    base = put_base(store, "big", old)
    offsets = [0, 6 * MiB, 2 * SLICE - BLOCK // 2, 17 * MiB, 23 * MiB, 31 * MiB, 38 * MiB,
               44 * MiB, 52 * MiB, 60 * MiB - BLOCK]
    new = bytearray(old)
    for i, at in enumerate(offsets):
        new[at : at + BLOCK] = data_of(BLOCK, seed=100 + i)
    record = []

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("big", "/big", base=base)
        for at in offsets:
            await upload.write(at, bytes(new[at : at + BLOCK]))
        assert store.body("big") == old  # untouched until Complete
        await upload.truncate(len(old))  # rsync's ftruncate to the same size
        await upload.finalize()
        record.append(upload.statistics())

    uploader = await run(store, body)
    assert store.body("big") == bytes(new)
    assert_tagged(store, "big")
    touched = {at // SLICE for at in offsets} | {(at + BLOCK - 1) // SLICE for at in offsets}
    assert part_numbers(store, "UploadPart") == sorted(k + 1 for k in touched)
    copies = [r for r in store.requests if r.operation == "UploadPartCopy"]
    assert copies and all(r.headers["x-amz-copy-source-if-match"] == f'"{base.etag}"'
                          for r in copies)
    gets = [r for r in store.requests if r.operation == "GetObject" and r.key == "big"
            and "if-match" in r.headers]
    assert gets and all(r.headers["if-match"] == f'"{base.etag}"' for r in gets)
    (stats,) = record
    assert stats.bytes_sent == len(touched) * SLICE <= 2 * len(offsets) * SLICE
    assert stats.bytes_copied == len(old) - len(touched) * SLICE
    # the touched slices' old bytes, then the object read back for its hash
    assert stats.bytes_fetched == len(touched) * SLICE - len(offsets) * BLOCK + len(old)
    totals = uploader.statistics().totals
    assert (totals.bytes_uploaded, totals.bytes_copied, totals.bytes_fetched) == (
        stats.bytes_sent, stats.bytes_copied, stats.bytes_fetched)
    assert_nothing_left(store, uploader)


async def test_a_sequential_rewrite_from_zero_reads_nothing_back(autojump_clock,
                                                                 store) -> None:
    """rsync --inplace whole-file: every slice is covered by writes, none is fetched."""
    base = put_base(store, "f", data_of(12 * MiB))
    new = data_of(12 * MiB, seed=2)

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("f", "/f", base=base)
        for at in range(0, len(new), 256 * 1024):
            await upload.write(at, new[at : at + 256 * 1024])
        await upload.truncate(len(new))
        await upload.finalize()
        assert (upload.bytes_copied, upload.bytes_fetched) == (0, 0)

    uploader = await run(store, body)
    assert store.body("f") == new
    assert_tagged(store, "f")
    assert "GetObject" not in store.operations() and "UploadPartCopy" not in store.operations()
    assert_nothing_left(store, uploader)


async def test_a_write_far_past_a_base_straddles_zeroes_and_writes(autojump_clock,
                                                                   store) -> None:
    old = data_of(7 * MiB)
    base = put_base(store, "f", old)

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("f", "/f", base=base)
        await upload.write(21 * MiB, b"tail")
        await upload.finalize()

    uploader = await run(store, body)
    assert store.body("f") == old + bytes(14 * MiB) + b"tail"
    assert_tagged(store, "f")
    assert part_numbers(store, "UploadPartCopy") == [1]
    assert part_numbers(store, "UploadPart") == [2, 3, 4, 5]  # straddling, zeros, written
    assert_nothing_left(store, uploader)


async def test_a_write_into_a_sent_slice_is_einval_without_temp_key(autojump_clock,
                                                                    store) -> None:
    base = put_base(store, "f", data_of(30 * MiB))

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("f", "/f", base=base)
        for k in (1, 2, 3):  # materializing slice 3 seals slice 1
            await upload.write(k * SLICE + 5, b"x")
        await upload.wait_acknowledged()  # its upload was created at the key
        with pytest.raises(BackwardWrite) as caught:
            await upload.write(SLICE + 9, b"late")
        assert errno_for(caught.value) == errno.EINVAL
        assert upload.state is UploadState.FAILED

    uploader = await run(store, body)
    assert store.body("f") == data_of(30 * MiB)
    assert_nothing_left(store, uploader)


async def test_with_patch_back_always_a_late_patch_lands(autojump_clock, store) -> None:
    """Case 2's wiring: the upload is made at a temporary key and recomposed at close."""
    old = data_of(30 * MiB)
    base = put_base(store, "f", old)
    new = bytearray(old)

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("f", "/f", base=base)
        for at in (SLICE + 5, 2 * SLICE + 5, 3 * SLICE + 5, SLICE + 9, 29 * MiB):
            await upload.write(at, b"xy")
            new[at : at + 2] = b"xy"
        await upload.finalize()
        assert upload.bytes_copied > 0 and upload.bytes_fetched > 0

    uploader = await run(store, body, patch_back="always")
    assert store.body("f") == bytes(new)
    assert_tagged(store, "f")
    assert store.keys() == ["f"]
    assert_nothing_left(store, uploader)


# -- resizing ---------------------------------------------------------------------------------


async def test_ftruncate_growth_is_zero_parts_not_streamed(autojump_clock, store) -> None:
    """qemu-img's create phase: a new file grown to its full size, then closed."""
    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("img", "/img")
        await upload.write(0, b"0123456789")
        await upload.truncate(23 * MiB)
        assert upload.size == 23 * MiB
        assert uploader.ring.statistics().free == len(uploader.ring.slots) - 1
        await upload.finalize()

    uploader = await run(store, body)
    assert store.body("img") == b"0123456789" + bytes(23 * MiB - 10)
    assert_tagged(store, "img")  # hashed in file order: zeros included, no read-back
    assert "GetObject" not in store.operations()
    assert part_numbers(store, "UploadPart") == [1, 2, 3, 4, 5]
    assert_nothing_left(store, uploader)


async def test_writes_after_growth_land_in_the_middle(autojump_clock, store) -> None:
    """qemu-img's write phase into a grown file: sparse, ascending, never a backward write."""
    expected = bytearray(40 * MiB)

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("raw", "/raw")
        await upload.truncate(len(expected))
        for at, size in ((0, MiB), (10 * MiB, 2 * MiB), (33 * MiB, MiB),
                         (40 * MiB - 65536, 65536)):
            chunk = data_of(size, seed=at)
            expected[at : at + size] = chunk
            await upload.write(at, chunk)
        await upload.finalize()

    uploader = await run(store, body)
    assert store.body("raw") == bytes(expected)
    assert_tagged(store, "raw")
    assert "GetObject" not in store.operations()
    assert_nothing_left(store, uploader)


async def test_shrink_into_a_sent_slice_is_refused_and_the_upload_goes_on(autojump_clock,
                                                                         store) -> None:
    data = data_of(4 * SLICE + 7)

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("f", "/f")
        await upload.write(0, data)  # slices 1 and 2 sent, 3 retained, 4 filling
        await upload.wait_acknowledged()
        with pytest.raises(TruncateRefused) as caught:
            await upload.truncate(SLICE + 50)  # into sent slice 1
        assert errno_for(caught.value) == errno.EOPNOTSUPP
        assert upload.state is UploadState.OPEN
        await upload.truncate(3 * SLICE + 100)  # cuts the retained slice 3, drops 4
        await upload.truncate(3 * SLICE)  # exactly at slice 3's start: drops it
        await upload.truncate(3 * SLICE + 10)  # grows again: zeros, not the old bytes
        await upload.finalize()

    uploader = await run(store, body)
    assert store.body("f") == data[: 3 * SLICE] + bytes(10)
    assert_tagged(store, "f")
    assert_nothing_left(store, uploader)


async def test_a_base_cut_without_writes_is_copied_or_put(autojump_clock, store) -> None:
    old = data_of(12 * MiB)
    base = put_base(store, "a", old)
    base_b = put_base(store, "b", old)

    async def body(uploader: Uploader) -> None:
        a = uploader.open_file("a", "/a", base=base)
        await a.truncate(7 * MiB)  # two copy parts, no byte through the ring
        await a.finalize()
        b = uploader.open_file("b", "/b", base=base_b)
        await b.truncate(3 * MiB)  # one slice: fetched and put
        await b.finalize()
        assert (a.bytes_sent, a.bytes_copied) == (0, 7 * MiB)
        assert (b.bytes_sent, b.bytes_copied) == (3 * MiB, 0)

    uploader = await run(store, body)
    assert store.body("a") == old[: 7 * MiB] and store.body("b") == old[: 3 * MiB]
    assert_tagged(store, "a") and assert_tagged(store, "b")  # type: ignore[func-returns-value]
    assert_nothing_left(store, uploader)


async def test_an_unchanged_reopen_and_a_same_size_truncate_send_nothing(autojump_clock,
                                                                         store) -> None:
    """rsync's second run: open without O_TRUNC, ftruncate to the same size, close."""
    base = put_base(store, "f", data_of(12 * MiB))

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("f", "/f", base=base)
        await upload.truncate(12 * MiB)
        await upload.finalize()
        assert upload.unchanged and upload.etag == base.etag

    await run(store, body)
    assert store.operations() == []


@pytest.mark.parametrize("cut", [0, SLICE])
async def test_a_file_cut_after_parts_were_sent(autojump_clock, store, cut) -> None:
    data = data_of(3 * SLICE + 1)

    async def body(uploader: Uploader) -> None:
        upload: FileUpload = uploader.open_file("f", "/f")
        await upload.write(0, data)  # slice 1 sent (the upload created), 0 and 2 retained
        await upload.wait_acknowledged()
        await upload.truncate(cut)  # drops slice 1's part: slice 0 at most is left
        await upload.write(cut, b"!")  # and grows again by a written byte
        await upload.finalize()

    uploader = await run(store, body)
    assert store.body("f") == data[:cut] + b"!"
    assert_tagged(store, "f")
    assert_nothing_left(store, uploader)


def test_chute_status_shows_the_cost_of_an_in_place_change(capsys) -> None:
    from chute.fs.watch import print_once

    snapshot = {
        "mountpoint": "/mnt/x", "pid": 1, "remote": "s3://b/p/", "endpoint_url": None,
        "metrics_url": None,
        "ring": {"slots": 4, "slice_size": SLICE, "free": 3, "filling": 1, "sealed": 0,
                 "uploading": 0, "retained": 0, "writers_waiting": 0, "blocked_seconds": 0.0},
        "files": [{"path": "big", "key": "p/big", "state": "finalizing",
                   "bytes_received": 60 * MiB, "parts_acknowledged": 10,
                   "bytes_acknowledged": 50 * MiB, "parts_in_flight": 0,
                   "throughput_bps": 0.0, "retries": 0, "seconds": 1.0, "error": None,
                   "retries_by_reason": {}, "bytes_sent": 10 * MiB,
                   "bytes_copied": 50 * MiB, "bytes_fetched": 70 * MiB}],
        "totals": {"bytes_written": 10, "files_done": 0, "bytes_uploaded": 0, "parts": 0,
                   "failures": 0, "retries": {}, "files_opened": 1, "files_abandoned": 0,
                   "files_writer_died": 0, "retries_by_reason": {}, "bytes_copied": 50 * MiB,
                   "bytes_fetched": 70 * MiB},
    }
    print_once(snapshot, as_json=False)
    assert "sent 10 MiB, copied server-side 50 MiB, re-read 70 MiB" in capsys.readouterr().out


# -- retention and ring pressure --------------------------------------------------------------


async def test_a_write_across_a_slice_boundary_and_back_into_the_retained_one(autojump_clock,
                                                                            store) -> None:
    """A write spanning two slices lands in both; one back into the slice before (retained,
    not yet sent) lands too: header patches, as zip makes them."""
    old = data_of(20 * MiB)
    base = put_base(store, "f", old)
    new = bytearray(old)

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("f", "/f", base=base)
        for at, size in ((2 * SLICE - 100, 300), (2 * SLICE + 500, 10), (2 * SLICE - 50, 8)):
            chunk = data_of(size, seed=at)
            new[at : at + size] = chunk
            await upload.write(at, chunk)
        await upload.finalize()

    # (--patch-back never: under auto, the write back into slice 1 before the upload's
    # Create would make it at a temporary key, composed by copies at close)
    uploader = await run(store, body, patch_back="never")
    assert store.body("f") == bytes(new)
    assert part_numbers(store, "UploadPart") == [2, 3]
    assert part_numbers(store, "UploadPartCopy") == [1, 4]
    assert_tagged(store, "f")
    assert_nothing_left(store, uploader)


async def test_ring_pressure_seals_retained_in_place_slices(autojump_clock, store) -> None:
    """Two files changed in place on a ring of four slots: retention yields to pressure
    (ring.py), the retained slots are complete (their holes filled) and sealed as they are."""
    olds = {name: data_of(30 * MiB, seed=i) for i, name in enumerate(("a", "b"))}
    bases = {name: put_base(store, name, body) for name, body in olds.items()}
    news = {name: bytearray(body) for name, body in olds.items()}

    async def body(uploader: Uploader) -> None:
        uploads = {n: uploader.open_file(n, f"/{n}", base=b) for n, b in bases.items()}
        for k in range(6):
            for name, upload in uploads.items():
                at = k * SLICE + 1000 * k
                news[name][at : at + 3] = b"abc"
                await upload.write(at, b"abc")
        for upload in uploads.values():
            await upload.finalize()

    uploader = await run(store, body, slots=4, upload_concurrency=2)
    for name in olds:
        assert store.body(name) == bytes(news[name])
        assert_tagged(store, name)
    assert_nothing_left(store, uploader)


async def test_the_short_last_slice_is_kept_while_the_writer_goes_back(autojump_clock,
                                                                      store) -> None:
    """The file's short last slice, retained while the writer materializes earlier slices,
    is not sealed (the slice demoted instead is whole), so the file can still grow."""
    expected = bytearray(4 * SLICE + 4)

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("f", "/f")
        await upload.truncate(3 * SLICE + 10)
        for at, data in ((3 * SLICE + 5, b"end"), (SLICE, b"one"), (2 * SLICE, b"two"),
                         (4 * SLICE, b"past")):
            await upload.write(at, data)
            expected[at : at + len(data)] = data
        await upload.finalize()

    uploader = await run(store, body, patch_back="never")
    assert store.body("f") == bytes(expected)
    assert_tagged(store, "f")
    assert_nothing_left(store, uploader)


async def test_growing_past_a_short_last_slice_sealed_by_pressure_is_refused(autojump_clock
                                                                             ) -> None:
    """Ring pressure sealed the file's short last slice: the file cannot grow past that
    part any more (a part but the last must be whole): BackwardWrite, EINVAL."""
    from chute.uploader.ring import Ring, SlotState
    from chute.uploader.slices import FileSlices

    ring = Ring(4, SLICE)
    slices = FileSlices(ring, "/f", lambda slot: None)
    await slices.truncate(3 * SLICE + 10)
    await slices.write(3 * SLICE + 5, b"end")
    await slices.write(SLICE, b"one")  # slice 3 (short, the last) is retained
    (short,) = [s for s in ring.held_by(slices) if s.state is SlotState.RETAINED]
    slices.release_retained(short)
    with pytest.raises(BackwardWrite):
        await slices.write(4 * SLICE, b"past")


async def test_in_temp_key_mode_a_shrink_into_a_sent_slice_lands(autojump_clock,
                                                                 store) -> None:
    """--patch-back always: a cut inside a sent slice, then growth and a write past the cut:
    the bytes between read as zeros, not as the old ones."""
    data = data_of(4 * SLICE + 7)

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("f", "/f")
        await upload.write(0, data)  # slices 1 and 2 sent
        await upload.wait_acknowledged()
        await upload.truncate(SLICE + 50)  # into sent slice 1
        await upload.write(SLICE + 100, b"after")
        await upload.finalize()

    uploader = await run(store, body, patch_back="always")
    assert store.body("f") == data[: SLICE + 50] + bytes(50) + b"after"
    assert_tagged(store, "f")
    assert store.keys() == ["f"]
    assert_nothing_left(store, uploader)


# -- failures leave the old object ------------------------------------------------------------


@pytest.mark.parametrize("phase", ["GetObject", "UploadPartCopy", "UploadPart",
                                   "CompleteMultipartUpload"])
async def test_a_failure_in_any_phase_leaves_the_old_object(autojump_clock, store,
                                                            phase) -> None:
    """A grown, patched object: the old bytes' GET, a copy, a zero part or the Complete
    refused for good: the writer gets an error, the old object is as it was, nothing left."""
    old = data_of(12 * MiB)
    base = put_base(store, "f", old)

    def zero_part(request: LoggedRequest) -> bool:
        return request.operation == "UploadPart" and request.query["partNumber"] == "5"

    store.fail_next(zero_part if phase == "UploadPart" else phase, code="AccessDenied")

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("f", "/f", base=base)
        try:
            await upload.write(6 * MiB, b"patch")  # slice 1: fetched when it is sealed
            await upload.truncate(30 * MiB)  # slices 3..5: zero parts
            await upload.finalize()
        except (UploadFailed, BackwardWrite) as exc:  # (BackwardWrite: not expected)
            assert not isinstance(exc, BackwardWrite)
        else:
            raise AssertionError("the upload did not fail")
        assert upload.state is UploadState.FAILED

    uploader = await run(store, body)
    assert store.body("f") == old and store.objects["f"].etag == base.etag
    assert phase in store.operations()
    assert_nothing_left(store, uploader)


async def test_a_wide_sparse_gap_is_not_hashed_on_the_event_loop(autojump_clock, store,
                                                                  monkeypatch) -> None:
    """Zeros between written slices are hashed inline only up to ZERO_HASH_INLINE; past
    that the object is read back at close for its hash (and the tag is still right)."""
    from chute.uploader import slices

    monkeypatch.setattr(slices, "ZERO_HASH_INLINE", 2 * SLICE)
    expected = bytearray(9 * SLICE)

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("f", "/f")
        for at in (0, 4 * SLICE + 1, 6 * SLICE + 2, 8 * SLICE + 3):  # gaps of 3, 1, 1 slices
            expected[at : at + 4] = b"data"
            await upload.write(at, b"data")
        await upload.finalize()

    uploader = await run(store, body)
    assert store.body("f") == bytes(expected).rstrip(b"\0")
    assert_tagged(store, "f")
    assert "GetObject" in store.operations()  # read back: the first gap was too wide
    assert_nothing_left(store, uploader)


async def test_a_small_base_grown_then_cut_back_is_one_put(autojump_clock, store) -> None:
    """Parts were sent, then the file was cut to less than a slice of its old bytes: one
    PutObject of them (no copy part in an upload that announced a checksum), the multipart
    upload aborted."""
    old = data_of(MiB)
    base = put_base(store, "f", old)

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("f", "/f", base=base)
        for k in (2, 3, 4):  # slice 2 sealed and sent
            await upload.write(k * SLICE, b"far")
        await upload.wait_acknowledged()
        await upload.truncate(MiB // 2)
        await upload.finalize()

    uploader = await run(store, body)
    assert store.body("f") == old[: MiB // 2]
    assert_tagged(store, "f")
    assert "AbortMultipartUpload" in store.operations()
    assert "UploadPartCopy" not in store.operations()
    assert_nothing_left(store, uploader)


# -- through the FUSE handlers (fs/handles.py) ------------------------------------------------


async def test_the_handlers_serve_rsync_and_refuse_a_cut_into_sent_bytes(m) -> None:
    """rsync --inplace's receiver (open O_WRONLY|O_CREAT without O_TRUNC, whole blocks at
    ascending offsets, ftruncate to the same size) and a setattr size that would cut into
    bytes already sent (EOPNOTSUPP: the file goes on)."""
    import os

    from chute.fs.errnos import errors_as_errno
    from chute.fs.namespace import ROOT_INODE
    from tests.support.memory_mount import CTX, WRITE, errno_of

    old = data_of(12 * MiB)
    m.store.put("big", old)
    inode = (await m.ops.lookup(ROOT_INODE, b"big", CTX)).st_ino
    fh = (await m.ops.open(inode, os.O_WRONLY | os.O_CREAT, CTX)).fh
    new = bytearray(old)
    for at in (MiB, 7 * MiB):
        new[at : at + BLOCK] = data_of(BLOCK, seed=at)
        await m.ops.write(fh, at, bytes(new[at : at + BLOCK]))
    handles = m.ops.handles
    await handles.resize(m.ops.ns.node(inode), len(old))
    await m.ops.flush(fh)
    await m.ops.release(fh)
    assert m.store.body("big") == bytes(new)

    info, attrs = await m.ops.create(ROOT_INODE, b"f", 0o644, WRITE | os.O_CREAT, CTX)
    data = data_of(4 * SLICE + 7)
    await m.ops.write(info.fh, 0, data)  # slices 1 and 2 sent
    await m.ops.fsync(info.fh, False)

    async def cut() -> None:
        async with errors_as_errno("setattr"):
            await handles.resize(m.ops.ns.node(attrs.st_ino), SLICE + 50)

    assert await errno_of(cut()) == errno.EOPNOTSUPP
    await handles.resize(m.ops.ns.node(attrs.st_ino), 3 * SLICE)  # a cut at a retained slice
    await m.ops.flush(info.fh)
    await m.ops.release(info.fh)
    assert m.store.body("f") == data[: 3 * SLICE]


# -- a model check ----------------------------------------------------------------------------


@pytest.mark.parametrize("patch_back", ["always", "never"])
@pytest.mark.parametrize("seed", range(8))  # (120 seeds x 2 passed once: 2.5 min)
async def test_random_writes_and_resizes_match_a_plain_file(autojump_clock, store, seed,
                                                            patch_back) -> None:
    """Random writes (anywhere, up to two slices long) and resizes over a random base: the
    object equals the same operations applied to a bytearray, and its tag is its hash. With
    --patch-back never a write into a sent slice or a cut into one may be refused: then the
    old object is as it was (or there is none) and nothing is left."""
    rng = random.Random(seed)
    old = data_of(rng.choice([0, 3 * MiB, 12 * MiB + 5, 27 * MiB]), seed=seed)
    base = put_base(store, "f", old) if old else None
    model = bytearray(old)
    refused: list[BaseException] = []

    async def body(uploader: Uploader) -> None:
        upload = uploader.open_file("f", "/f", base=base)
        for _ in range(25):
            if rng.random() < 0.2:
                size = rng.randrange(0, 40 * MiB)
                try:
                    await upload.truncate(size)
                except TruncateRefused:
                    assert patch_back == "never"
                    continue
                model[size:] = b""
                model.extend(bytes(size - len(model)))
                continue
            at = rng.randrange(0, 40 * MiB)
            chunk = rng.randbytes(rng.choice([1, 100, 4096, MiB, 2 * SLICE]))
            try:
                await upload.write(at, chunk)
            except BackwardWrite as exc:
                assert patch_back == "never"
                refused.append(exc)
                return
            model.extend(bytes(max(0, at - len(model))))
            model[at : at + len(chunk)] = chunk
            assert upload.size == len(model)
        await upload.finalize()

    uploader = await run(store, body, slots=rng.choice([4, 6]), patch_back=patch_back,
                         patch_budget=64 * MiB)
    if refused:
        assert store.keys() == (["f"] if old else []) and (not old or store.body("f") == old)
    else:
        assert store.body("f") == bytes(model)
        assert_tagged(store, "f")
        assert store.keys() == ["f"]
    assert_nothing_left(store, uploader)
