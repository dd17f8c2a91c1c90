"""``bench.py --writers``: parallel writers into one mount, chute beside rclone mount, in one
run. For each number of writers N (default 1, 2, 4, 8), on a fresh mount each time:

- **small files**: ``find tree -type f | xargs -P N -n 8 cp --parents -t MNT`` of one tree
  (the directories made first, untimed: ``cp --parents`` racing itself on a missing directory
  fails with EEXIST on any filesystem);
- **big files**: N ``cp`` of the same source file at once, to N names;

and once, **tar and rsync at once**: ``tar -c | tar -x`` of the tree into one directory while
``rsync -r`` copies it into another (rsync's own way: a temporary name, then rename).

Each case gives files/s and MB/s over the whole wall time (first writer started to last
writer done, each file closed, i.e. in the store), the mount's CPU, and whether every object
landed exactly (size and ETag from the source, as the other modes check).

``mounted_run`` is the one timed run under both this mode and ``--link``: a fresh mount, the
writers' commands started together and waited for, the mount and store sampled around them.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import fmt_size, log
from .data import make_tree
from .results import Run
from .sampling import sample

if TYPE_CHECKING:
    from .runs import Bench

Verify = Callable[[str], tuple[bool, str]]
"""Given the run's prefix in the bucket: (everything landed exactly, how it was checked)."""


def mounted_run(bench: Bench, contender: str, label: str,
                commands: Callable[[Path], list[str]], nbytes: int, files: int,
                verify: Verify, prepare: Callable[[Path], None] | None = None,
                around: Callable[[bool], None] | None = None,
                concurrency: int | None = None) -> Run:
    """A fresh mount of ``contender``; ``prepare(mountpoint)`` untimed; then every shell
    command of ``commands(mountpoint)`` started at once and waited for, timed, with the
    mount's and the store's CPU sampled around them (``around(True)`` just before the
    clock starts, ``around(False)`` just after it stops); unmount, verify, empty the prefix.
    ``concurrency``: the mount's upload concurrency, if not ``--upload-concurrency``."""
    a = bench.args
    run_id = bench.next_id(f"{label}-{contender}")
    mountpoint = bench.work / f"mnt-{run_id}"
    mount = bench.mounts.of(contender, mountpoint, run_id, a.slice_size, a.ring_size,
                            concurrency or a.upload_concurrency)
    with mount:
        if prepare is not None:
            prepare(mountpoint)
        bench.settle()
        store_before, before = bench.store_cpu(), sample(mount.pid)
        if around is not None:
            around(True)
        started = time.monotonic()
        procs = [subprocess.Popen(["bash", "-c", f"set -o pipefail; {command}"],
                                  stderr=subprocess.PIPE, text=True)
                 for command in commands(mountpoint)]
        outcomes = [(p.wait(), p.stderr.read() if p.stderr else "") for p in procs]
        seconds = time.monotonic() - started
        if around is not None:
            around(False)
        after, store_after = sample(mount.pid), bench.store_cpu()
    failed = [(code, err) for code, err in outcomes if code != 0]
    for code, err in failed:
        log(f"  {contender} {label}: a writer exited with {code}: {err.strip()[-500:]}")
    ok, how = verify(run_id)
    if failed:
        ok, how = False, f"{how}; {len(failed)} writer(s) failed"
    bench.check.delete_prefix(f"{run_id}/")
    with contextlib.suppress(OSError):
        mountpoint.rmdir()
    return Run(seconds, nbytes, after.cpu - before.cpu, after.hwm,
               after.write_bytes - before.write_bytes, store_after - store_before, ok, how,
               files=files)


def writer_contenders() -> list[str]:
    return ["chute"] + (["rclone"] if shutil.which("rclone") else [])


def mode_writers(bench: Bench) -> dict[str, Any]:
    a = bench.args
    source = bench.work / "tree-src"
    expected = make_tree(source / "tree", a.files, a.seed)
    tree_bytes = sum(size for size, _ in expected.values())
    dirs = sorted({rel.rsplit("/", 1)[0] for rel in expected})
    log(f"generated {a.files} files, {fmt_size(tree_bytes)} in {source / 'tree'}")
    data = bench.make_file(a.size, {a.slice_size})
    names = writer_contenders()
    cases: list[dict[str, Any]] = []

    def record(case: str, writers: int, name: str, run: Run) -> None:
        cases.append({"case": case, "writers": writers, "contender": name, "run": run})
        log(f"{case:<6} x{writers:<2} {name:<7} {run.files / run.seconds:7.1f} files/s "
            f"{run.mbps:7.1f} MB/s  {run.seconds:6.1f} s  CPU {run.cpu:5.1f} s  verified "
            f"{'yes' if run.verified else 'NO'} ({run.how})")

    def make_dirs(base: str) -> Callable[[Path], None]:
        def prepare(mnt: Path) -> None:
            for d in dirs:
                (mnt / base / d).mkdir(parents=True, exist_ok=True)
        return prepare

    def make_dirs_of(*names: str) -> Callable[[Path], None]:
        def prepare(mnt: Path) -> None:
            for d in names:
                (mnt / d).mkdir()
        return prepare

    def tree_check(*bases: str) -> Verify:
        def verify(run_id: str) -> tuple[bool, str]:
            results = [bench.check.check_tree_in_bucket(f"{run_id}/{b}", expected)
                       for b in bases]
            return all(ok for ok, _ in results), results[0][1]
        return verify

    def big_check(n: int) -> Verify:
        def verify(run_id: str) -> tuple[bool, str]:
            results = [bench.check.check_object(f"{run_id}/big-{i}", data, a.slice_size)
                       for i in range(n)]
            return all(ok for ok, _ in results), results[0][1]
        return verify

    for n in a.writer_counts:
        for name in names:
            run = mounted_run(
                bench, name, f"xargs{n}",
                lambda mnt, n=n: [f"cd {q(source)} && find tree -type f -print0 | "
                                  f"xargs -0 -P {n} -n 8 cp --parents -t {q(mnt)}"],
                tree_bytes, len(expected), tree_check("tree/"), prepare=make_dirs("tree"))
            record("small", n, name, run)
        for name in names:
            run = mounted_run(
                bench, name, f"big{n}",
                lambda mnt, n=n: [f"cp {q(data.path)} {q(mnt / f'big-{i}')}"
                                  for i in range(n)],
                n * data.size, n, big_check(n))
            record("big", n, name, run)
    for name in names:
        run = mounted_run(
            bench, name, "tar-rsync",
            lambda mnt: [f"tar -C {q(source)} -cf - tree | "
                         f"tar -C {q(mnt / 'tar')} -xf - --no-same-owner -m",
                         f"rsync -r {q(source / 'tree')} {q(mnt / 'rsync')}/"],
            2 * tree_bytes, 2 * len(expected), tree_check("tar/tree/", "rsync/tree/"),
            prepare=make_dirs_of("tar", "rsync"))
        record("mixed", 2, name, run)
    return {"mode": "writers", "files": a.files, "tree_bytes": tree_bytes, "size": a.size,
            "writer_counts": a.writer_counts, "contenders": names, "cases": cases}


def q(path: object) -> str:
    return shlex.quote(str(path))


def _cell(case: dict[str, Any] | None) -> str:
    if case is None:
        return f"{'-':>24}"
    run: Run = case["run"]
    mark = "" if run.verified else " !"
    return f"{run.files / run.seconds:8.1f} {run.mbps:7.1f} {run.cpu:5.1f}{mark:2}"


def verified(result: dict[str, Any]) -> bool:
    return all(c["run"].verified for c in result["cases"])


def print_result(result: dict[str, Any]) -> None:
    """The scaling table."""
    names = result["contenders"]
    by = {(c["case"], c["writers"], c["contender"]): c for c in result["cases"]}
    print()
    print(f"parallel writers into one fresh mount per cell; small: xargs -P N -n 8 cp of "
          f"{result['files']} files ({fmt_size(result['tree_bytes'])}, 4 KiB-1 MiB); big: N "
          f"cp of a {fmt_size(result['size'])} file at once; mixed: tar -x and rsync -r of "
          f"the tree at once. Cells: files/s, MB/s, mount CPU s (! = not verified)")
    print(f"{'':<11}" + "".join(f"  {n:^24}" for n in names))
    print(f"{'case':<8}{'N':>3}" + "".join(f"  {'files/s':>8} {'MB/s':>7} {'CPU':>5}  "
                                          for _ in names)
          + ("   chute/rclone" if "rclone" in names else ""))
    for case, counts in (("small", result["writer_counts"]), ("big", result["writer_counts"]),
                         ("mixed", [2])):
        for n in counts:
            cells = [by.get((case, n, name)) for name in names]
            line = f"{case:<8}{n:>3}" + "".join(f"  {_cell(c)}" for c in cells)
            if "rclone" in names and all(cells):
                chute, rclone = cells[0]["run"], cells[1]["run"]  # type: ignore[index]
                line += f"   {chute.mbps / rclone.mbps:5.2f}"
            print(line)
    if not verified(result):
        print("some objects did not verify (see the log above)")


def to_json(result: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in result.items() if k != "cases"}
    out["cases"] = [{"case": c["case"], "writers": c["writers"], "contender": c["contender"],
                     "seconds": c["run"].seconds, "bytes": c["run"].nbytes,
                     "files": c["run"].files, "files_per_s": c["run"].files / c["run"].seconds,
                     "mbps": c["run"].mbps, "mount_cpu_s": c["run"].cpu,
                     "peak_rss": c["run"].peak_rss, "verified": c["run"].verified,
                     "how": c["run"].how} for c in result["cases"]]
    return out



def add_arguments(p: argparse.ArgumentParser) -> None:
    """--writers' options (the mode itself is in cli.py's group of modes)."""
    p.add_argument("--writer-counts", default="1,2,4,8", metavar="LIST",
                   help="--writers: numbers of parallel writers (default 1,2,4,8)")
