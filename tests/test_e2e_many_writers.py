"""End to end: many slow, independent writers on a small ring all land (issue 13, item 12).

Each writer blocked waiting for a ring slot holds one FUSE request while it waits. When the
FUSE layer served at most 64 requests at once, 64 blocked writers took every request task,
the writers holding the slots could no longer have their own writes served, their slots
went idle and the ring's progress rule failed writes with ENOBUFS ("one process writing to
more files than the ring"). Independent writers must always progress.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.support.mounts import requires_fuse
from tests.support.store import BUCKET

pytestmark = [pytest.mark.e2e, requires_fuse]

WRITERS = 80
CHUNK = 64 * 1024
CHUNKS = 16  # 1 MiB per file, written over ~0.8 s

WRITER = (
    "import sys, time\n"
    "with open(sys.argv[1], 'wb', buffering=0) as f:\n"
    f"    for _ in range({CHUNKS}):\n"
    f"        f.write(b'x' * {CHUNK})\n"
    "        time.sleep(0.05)\n"
)


def test_eighty_slow_writers_on_a_64mib_ring_all_land(mount_factory, s3) -> None:
    mount = mount_factory("--ring-size", "64MiB")  # 4 slots of 16 MiB
    began = time.monotonic()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(mount.path / f"w{i:03d}")],
                                stderr=subprocess.PIPE, text=True) for i in range(WRITERS)]
    failed = {}
    for i, writer in enumerate(writers):
        _, err = writer.communicate(timeout=600)
        if writer.returncode != 0:
            failed[i] = err.strip().splitlines()[-1:]
    elapsed = time.monotonic() - began
    print(f"{WRITERS} writers done in {elapsed:.1f} s, {len(failed)} failed")
    assert not failed, f"{len(failed)} of {WRITERS} writers failed: {failed}"
    log = mount.log()
    assert "ring exhausted" not in log, log[-3000:]
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=mount.prefix)
    sizes = {o["Key"]: o["Size"] for o in listed.get("Contents", [])}
    assert len(sizes) == WRITERS, sorted(sizes)
    assert set(sizes.values()) == {CHUNK * CHUNKS}
