"""Issue 17 end to end: changing the middle of an object without local disk.

Real tools on a real mount over SeaweedFS, as /tmp/issue17-findings.md traced them on a local
directory: rsync --inplace (delta and whole-file) onto an existing object, Info-ZIP's temp file
(O_RDWR, a local header patched ~36 MiB behind), a Python writer that seeks back 100 MiB,
qemu-img convert to raw (create + grow, then an O_RDWR reopen with sparse pwrites) and to
qcow2 (which reads back what it wrote in the same open: refused cleanly), and an exhausted
``--patch-budget``.

"Bytes sent from this machine" is counted independently of chute's own cost record: every
mount here that needs it talks to the store through the fault proxy (no faults set), and the
test adds up the bodies of the PutObject and UploadPart requests it relays (UploadPartCopy
moves nothing from this machine). The old object is written with boto3 straight to the store.

Slices are 5 MiB and the ring 40 MiB (8 slots), so every file here spans many slices and each
test stays well under a minute.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.support.faultproxy import FaultProxy, Kind, Seen, access_denied
from tests.support.files import random_file, sha256_file
from tests.support.mounts import requires_fuse
from tests.support.observe import status, wait_for
from tests.support.store import BUCKET, object_keys, pending_uploads, sha256_object

pytestmark = [pytest.mark.e2e, requires_fuse]

MiB = 1 << 20
SLICE = 5 * MiB
SMALL = ("--slice-size", "5MiB", "--ring-size", "40MiB")
READS = ("--allow-read", *SMALL)
OLD_MTIME_NS = 1_600_000_000_000_000_000
"""The base object's mtime as a stat of the mount shows it (set by boto3 metadata): older
than any source file here, so rsync's quick check never skips a changed file."""


# -- helpers --------------------------------------------------------------------------------

def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def _run(args: list[str], cwd: Path | None = None, timeout: float = 120
         ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(map(str, args))} exited {result.returncode}:\n"
                                    f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def _put_base(s3, key: str, path: Path) -> None:
    """The object a tool will update, written by boto3 (multipart above 8 MiB) with chute's
    mtime metadata, straight to the store."""
    s3.upload_file(str(path), BUCKET, key,
                   ExtraArgs={"Metadata": {"chute-mtime-ns": str(OLD_MTIME_NS)}})


def _changed_copy(old: Path, new: Path, changes: int, size: int = 4096, seed: int = 7
                  ) -> list[int]:
    """``new`` = ``old`` with ``changes`` scattered random blocks of ``size`` bytes."""
    shutil.copyfile(old, new)
    total = old.stat().st_size
    rng = random.Random(seed)
    offsets = [i * (total // changes) + rng.randrange(0, total // changes - size)
               for i in range(changes)]
    with open(new, "r+b") as f:
        for offset in offsets:
            f.seek(offset)
            f.write(rng.randbytes(size))
    return offsets


def _body_bytes(seen: Iterable[Seen]) -> int:
    """Bytes of data the mount sent: bodies of PutObject and UploadPart requests (not the
    upload markers, which are chute's bookkeeping; UploadPartCopy bodies are empty)."""
    total = 0
    for request in seen:
        if request.kind not in (Kind.PUT_OBJECT, Kind.UPLOAD_PART):
            continue
        if "/.chute-uploads/" in request.target:
            continue
        headers = request.headers
        total += int(headers.get("x-amz-decoded-content-length")
                     or headers.get("content-length") or 0)
    return total


def _count(seen: Iterable[Seen], kind: Kind) -> int:
    return sum(1 for r in seen if r.kind == kind and "/.chute-uploads/" not in r.target)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hidden(s3, prefix: str) -> list[str]:
    """Keys under ``prefix`` with a hidden chute component (a temporary), markers aside."""
    return [k for k in object_keys(s3, prefix)
            if any(part.startswith(".chute") for part in k[len(prefix):].split("/"))]


def _assert_clean(s3, mount) -> None:
    """No multipart upload left pending and no hidden temporary object under the prefix
    (an aborted upload may take a moment after the writer's error)."""
    wait_for(lambda: not pending_uploads(s3, mount.prefix) and not _hidden(s3, mount.prefix),
             f"no pending upload and no temporary under {mount.prefix}", timeout=15)


# -- rsync --------------------------------------------------------------------------------

def test_rsync_inplace_delta_sends_only_the_changed_slices(mount_factory, store, s3,
                                                            tmp_path: Path) -> None:
    """200 MiB object, 10 scattered 4 KiB changes: rsync --inplace --no-whole-file (reads on:
    rsync reads the basis) leaves the object exact having sent at most 10 x 2 slices; a second
    run transfers nothing."""
    rsync = _tool("rsync")
    old = random_file(tmp_path / "old.bin", 200 * MiB, seed=17)
    src = tmp_path / "src"
    src.mkdir()
    new = src / "disk.img"
    _changed_copy(old, new, changes=10)
    os.utime(new, ns=(OLD_MTIME_NS + 10**9 * 3600, OLD_MTIME_NS + 10**9 * 3600))
    with FaultProxy.for_store(store) as proxy:
        mount = mount_factory(*READS, server=proxy)
        key = mount.key("disk.img")
        _put_base(s3, key, old)
        before = len(proxy.requests)
        result = _run([rsync, "-t", "--inplace", "--no-whole-file", "--stats", str(new),
                       str(mount.path / "disk.img")])
        first = proxy.requests[before:]
        assert sha256_object(s3, key) == sha256_file(new)
        sent = _body_bytes(first)
        print(f"rsync --inplace --no-whole-file: {sent} bytes sent, "
              f"{_count(first, Kind.UPLOAD_PART_COPY)} UploadPartCopy")
        assert sent <= 10 * 2 * SLICE, (f"sent {sent} bytes for 10 x 4 KiB changes (limit "
                                        f"{10 * 2 * SLICE}):\n{result.stdout}")
        assert _count(first, Kind.UPLOAD_PART_COPY) > 0
        # The mount's own cost record (its finish log line) says what the relay counted.
        line = re.search(rf"uploaded {re.escape(key)}: .*; (\d+) bytes sent, (\d+) copied "
                         r"server-side, (\d+) re-read", mount.log())
        assert line, mount.log()[-3000:]
        assert int(line.group(1)) == sent
        assert int(line.group(2)) + sent >= 200 * MiB
        totals = status(mount.path)["totals"]  # chute status: the mount-wide cost
        assert (totals["bytes_copied"], totals["bytes_fetched"]) == \
            (int(line.group(2)), int(line.group(3)))

        before = len(proxy.requests)
        again = _run([rsync, "-t", "--inplace", "--no-whole-file", "--stats", str(new),
                      str(mount.path / "disk.img")])
        assert "Number of regular files transferred: 0" in again.stdout, again.stdout
        assert _body_bytes(proxy.requests[before:]) == 0
        _assert_clean(s3, mount)
        mount.unmount()


def test_rsync_with_every_block_matching_sends_nothing(mount_factory, store, s3,
                                                        tmp_path: Path) -> None:
    """rsync -I --inplace --no-whole-file onto an identical object: the receiver opens it
    O_WRONLY without O_TRUNC, lseeks over every block, ftruncates to the same size and closes:
    nothing is sent and the object keeps its ETag."""
    rsync = _tool("rsync")
    same = random_file(tmp_path / "same.bin", 30 * MiB + 7, seed=19)
    with FaultProxy.for_store(store) as proxy:
        mount = mount_factory(*READS, server=proxy)
        key = mount.key("same.bin")
        _put_base(s3, key, same)
        etag = s3.head_object(Bucket=BUCKET, Key=key)["ETag"]
        before = len(proxy.requests)
        forced = _run([rsync, "-I", "--inplace", "--no-whole-file", "--stats", str(same),
                       str(mount.path / "same.bin")])
        assert re.search(r"Literal data: 0 bytes", forced.stdout), forced.stdout
        assert _body_bytes(proxy.requests[before:]) == 0
        assert _count(proxy.requests[before:], Kind.UPLOAD_PART_COPY) == 0
        assert s3.head_object(Bucket=BUCKET, Key=key)["ETag"] == etag
        _assert_clean(s3, mount)
        mount.unmount()


def test_plain_rsync_inplace_rewrites_existing_objects_exactly(mount_factory, s3,
                                                               tmp_path: Path) -> None:
    """Whole-file rsync --inplace (the default between local paths): the receiver opens each
    existing object O_WRONLY|O_CREAT without O_TRUNC, writes it sequentially from 0 and
    ftruncates to the new length: one file grows, one shrinks, one keeps its size."""
    rsync = _tool("rsync")
    mount = mount_factory(*SMALL)
    src = tmp_path / "src"
    src.mkdir()
    sizes = {"grows.bin": (12 * MiB + 5, 23 * MiB + 77), "shrinks.bin": (31 * MiB + 3, 9 * MiB),
             "same.bin": (17 * MiB, 17 * MiB)}
    for i, (name, (old_size, new_size)) in enumerate(sizes.items()):
        _put_base(s3, mount.key(f"dst/{name}"), random_file(tmp_path / f"old-{name}",
                                                            old_size, seed=30 + i))
        random_file(src / name, new_size, seed=40 + i)
    result = _run([rsync, "-r", "--inplace", "--stats", f"{src}/", f"{mount.path / 'dst'}/"])
    assert "Number of regular files transferred: 3" in result.stdout, result.stdout
    for name, (_old, new_size) in sizes.items():
        key = mount.key(f"dst/{name}")
        assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == new_size, name
        assert sha256_object(s3, key) == sha256_file(src / name), name
    _assert_clean(s3, mount)


# -- zip ------------------------------------------------------------------------------------

def test_zip_with_20_and_36_mib_members_unzips_clean(mount_factory, s3, tmp_path: Path
                                                     ) -> None:
    """Info-ZIP writes a temp file zi* (O_RDWR|O_CREAT|O_EXCL) in the archive's directory,
    patches each member's local header after its data (the 36 MiB member's ~36 MiB behind,
    far past the retained slices) and renames it over the archive: unzip -t is clean through
    the mount and on a downloaded copy, and no temporary is left."""
    zip_, unzip = _tool("zip"), _tool("unzip")
    mount = mount_factory(*READS)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    random_file(tree / "a20.bin", 20 * MiB, seed=51)
    random_file(tree / "sub" / "b36.bin", 36 * MiB, seed=52)
    (tree / "small.txt").write_text("small\n")
    (mount.path / "arch").mkdir()
    _run([zip_, "-r", str(mount.path / "arch" / "out.zip"), "tree"], cwd=tmp_path)
    test = _run([unzip, "-t", str(mount.path / "arch" / "out.zip")])
    assert "No errors detected" in test.stdout, test.stdout
    key = mount.key("arch/out.zip")
    local = tmp_path / "downloaded.zip"
    s3.download_file(BUCKET, key, str(local))
    test = _run([unzip, "-t", str(local)])
    assert "No errors detected" in test.stdout, test.stdout
    with zipfile.ZipFile(local) as archive:
        assert archive.read("tree/small.txt") == b"small\n"
        for name in ("tree/a20.bin", "tree/sub/b36.bin"):
            assert _sha(archive.read(name)) == sha256_file(tmp_path / name), name
    assert object_keys(s3, mount.key("arch/")) == [mount.key("arch/"), key]
    _assert_clean(s3, mount)


# -- a Python writer seeking back -----------------------------------------------------------

PATCH_AT = 20 * MiB + 3


def _seek_back_writer(path: Path, mode: str) -> bytes:
    """120 MiB in 1 MiB writes, then 8 bytes patched 100 MiB back, then 1 KiB appended;
    returns what the file must hold."""
    rng = random.Random(61)
    expected = bytearray()
    with open(path, mode) as f:
        for _ in range(120):
            block = rng.randbytes(MiB)
            f.write(block)
            expected += block
        f.seek(PATCH_AT)
        f.write(b"PATCHED!")
        expected[PATCH_AT:PATCH_AT + 8] = b"PATCHED!"
        f.seek(0, os.SEEK_END)
        f.write(b"tail" * 256)
        expected += b"tail" * 256
    return bytes(expected)


def test_python_rw_writer_patches_8_bytes_100_mib_back(mount_factory, s3) -> None:
    """open("w+b") is O_RDWR: --patch-back auto (the default) creates its upload at a hidden
    temporary key, keeps the late 8-byte patch, and composes the final object at close."""
    mount = mount_factory(*SMALL)
    expected = _seek_back_writer(mount.path / "rw.bin", "w+b")
    assert sha256_object(s3, mount.key("rw.bin")) == _sha(expected)
    _assert_clean(s3, mount)


def test_python_wb_writer_patches_100_mib_back_with_patch_back_always(mount_factory, s3
                                                                       ) -> None:
    """open("wb") is O_WRONLY|O_TRUNC and its backward write comes after its upload exists:
    with --patch-back always the upload is at a temporary key from the start, so it lands."""
    mount = mount_factory(*SMALL, "--patch-back", "always")
    expected = _seek_back_writer(mount.path / "wb.bin", "wb")
    assert sha256_object(s3, mount.key("wb.bin")) == _sha(expected)
    _assert_clean(s3, mount)


def test_python_wb_writer_under_auto_is_refused_naming_the_option(mount_factory, s3) -> None:
    """Under --patch-back auto an O_WRONLY writer's upload is at its final key, where a late
    patch cannot be served: EINVAL, a log line naming --patch-back always, the old object
    untouched and nothing partial visible."""
    mount = mount_factory(*SMALL)
    key = mount.key("wb.bin")
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"old content")
    with pytest.raises(OSError) as caught:
        _seek_back_writer(mount.path / "wb.bin", "wb")
    assert caught.value.errno == errno.EINVAL, caught.value
    assert "--patch-back always" in mount.log()
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"old content"
    _assert_clean(s3, mount)


# -- qemu-img -------------------------------------------------------------------------------

def _disk_image(path: Path) -> Path:
    """A 64 MiB raw image with data and holes (data at 0, 10, 40 MiB and in the last 64 KiB)."""
    rng = random.Random(71)
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
        for offset, length in ((0, MiB), (10 * MiB, 2 * MiB), (40 * MiB, MiB),
                               (64 * MiB - 65536, 65536)):
            f.seek(offset)
            f.write(rng.randbytes(length))
    return path


def test_qemu_img_convert_to_raw(mount_factory, s3, tmp_path: Path) -> None:
    """qemu-img creates the output O_RDWR and grows it to 64 MiB with ftruncate (zeros never
    streamed), closes it, reopens the finished object O_RDWR and pwrites only the data:
    the object equals the image, and qemu-img compare (reads on) agrees."""
    qemu_img = _tool("qemu-img")
    mount = mount_factory(*READS)
    image = _disk_image(tmp_path / "src.img")
    _run([qemu_img, "convert", "-O", "raw", str(image), str(mount.path / "out.raw")])
    key = mount.key("out.raw")
    assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == 64 * MiB
    assert sha256_object(s3, key) == sha256_file(image)
    _run([qemu_img, "compare", "-f", "raw", "-F", "raw", str(image),
          str(mount.path / "out.raw")])
    _assert_clean(s3, mount)


def test_qemu_img_convert_to_qcow2_reads_back_its_own_writes_refused_cleanly(
        mount_factory, s3, tmp_path: Path) -> None:
    """qcow2: in one O_RDWR open qemu-img writes its header and refcount table and reads them
    back (findings: pread(112 @0) after pwrite(64K @0)); a file being written cannot be read,
    so the convert fails with a clear error, leaves no object, no upload pending and no
    temporary, and the mount keeps working."""
    qemu_img = _tool("qemu-img")
    mount = mount_factory(*READS)
    image = _disk_image(tmp_path / "src.img")
    result = subprocess.run([qemu_img, "convert", "-O", "qcow2", str(image),
                             str(mount.path / "out.qcow2")], capture_output=True, text=True,
                            timeout=120)
    if result.returncode == 0:
        # Should qcow2 ever work, it must be exact.
        _run([qemu_img, "compare", str(image), str(mount.path / "out.qcow2")])
    else:
        # Today: "Could not read qcow2 header: Permission denied" (a read through the O_RDWR
        # descriptor of a file being written is EACCES); qemu-img exits 1, and a writer that
        # exits non-zero leaves no object.
        assert re.search(r"(busy|Invalid argument|not supported|Input/output error|"
                         r"Permission denied|No buffer space)", result.stderr), result.stderr
        assert mount.key("out.qcow2") not in object_keys(s3, mount.prefix)
    _assert_clean(s3, mount)
    (mount.path / "after.txt").write_bytes(b"still fine")
    assert s3.get_object(Bucket=BUCKET, Key=mount.key("after.txt"))["Body"].read() == \
        b"still fine"


# -- the patch budget -----------------------------------------------------------------------

def test_patch_budget_exhausted_is_enobufs_naming_the_option_and_nothing_partial(
        mount_factory, s3) -> None:
    """Late patches beyond --patch-budget: ENOBUFS on the write that does not fit, a log line
    naming --patch-budget, the upload dropped, the old object intact, nothing left."""
    mount = mount_factory(*SMALL, "--patch-budget", "64KiB")
    key = mount.key("budget.bin")
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"the old object")
    rng = random.Random(81)
    with pytest.raises(OSError) as caught, \
            open(mount.path / "budget.bin", "w+b", buffering=0) as f:
        for _ in range(40):
            f.write(rng.randbytes(MiB))
        for i in range(8):  # 8 x 16 KiB = 128 KiB of late patches, 2x the budget
            f.seek(MiB + i * 2 * MiB)
            f.write(rng.randbytes(16 * 1024))
    assert caught.value.errno == errno.ENOBUFS, caught.value
    assert "--patch-budget" in mount.log()
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"the old object"
    _assert_clean(s3, mount)


# -- the store failing in each phase --------------------------------------------------------

def _patch_in_place(path: Path) -> None:
    """An O_RDWR writer ("r+b", no O_TRUNC) on a 30 MiB object of 5 MiB slices: 4 KiB into
    slices 2, 3 and 4 (each fetched from the old object, slice 2 sent when slice 4 is made),
    then 100 bytes back into slice 2: a late patch, so the upload is at a temporary key and
    the object is composed at close (copy parts, a ranged GET of the temporary, Completes)."""
    with open(path, "r+b", buffering=0) as f:
        for offset in (12 * MiB, 17 * MiB, 22 * MiB):
            f.seek(offset)
            f.write(b"x" * 4096)
        f.seek(12 * MiB + 8)
        f.write(b"y" * 100)


PHASES = {
    "copy": {"kind": Kind.UPLOAD_PART_COPY},
    "ranged-get": {"kind": Kind.GET_OBJECT},
    "temp-complete": {"kind": Kind.COMPLETE_MULTIPART_UPLOAD},
    "final-complete": {"kind": Kind.COMPLETE_MULTIPART_UPLOAD, "after": 1},
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_store_failing_in_a_phase_leaves_the_old_object_and_no_temporary(
        phase: str, mount_factory, store, s3, tmp_path: Path) -> None:
    """AccessDenied (final at once) on the first request of a phase: the writer gets an error,
    the old object is intact, no upload is left pending and no temporary object is left."""
    old = random_file(tmp_path / "old.bin", 30 * MiB, seed=91)
    with FaultProxy.for_store(store) as proxy:
        mount = mount_factory(*SMALL, server=proxy)
        key = mount.key("patched.bin")
        _put_base(s3, key, old)
        etag = s3.head_object(Bucket=BUCKET, Key=key)["ETag"]
        proxy.set_scenario(access_denied(times=1, **PHASES[phase]))
        with pytest.raises(OSError) as caught:
            _patch_in_place(mount.path / "patched.bin")
        assert caught.value.errno == errno.EIO, caught.value
        assert sum(c.injected for c in proxy.stats.values()) == 1, proxy.log
        assert s3.head_object(Bucket=BUCKET, Key=key)["ETag"] == etag
        assert sha256_object(s3, key) == sha256_file(old)
        _assert_clean(s3, mount)
        mount.unmount()


# -- bench.py --inplace -----------------------------------------------------------------------

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


def test_bench_inplace_mode_runs_verifies_and_cleans_up(tmp_path: Path) -> None:
    """``bench.py --inplace`` end to end at 64 MiB (its own store, chute and, if installed,
    rclone --vfs-cache-mode writes): every object matches its file, chute sent at most
    10 x 2 slices, and nothing is left mounted or on disk. No speed is asserted."""
    from chute.fs.mountinfo import mounts

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = subprocess.run(
        [sys.executable, str(BENCH), "--inplace", "--size", "64MiB", "--slice-size", "5MiB",
         "--work-dir", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    report = json.loads(result.stdout)
    assert report["mode"] == "inplace" and report["size"] == 64 * MiB
    chute = report["rows"]["chute"]
    assert chute["verified"] and chute["sent"] <= 10 * 2 * SLICE and chute["copied"] > 0
    assert chute["disk_writes"] < MiB
    if "rclone" in report["rows"]:
        assert report["rows"]["rclone"]["verified"]
    assert not [m for m in mounts() if m.mountpoint.startswith(str(tmp_path))]
    assert list(tmp_path.iterdir()) == []
