"""How long a writer waits for its error when the store goes away for good (default settings).

The promise (README, "Reliability"): with the default --retry-budget and --stall-timeout a
writer learns of a store that is gone for good within three minutes, and a backup job neither
sits blocked for half an hour nor exits 0. This measures it, per way of going away, against
an embedded SeaweedFS behind the fault proxy (tests/support/faultproxy/):

- refused:   nothing listens any more (the server process is gone);
- reset:     connections are accepted and reset at once (a broken load balancer);
- blackhole: requests are accepted and never answered (a dead route, a hung server).

For each: ``dd`` of a stream into a mount with the default options, the store vanishes a few
seconds in, and the script prints how long until dd exited, its exit status, and whether the
multipart upload was cleaned up once the store came back. Not run in CI (minutes per mode)::

    python scripts/store_gone.py [--mode refused] [--mode blackhole] ...
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import _repo  # noqa: F401  (first: the repo root on sys.path, for tests.support)

from chute.fs.embedded_store import EmbeddedStore
from tests.support.faultproxy import FaultProxy, Outage, StallRequest
from tests.support.mounts import start_mount
from tests.support.store import BUCKET, direct_client, store_env

GONE_FOR = 600.0
"""Longer than any writer may wait: 'for good' as far as the writer can tell."""
MODES = {
    "refused": lambda: [Outage(GONE_FOR, mode="refuse")],
    "reset": lambda: [Outage(GONE_FOR, mode="reset")],
    "blackhole": lambda: [StallRequest(GONE_FOR, times=None, duration=GONE_FOR)],
}


def measure(mode: str, work: Path, store: EmbeddedStore, s3) -> tuple[float, int, str]:
    proxy = FaultProxy.for_store(store)
    proxy.start()
    mount = None
    try:
        mount = start_mount(work / mode, proxy.url, store_env(store), (), prefix=f"gone-{mode}/")
        dd = subprocess.Popen(["dd", "if=/dev/zero", f"of={mount.path / 'f'}", "bs=1M",
                               "count=8192", "status=none"], stderr=subprocess.PIPE)
        time.sleep(3.0)
        proxy.set_scenario(MODES[mode]())
        gone = time.monotonic()
        _, err = dd.communicate(timeout=1800)
        waited = time.monotonic() - gone
        proxy.set_scenario(None)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and s3.list_multipart_uploads(
                Bucket=BUCKET, Prefix=f"gone-{mode}/").get("Uploads"):
            time.sleep(1)
        left = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=f"gone-{mode}/").get("Uploads")
        cleanup = "aborted" if not left else f"{len(left)} upload(s) left"
        print(f"  dd said: {err.decode().strip()[-200:]}", flush=True)
        return waited, dd.returncode, cleanup
    finally:
        if mount is not None:
            mount.unmount()
        proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", action="append", choices=sorted(MODES),
                        help="repeatable (default: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chute-gone-") as tmp:
        work = Path(tmp)
        store = EmbeddedStore(work / "store", bucket=BUCKET)
        store.start()
        try:
            s3 = direct_client(store)
            rows = []
            for mode in args.mode or list(MODES):
                print(f"{mode}: store gone 3 s into the copy ...", flush=True)
                rows.append((mode, *measure(mode, work, store, s3)))
        finally:
            store.stop()
    print(f"\n{'store':<10} {'writer waited':>14} {'dd exit':>8}  upload")
    for mode, waited, rc, cleanup in rows:
        print(f"{mode:<10} {waited:>12.1f} s {rc:>8}  {cleanup}")


if __name__ == "__main__":
    main()
