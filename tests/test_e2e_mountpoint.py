"""A mountpoint whose path has a space and a non-ASCII character (issue 12, item 5).

/proc/self/mountinfo escapes the space as ``\\040`` and writes ``é`` as its UTF-8 bytes; the
last-close check (fs/openers.py) finds the mount's id through chute.fs.mountinfo. Had it not
found the mount, it would fall back to counting handles and end a file at the first close
of a dup'd descriptor: these tests write through dup'd descriptors and check that every
byte lands.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from chute.fs import mountinfo
from tests.support.mounts import Mount, launch_mount, requires_fuse, wait_until_mounted
from tests.support.store import BUCKET, store_env

pytestmark = [pytest.mark.e2e, requires_fuse]


@pytest.fixture
def odd_mount(store, tmp_path: Path) -> Iterator[Mount]:
    path = tmp_path / "mnt dir-é"
    path.mkdir()
    mount = launch_mount(path, tmp_path / "mount.log", store.endpoint_url, store_env(store))
    try:
        wait_until_mounted(mount)
        yield mount
    finally:
        with contextlib.suppress(Exception):
            mount.unmount()


def body(s3, mount: Mount, name: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=mount.key(name))["Body"].read()


def sh(script: str, mount: Mount) -> None:
    subprocess.run(["bash", "-c", script], check=True, timeout=60,
                   env={"M": str(mount.path), "PATH": "/usr/bin:/bin"})


def test_the_mount_is_found_in_mountinfo(odd_mount: Mount) -> None:
    entry = mountinfo.find(str(odd_mount.path))
    assert entry is not None and entry.fstype == "fuse.chute"


def test_a_dupd_descriptor_does_not_end_the_file_early(odd_mount: Mount, s3) -> None:
    sh('exec 3>"$M/f"; (echo a >&3); echo b >&3; exec 3>&-', odd_mount)
    assert body(s3, odd_mount, "f") == b"a\nb\n"
    assert "Traceback" not in odd_mount.log()


def test_dd_and_a_grouped_redirect_land_exactly(odd_mount: Mount, s3) -> None:
    sh('head -c 3000000 /dev/zero | tr "\\0" x | dd of="$M/dd.out" bs=64k status=none '
       'iflag=fullblock', odd_mount)
    sh('{ echo x; echo y; } > "$M/g"', odd_mount)
    assert body(s3, odd_mount, "dd.out") == b"x" * 3_000_000
    assert body(s3, odd_mount, "g") == b"x\ny\n"
