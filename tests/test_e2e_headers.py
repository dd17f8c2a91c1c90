"""End to end: writers that seek back to patch a header before close.

Python's zipfile patches each member's local header (CRC, sizes) once the member is written,
the wave module patches the RIFF and data sizes at close. chute keeps a file's first slice and
its latest full slice in the ring (ring.py, "Header patches"), so these writers work on the
mount; the archive is then checked by ``unzip -t`` and by reading it back, with boto3.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import wave
import zipfile
from pathlib import Path

import pytest
import xxhash

from tests.support.mounts import requires_fuse
from tests.support.store import BUCKET, object_keys, pending_uploads

pytestmark = [pytest.mark.e2e, requires_fuse]

MiB = 1 << 20
SMALL_SLICES = ("--slice-size", "5MiB", "--ring-size", "40MiB")


def download(s3, key: str, path: Path) -> Path:
    path.write_bytes(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    return path


def stored_xxh3(s3, key: str) -> str:
    tags = s3.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]
    return {t["Key"]: t["Value"] for t in tags}["chute-xxh3-128"]


def members() -> dict[str, bytes]:
    """A first member of several slices, then members of up to 2 MiB, so that member
    boundaries fall on both sides of every slice boundary."""
    rng = random.Random(11)
    files = {"first.bin": rng.randbytes(7 * MiB + 123)}
    for i in range(30):
        files[f"dir/m{i:02d}.bin"] = rng.randbytes(rng.randrange(10_000, 2 * MiB))
    return files


def test_zipfile_multi_slice_archive(mount_factory, s3, tmp_path: Path) -> None:
    mount = mount_factory(*SMALL_SLICES)
    files = members()
    with zipfile.ZipFile(mount.path / "x.zip", "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    local = download(s3, mount.key("x.zip"), tmp_path / "x.zip")
    assert local.stat().st_size > 6 * 5 * MiB  # many slices
    test = subprocess.run(["unzip", "-t", str(local)], capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "No errors detected" in test.stdout
    with zipfile.ZipFile(local) as archive:
        assert {name: archive.read(name) for name in archive.namelist()} == files
    assert stored_xxh3(s3, mount.key("x.zip")) == xxhash.xxh3_128(local.read_bytes()).hexdigest()
    assert pending_uploads(s3, mount.prefix) == []


def test_zipfile_deflated_through_cp_of_local_tree(mount_factory, s3, tmp_path: Path) -> None:
    """``zip``-like use from Python: ZipFile.write of a local tree, compressed."""
    mount = mount_factory(*SMALL_SLICES)
    tree = tmp_path / "tree"
    rng = random.Random(3)
    for i in range(12):
        path = tree / f"d{i % 3}" / f"f{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        words = [rng.choice(["alpha", "beta", "gamma", str(i)]) for _ in range(200_000)]
        path.write_text(" ".join(words) + rng.randbytes(1_500_000).hex())
    with zipfile.ZipFile(mount.path / "tree.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(tree.rglob("*.txt")):
            archive.write(path, path.relative_to(tree))
    local = download(s3, mount.key("tree.zip"), tmp_path / "tree.zip")
    assert local.stat().st_size > 2 * 5 * MiB
    assert subprocess.run(["unzip", "-tq", str(local)], capture_output=True).returncode == 0
    with zipfile.ZipFile(local) as archive:
        for path in tree.rglob("*.txt"):
            assert archive.read(str(path.relative_to(tree))) == path.read_bytes()


def test_wave_writer_patches_riff_header_at_close(mount_factory, s3, tmp_path: Path) -> None:
    """wave writes a header with 0 frames, streams the frames, and patches both sizes at
    close: the object must equal the same file written to local disk."""
    mount = mount_factory(*SMALL_SLICES)
    rng = random.Random(5)
    chunks = [rng.randbytes(rng.randrange(1, 300_000) * 4) for _ in range(80)]

    def write(path: Path) -> None:
        with wave.open(str(path), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(48_000)
            for chunk in chunks:
                w.writeframes(chunk)

    write(tmp_path / "local.wav")
    write(mount.path / "take.wav")
    remote = download(s3, mount.key("take.wav"), tmp_path / "remote.wav")
    assert remote.stat().st_size > 4 * 5 * MiB
    assert remote.read_bytes() == (tmp_path / "local.wav").read_bytes()
    with wave.open(str(remote), "rb") as w:
        assert w.getnframes() * 4 == sum(map(len, chunks))
    # The header changed after the first slice was hashed: the tag is read back from the store.
    assert stored_xxh3(s3, mount.key("take.wav")) == xxhash.xxh3_128(
        remote.read_bytes()).hexdigest()
    assert "reading the object back" in mount.log()
    # Header patches into the first slice need no temporary key: nothing copied server-side.
    assert " 0 copied server-side" in mount.log()
    assert pending_uploads(s3, mount.prefix) == []


def test_patch_into_a_slice_given_up_under_pressure_is_einval(mount_factory, s3) -> None:
    """Four slots, two files each holding a retained first slice and a filling one: a third
    writer would wait forever, so the oldest first slice is uploaded to make room, and a
    later patch into it fails with EINVAL and drops that file; the others land."""
    mount = mount_factory("--slice-size", "5MiB", "--ring-size", "20MiB")
    fa = os.open(mount.path / "a", os.O_WRONLY | os.O_CREAT)
    fb = os.open(mount.path / "b", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fa, b"a" * (5 * MiB + 1))
        os.write(fb, b"b" * (5 * MiB + 1))
        (mount.path / "c").write_bytes(b"c" * (5 * MiB))  # one slot, which was a's head
        os.pwrite(fb, b"B-HEADER", 0)  # b's first slice is still retained
        with pytest.raises(OSError) as excinfo:
            os.pwrite(fa, b"A-HEADER", 0)
        assert excinfo.value.errno == errno.EINVAL
    finally:
        with pytest.raises(OSError):
            os.close(fa)
        os.close(fb)
    assert s3.get_object(Bucket=BUCKET, Key=mount.key("b"))["Body"].read() == (
        b"B-HEADER" + b"b" * (5 * MiB + 1 - 8))
    assert s3.get_object(Bucket=BUCKET, Key=mount.key("c"))["Body"].read() == b"c" * (5 * MiB)
    assert sorted(object_keys(s3, mount.prefix)) == [mount.key("b"), mount.key("c")]
    assert pending_uploads(s3, mount.prefix) == []
    assert "goes back into bytes already sent" in mount.log()
