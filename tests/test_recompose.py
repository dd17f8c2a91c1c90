"""Late patches and recomposition (uploader/late_patches.py, uploader/recompose.py) on the
in-memory S3: an upload made at a temporary key T becomes the object at K, patched.

The temp upload is driven directly through a MultipartSession (as the file upload does), so
these tests pin the contract the file upload relies on: the object at K is T's bytes with the
patches applied; the old object at K stays untouched until the final Complete; a failure in
any phase (copy, ranged GET, T's Complete, K's Complete) leaves the old object, no temporary
object, no pending upload and no marker; a dead owner's T is deleted by the next mount's
janitor, a live one's kept.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import subprocess
from urllib.parse import quote

import pytest
import trio
import xxhash

from chute.fs import cli_args, mount_helper
from chute.uploader import leftovers
from chute.uploader.checksums import HASH_TAG
from chute.uploader.config import UploaderConfig
from chute.uploader.errors import (
    BackwardWrite,
    ConfigError,
    PatchBudgetExhausted,
    StoreError,
    TruncateRefused,
    errno_for,
)
from chute.uploader.janitor import AbortJanitor
from chute.uploader.late_patches import LatePatches, PatchBudget, wants_temp_key
from chute.uploader.leftovers import MARKER_DIR, TEMP_DIR
from chute.uploader.multipart import MultipartSession
from chute.uploader.object_options import ObjectOptions
from chute.uploader.recompose import Recomposer
from chute.uploader.retry import RetryPolicy
from chute.uploader.ring import Ring
from tests.support.memory_s3 import MemoryS3, StoredObject, memory_client
from tests.support.memory_uploader import data_of

MiB = 1 << 20
S = 5 * MiB
KEY = "f.bin"
OLD = b"old object " * 1000


@pytest.fixture
def store() -> MemoryS3:
    store = MemoryS3()
    store.put(KEY, OLD, {"chute-mode": "600"})
    return store


@pytest.fixture
async def client(store: MemoryS3):
    client = memory_client(store, policy=RetryPolicy(budget=5))
    yield client
    await client.aclose()


class Mount:
    """What the Uploader holds for recomposition: ring, janitor, budget, recomposer."""

    def __init__(self, client, *, budget: int = 8 * MiB, slots: int = 3) -> None:
        self.client = client
        self.ring = Ring(slots, S)
        self.janitor = AbortJanitor(client)
        self.budget = PatchBudget(budget)
        self.recomposer = Recomposer(client, self.ring, slice_size=S, defer=self.janitor.defer)

    def patches(self, patch_back: str = "always", rdwr: bool = False) -> LatePatches:
        return LatePatches("/" + KEY, self.budget, S, patch_back=patch_back, opened_rdwr=rdwr)

    async def temp_upload(self, data: bytes, patches: LatePatches) -> MultipartSession:
        """A file upload at T with ``data`` sent as slices, every part acknowledged."""
        session = MultipartSession(self.client, KEY, checksum="md5", name="/" + KEY,
                                   defer_abort=self.janitor.defer)
        self.recomposer.prepare(session, patches)
        assert session.key == patches.temp_key
        await session.create({"chute-mode": "644"})
        for number, first in enumerate(range(0, len(data), S), 1):
            await session.upload_part(number, data[first : first + S])
        return session


def patched(data: bytes, *changes: tuple[int, bytes]) -> bytes:
    out = bytearray(data)
    for offset, change in changes:
        out[offset : offset + len(change)] = change
    return bytes(out)


def assert_clean(store: MemoryS3, mount: Mount) -> None:
    assert store.keys(TEMP_DIR) == [], "a temporary object was left"
    assert store.keys(MARKER_DIR) == [], "an upload marker was left"
    assert store.uploads == {}, "a multipart upload was left pending"
    assert mount.ring.statistics().free == len(mount.ring.slots)
    assert mount.budget.used == 0


# -- the decision ---------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "rdwr", "backward", "temp"), [
    ("auto", False, False, False), ("auto", True, False, True), ("auto", False, True, True),
    ("always", False, False, True), ("never", True, True, False),
])
def test_wants_temp_key(mode, rdwr, backward, temp) -> None:
    assert wants_temp_key(mode, opened_rdwr=rdwr, backward_write=backward) is temp


async def test_prepare_points_the_first_create_at_a_hidden_temp_key(client) -> None:
    mount = Mount(client)
    patches = mount.patches("auto")
    patches.note_backward_write()
    session = MultipartSession(client, KEY)
    mount.recomposer.prepare(session, patches)
    assert patches.enabled and session.key.startswith(f"{TEMP_DIR}/")
    key = session.key
    mount.recomposer.prepare(session, patches)  # idempotent
    assert session.key == key
    plain = MultipartSession(client, KEY)
    later = mount.patches("auto")
    mount.recomposer.prepare(plain, later)
    later.note_backward_write()  # too late: decided at the Create
    assert plain.key == KEY and not later.enabled
    with pytest.raises(BackwardWrite):
        later.add(S, b"x")


async def test_a_late_patch_before_the_create_decides_temp_mode_under_auto(client) -> None:
    patches = Mount(client).patches("auto")
    patches.add(S + 3, b"abc")  # a slice sealed, its Create not sent yet
    assert patches.decided and patches.enabled and patches.pending


def test_late_patch_without_temp_key_is_einval_naming_the_option(caplog) -> None:
    patches = LatePatches("/f", PatchBudget(), S, patch_back="never")
    with caplog.at_level(logging.ERROR), pytest.raises(BackwardWrite) as caught:
        patches.add(7 * S, b"12345678")
    assert errno_for(caught.value) == errno.EINVAL
    assert "--patch-back always" in caplog.text and "8 bytes" in caplog.text
    with pytest.raises(TruncateRefused) as refused:
        patches.truncate(S + 1, into_sent=True)
    assert errno_for(refused.value) == errno.EOPNOTSUPP
    patches.truncate(S + 1, into_sent=False)  # into a slice not sent: nothing to refuse


# -- patches in memory ----------------------------------------------------------------


def test_patches_merge_and_charge_the_budget_once() -> None:
    budget = PatchBudget(100)
    patches = LatePatches("/f", budget, S, patch_back="always")
    patches.add(10, b"aaaa")        # [10, 14)
    patches.add(20, b"bbbb")        # [20, 24)
    assert budget.used == 8
    patches.add(14, b"cc")          # adjoins the first: [10, 16)
    patches.add(12, b"ZZZZZZZZZ")   # overlaps both: [10, 24)
    assert budget.used == patches.bytes_held == 14
    view = memoryview(bytearray(b"." * 30))
    patches.apply(0, view)
    assert bytes(view) == b"..........aaZZZZZZZZZbbb......"
    assert patches.touches(23, 24) and not patches.touches(24, 40)
    patches.add(0, b"x")
    other = LatePatches("/g", budget, S, patch_back="always")
    other.add(50, b"y" * 80)
    with pytest.raises(PatchBudgetExhausted) as caught:
        other.add(200, b"z" * 6)
    assert errno_for(caught.value) == errno.ENOBUFS
    assert budget.used == 95 and budget.exhausted == 1
    patches.release()
    patches.release()
    other.release()
    assert budget.used == 0 and not patches.pending


def test_exhausted_budget_names_the_option(caplog) -> None:
    patches = LatePatches("/zip", PatchBudget(4), S, patch_back="always")
    with caplog.at_level(logging.ERROR), pytest.raises(PatchBudgetExhausted):
        patches.add(S, b"12345")
    assert "--patch-budget" in caplog.text and "/zip" in caplog.text


def test_many_small_sequential_patches_grow_one_interval() -> None:
    patches = LatePatches("/q", PatchBudget(4 * MiB), S, patch_back="always")
    for offset in range(0, 2 * MiB, 4096):
        patches.add(S + offset, b"q" * 4096)
    assert patches.bytes_held == 2 * MiB and len(patches._starts) == 1


def test_truncate_drops_patches_past_the_end_and_zeroes_the_sent_tail() -> None:
    budget = PatchBudget()
    patches = LatePatches("/t", budget, S, patch_back="always")
    patches.add(S + 10, b"abcdef")
    patches.add(3 * S, b"gone")
    patches.truncate(S + 13, into_sent=True)
    assert budget.used == 3
    patches.add(S + 20, b"new")  # the file grows again: written bytes over the zeros
    view = memoryview(bytearray(b"T" * 40))
    patches.apply(S, view)
    assert bytes(view) == b"T" * 10 + b"abc" + b"\0" * 7 + b"new" + b"\0" * 17
    tail = memoryview(bytearray(b"T" * 4))
    patches.apply(2 * S - 4, tail)
    assert bytes(tail) == b"\0" * 4  # up to the end of that slice
    after = memoryview(bytearray(b"T" * 4))
    patches.apply(2 * S, after)
    assert bytes(after) == b"TTTT"  # the next slice is the file upload's again


# -- recomposition --------------------------------------------------------------------


async def test_recompose_copies_untouched_slices_and_resends_patched_ones(
        autojump_clock, store, client) -> None:
    mount = Mount(client)
    data = data_of(3 * S + 1234)
    patches = mount.patches()
    temp = await mount.temp_upload(data, patches)
    changes = ((S + 100, b"PATCH-1"), (3 * S + 10, b"PATCH-2"))
    for offset, change in changes:
        patches.add(offset, change)
    assert store.body(KEY) == OLD  # nothing visible yet
    result = await mount.recomposer.recompose(temp, patches, key=KEY, size=len(data),
                                              xxh3_128="the stream's, of T")
    want = patched(data, *changes)
    assert store.body(KEY) == want
    assert store.objects[KEY].etag == result.etag
    assert store.objects[KEY].metadata == {"chute-mode": "644"}  # as T was created
    assert store.objects[KEY].tags == {HASH_TAG: xxhash.xxh3_128_hexdigest(want)}
    assert result.xxh3_128 == xxhash.xxh3_128_hexdigest(want)
    assert (result.bytes_copied, result.bytes_sent) == (2 * S, S + 1234)
    assert result.bytes_fetched == S + 1234 + len(data)  # the GETs of T, the read-back of K
    assert result.parts == 4  # copy slice 0, slice 1, copy slice 2, slice 3
    assert_clean(store, mount)


async def test_recompose_without_patches_is_one_copy_and_keeps_the_streaming_hash(
        autojump_clock, store, client) -> None:
    mount = Mount(client)
    data = data_of(4 * S)
    patches = mount.patches()
    temp = await mount.temp_upload(data, patches)
    result = await mount.recomposer.recompose(temp, patches, key=KEY, size=len(data),
                                              xxh3_128="given")
    assert store.body(KEY) == data and store.objects[KEY].tags == {HASH_TAG: "given"}
    assert (result.bytes_copied, result.bytes_fetched, result.bytes_sent) == (len(data), 0, 0)
    assert [r.operation for r in store.requests].count("UploadPartCopy") == 1
    assert_clean(store, mount)


async def test_a_file_of_one_slice_is_one_put(autojump_clock, store, client) -> None:
    mount = Mount(client)
    data = data_of(S + 10)
    patches = mount.patches()
    temp = await mount.temp_upload(data, patches)
    patches.add(S + 2, b"!!")
    patches.truncate(S - 5, into_sent=True)  # shrinks below one slice
    result = await mount.recomposer.recompose(temp, patches, key=KEY, size=S - 5)
    assert store.body(KEY) == data[: S - 5]
    assert store.objects[KEY].tags == {HASH_TAG: xxhash.xxh3_128_hexdigest(data[: S - 5])}
    assert result.parts == 1 and result.bytes_sent == S - 5
    assert "CompleteMultipartUpload" in store.operations()  # T's only
    assert store.operations()[-5:].count("PutObject") == 1
    assert_clean(store, mount)


async def test_a_file_grown_past_t_gets_zeros_and_patches(autojump_clock, store,
                                                          client) -> None:
    mount = Mount(client)
    data = data_of(2 * S)
    patches = mount.patches()
    temp = await mount.temp_upload(data, patches)
    patches.add(2 * S + 50, b"tail")
    size = 2 * S + 100
    await mount.recomposer.recompose(temp, patches, key=KEY, size=size)
    assert store.body(KEY) == data + b"\0" * 50 + b"tail" + b"\0" * 46
    assert_clean(store, mount)


def fails_at_temp(operation: str):
    return lambda r: r.operation == operation and r.key.startswith(f"{TEMP_DIR}/")


def fails_at_key(operation: str):
    return lambda r: r.operation == operation and r.key == KEY


@pytest.mark.parametrize("phase", ["copy", "ranged GET", "temp Complete", "final Complete",
                                   "final Create"])
async def test_a_failure_in_any_phase_leaves_the_old_object_and_nothing_else(
        autojump_clock, store, client, phase) -> None:
    mount = Mount(client)
    data = data_of(3 * S)
    patches = mount.patches()
    temp = await mount.temp_upload(data, patches)
    patches.add(S + 1, b"patch")
    match = {"copy": "UploadPartCopy", "ranged GET": fails_at_temp("GetObject"),
             "temp Complete": fails_at_temp("CompleteMultipartUpload"),
             "final Complete": fails_at_key("CompleteMultipartUpload"),
             "final Create": fails_at_key("CreateMultipartUpload")}[phase]
    fault = store.fail_next(match, code="AccessDenied")
    with pytest.raises(StoreError):
        await mount.recomposer.recompose(temp, patches, key=KEY, size=len(data))
    assert fault.hits == 1
    await temp.abort()  # what the file upload's failure path does next: harmless
    assert store.body(KEY) == OLD and store.objects[KEY].metadata == {"chute-mode": "600"}
    assert_clean(store, mount)


async def test_a_temporary_object_that_cannot_be_deleted_is_the_janitors(
        autojump_clock, store, client) -> None:
    mount = Mount(client)
    data = data_of(2 * S)
    patches = mount.patches()
    temp = await mount.temp_upload(data, patches)
    t_key = temp.key
    store.fail_next(lambda r: r.operation == "DeleteObject" and r.key == t_key,
                    code="InternalError", times=10_000)
    await mount.recomposer.recompose(temp, patches, key=KEY, size=len(data))
    assert store.body(KEY) == data  # the file is fine
    assert store.keys(TEMP_DIR) == [t_key] and mount.janitor.pending == 1
    assert store.keys(MARKER_DIR)  # the marker stays until T is gone
    store.faults.clear()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mount.janitor.run)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert_clean(store, mount)


async def test_recompose_cancelled_leaves_nothing(autojump_clock, store, client) -> None:
    mount = Mount(client)
    data = data_of(3 * S)
    patches = mount.patches()
    temp = await mount.temp_upload(data, patches)
    patches.add(2 * S, b"x")
    store.fail_next("UploadPartCopy", delay=30)  # slow enough to be cancelled
    with trio.move_on_after(5):
        await mount.recomposer.recompose(temp, patches, key=KEY, size=len(data))
    assert store.body(KEY) == OLD
    assert_clean(store, mount)


# -- the next mount's janitor ---------------------------------------------------------


def ended_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


async def test_the_janitor_deletes_a_dead_owners_temp_object_and_keeps_a_live_ones(
        store, client) -> None:
    here = leftovers.this_process()
    dead = dataclasses.replace(here, pid=ended_pid())
    for name, owner in (("dead", dead), ("live", here)):
        key = f"{TEMP_DIR}/{name}"
        store.put(key, b"temporary bytes")
        store.objects[f"{MARKER_DIR}/{name}-upload"] = StoredObject(
            b"", "d41d8cd98f00b204e9800998ecf8427e",
            metadata={"chute-key": quote(key, safe=""), "chute-owner": owner.encode()})
    await leftovers.clean(client)
    assert store.keys(TEMP_DIR) == [f"{TEMP_DIR}/live"]
    assert store.keys(MARKER_DIR) == [f"{MARKER_DIR}/live-upload"]


async def test_a_crash_mid_recompose_is_cleaned_by_the_next_mount(
        autojump_clock, store, client, monkeypatch) -> None:
    mount = Mount(client)
    data = data_of(2 * S)
    patches = mount.patches()
    temp = await mount.temp_upload(data, patches)
    patches.add(10, b"p")
    store.fail_next(fails_at_key("CreateMultipartUpload"), delay=3600)  # the mount hangs
    with trio.move_on_after(10):  # ... and dies here: nothing of its cleanup runs
        monkeypatch.setattr(Recomposer, "_drop_temp", _no_cleanup)
        await mount.recomposer.recompose(temp, patches, key=KEY, size=len(data))
    assert store.keys(TEMP_DIR) == [temp.key] and store.body(KEY) == OLD
    here = leftovers.this_process()
    monkeypatch.setattr(leftovers, "this_process",
                        lambda: dataclasses.replace(here, boot="another-boot"))
    store.faults.clear()
    await leftovers.clean(client)  # judged as a mount of another boot would
    assert store.keys(TEMP_DIR) == [] and store.keys(MARKER_DIR) == []
    assert store.body(KEY) == OLD


async def _no_cleanup(self, temp, *, pending: bool = True) -> None:
    return None


# -- options, names, headers ----------------------------------------------------------


def test_options_from_flags_file_and_fstab(tmp_path) -> None:
    args = cli_args.parse_args(["mount", "/mnt/x", "s3://b/p"])
    assert (args.patch_back, args.patch_budget) == ("auto", 8 * MiB)
    args = cli_args.parse_args(["mount", "/mnt/x", "--patch-back", "always",
                                "--patch-budget", "32MiB"])
    assert (args.patch_back, args.patch_budget) == ("always", 32 * MiB)
    config = tmp_path / "c.toml"
    config.write_text('patch_back = "never"\npatch_budget = "1MiB"\n')
    args = cli_args.parse_args(["mount", "/mnt/x", "--config", str(config)])
    assert (args.patch_back, args.patch_budget) == ("never", MiB)
    argv = mount_helper.chute_arguments("s3://b/p", "/mnt/x",
                                        ["patch_back=always,patch_budget=16MiB"])
    assert argv[-4:] == ["--patch-back", "always", "--patch-budget", "16MiB"]
    with pytest.raises(SystemExit):
        cli_args.parse_args(["mount", "/mnt/x", "--patch-back", "sometimes"])
    with pytest.raises(ConfigError, match="--patch-back"):
        UploaderConfig(patch_back="sometimes").validate()
    with pytest.raises(ConfigError, match="--patch-budget"):
        UploaderConfig(patch_budget=-1).validate()


def test_temp_keys_are_reserved_names_at_the_mount_root() -> None:
    from chute.fs.namespace import ROOT_INODE, Namespace

    root = type("N", (), {"inode": ROOT_INODE})()
    assert Namespace.is_reserved(root, TEMP_DIR)  # type: ignore[arg-type]


def test_temporary_objects_get_sse_c_but_no_storage_class_lock_or_tags() -> None:
    options = ObjectOptions(storage_class="GLACIER", sse_c_key=b"k" * 32,
                            lock_mode="COMPLIANCE", lock_retain_seconds=60, tags=(("a", "b"),))
    create = options.request_headers("CreateMultipartUpload", f"p/{TEMP_DIR}/x", {},
                                     own=True, temporary=True)
    assert "x-amz-server-side-encryption-customer-key" in create
    assert not [h for h in create if "storage-class" in h or "lock" in h or "tagging" in h]
    for operation in ("UploadPart", "CompleteMultipartUpload", "GetObject", "HeadObject"):
        headers = options.request_headers(operation, "k", {}, own=True, temporary=True)
        assert "x-amz-server-side-encryption-customer-key" in headers
    copy = options.request_headers("UploadPartCopy", "k", {}, own=True, temporary=True)
    assert "x-amz-copy-source-server-side-encryption-customer-key" in copy


async def test_the_uploader_owns_one_budget_and_makes_each_files_patches(client) -> None:
    from chute.uploader.uploader import Uploader

    uploader = Uploader(UploaderConfig(slice_size=S, ring_size=4 * S, patch_back="never",
                                       patch_budget=12345), client)
    first = uploader.late_patches("/a", opened_rdwr=True)
    second = uploader.late_patches("/b")
    assert uploader.patch_budget.limit == 12345
    assert (first.patch_back, first.opened_rdwr, second.opened_rdwr) == ("never", True, False)
    assert not first.decide()
    assert uploader.recomposer.ring is uploader.ring
