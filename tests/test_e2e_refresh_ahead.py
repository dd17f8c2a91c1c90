"""End to end: a directory being written is listed again in the background (refresh-ahead,
fs/lookups.py), and what the mount does meanwhile is never undone by a listing
(fs/snapshots.py). A real mount, files made one after the other for three seconds (three
LOOKUP_TTLs) while some are removed through the mount and one is made in the bucket."""

from __future__ import annotations

import os
import time

import pytest

from chute.fs.lookups import LOOKUP_TTL, REFRESH_AHEAD
from tests.support.mounts import requires_fuse
from tests.support.observe import scrape, status
from tests.support.store import BUCKET, object_keys

pytestmark = [pytest.mark.e2e, requires_fuse]

LISTS = ("chute_s3_request_duration_seconds_count", (("operation", "ListObjectsV2"),))


def test_a_stream_of_creates_with_removals_and_a_name_from_outside(mount_factory, s3
                                                                   ) -> None:
    mount = mount_factory("--slice-size", "5MiB", "--ring-size", "20MiB",
                          "--metrics-addr", "127.0.0.1:0")
    url = status(mount.path)["metrics_url"]
    d = mount.path / "d"
    d.mkdir()
    lists_before = scrape(url).get(LISTS, 0.0)
    kept: set[str] = set()
    removed: list[str] = []
    put_at = seen_at = None
    start = time.monotonic()
    n = 0
    while time.monotonic() < start + 3 * LOOKUP_TTL:
        name = f"f{n:04d}"
        (d / name).write_bytes(name.encode())
        kept.add(name)
        n += 1
        if n % 7 == 0:  # rm through the mount, while a listing may be in flight
            victim = f"f{n - 4:04d}"
            os.unlink(d / victim)
            kept.discard(victim)
            removed.append(victim)
        for victim in removed[-3:]:  # never brought back by a listing
            with pytest.raises(FileNotFoundError):
                os.stat(d / victim)
        if put_at is None and time.monotonic() > start + LOOKUP_TTL:
            s3.put_object(Bucket=BUCKET, Key=mount.key("d/outside"), Body=b"made elsewhere")
            put_at = time.monotonic()
        elif put_at is not None and seen_at is None and os.path.exists(d / "outside"):
            seen_at = time.monotonic()
        time.sleep(0.01)
    elapsed = time.monotonic() - start
    lists = scrape(url)[LISTS] - lists_before
    assert put_at is not None and seen_at is not None, "the name made outside never showed"
    assert seen_at - put_at < LOOKUP_TTL + 0.5
    # About one listing per REFRESH_AHEAD of the directory while it is written, and as many
    # of its parent, the mount root, kept fresh with it (fs/refresh_ahead.py); a few more on
    # a loaded machine, where a listing may land late and a lookup list again.
    assert 1 <= lists <= 2 * elapsed / REFRESH_AHEAD + 3, (lists, elapsed)
    assert sorted(os.listdir(d)) == sorted(kept | {"outside"})
    keys = set(object_keys(s3, mount.key("d/"))) - {mount.key("d/")}  # the marker
    assert keys == {mount.key(f"d/{k}") for k in kept | {"outside"}}
    assert "Traceback" not in mount.log() and "background listing" not in mount.log()
