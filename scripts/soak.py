#!/usr/bin/env python3
"""Soak chute under faults: N concurrent writers, random faults, for M minutes (issue #7).

Not part of CI. Each round picks a fault at random from the fault matrix's catalogue
(``tests/support/fault_catalogue.py``; ``tests/test_fault_matrix.py`` runs each row once),
mounts chute with that row's options on a SeaweedFS of its own through :class:`FaultProxy`
(``tests/support/faultproxy/``), sets the fault, and runs N ``cp`` at once, each a random
file (a small one sent as one PutObject, a multipart one, or one twice the ring). Every copy
is judged as in the matrix: landed, failed loudly, silent-bad or unclean. A transient fault
must let every copy land; under a permanent one a copy may also fail loudly (the fault may
hit some writers and not others), or get EIO although its object landed whole (the store
acted on the request that makes the object, then went away with the answer: unknowable).
Silent-bad and unclean are never allowed.

The table of the matrix is printed after every round and at the end (Ctrl-C ends early).
The exit status is 1 if a copy was silent-bad, or if any outcome broke its row's rule
other than the known bugs the catalogue names (``Row.bug``; those are listed apart).

    .venv/bin/python scripts/soak.py --writers 4 --minutes 30
    .venv/bin/python scripts/soak.py --only outage --minutes 5 --seed 7

Needs what the end-to-end tests need: /dev/fuse, fuse3, and root or a FUSE-capable user.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import _repo  # noqa: F401  (first: the repo root on sys.path, for tests.support)

from chute.fs.embedded_store import EmbeddedStore
from tests.support.fault_catalogue import BIG, CATALOGUE, HUGE, SMALL, Row
from tests.support.faultproxy import FaultProxy
from tests.support.mounts import Mount, start_mount
from tests.support.store import BUCKET, direct_client, store_env
from tests.support.verdicts import (
    FAILED,
    LANDED,
    SILENT_BAD,
    UNCONFIRMED,
    Source,
    Tally,
    Verdict,
    judge,
    make_source,
    run_cp,
)

SIZE_WEIGHTS = {SMALL: 3, BIG: 4, HUGE: 1}
"""How often a writer copies each size of file."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=4, help="concurrent cp per round (4)")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="no new round starts after this (10)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    parser.add_argument("--only", metavar="TEXT", action="append", default=[],
                        help="only faults whose name contains TEXT (repeatable)")
    parser.add_argument("--skip-known", action="store_true",
                        help="leave out the rows that expose a known bug")
    parser.add_argument("--work-dir", metavar="DIR",
                        help="store, sources and mounts go here (default: a temporary "
                        "directory, removed at the end)")
    args = parser.parse_args(argv)
    if args.writers < 1:
        parser.error("--writers must be at least 1")
    return args


def choose_rows(args: argparse.Namespace) -> list[Row]:
    rows = [r for r in CATALOGUE if not args.only or any(t in r.name for t in args.only)]
    if args.skip_known:
        rows = [r for r in rows if r.bug is None]
    if not rows:
        sys.exit("no fault in the catalogue matches --only")
    return rows


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.rows = choose_rows(args)
        self.tally = Tally()
        self.violations: list[str] = []
        self.known: list[str] = []
        self.rounds = 0

    def sources(self) -> dict[int, Source]:
        where = self.work / "sources"
        where.mkdir(parents=True, exist_ok=True)
        return {size: make_source(where / f"src-{size}", size, seed=size)
                for size in SIZE_WEIGHTS}

    def run(self) -> int:
        store = EmbeddedStore(self.work / "store", bucket=BUCKET)
        store.start()
        try:
            sources = self.sources()
            s3 = direct_client(store)
            deadline = time.monotonic() + self.args.minutes * 60
            with FaultProxy.for_store(store) as proxy:
                while time.monotonic() < deadline:
                    row = self.rng.choice(self.rows)
                    self.round(row, store, proxy, s3, sources)
                    print(self.tally.table(), flush=True)
        except KeyboardInterrupt:
            print("\ninterrupted", flush=True)
        finally:
            store.stop()
        return self.report()

    def round(self, row: Row, store: EmbeddedStore, proxy: FaultProxy, s3: object,
              sources: dict[int, Source]) -> None:
        self.rounds += 1
        began = time.monotonic()
        mount = start_mount(self.work / f"round{self.rounds}", proxy.url, store_env(store),
                            row.options)
        names = [f"w{i}" for i in range(self.args.writers)]
        picks = self.rng.choices(list(SIZE_WEIGHTS), weights=list(SIZE_WEIGHTS.values()),
                                 k=len(names))
        results: dict[str, tuple[int, str, float]] = {}
        injected = 0
        try:
            proxy.reset_stats()
            proxy.set_scenario(row.faults)
            writers = [threading.Thread(target=self._copy, args=(sources[size].path,
                                                                 mount.path / name, name,
                                                                 results))
                       for name, size in zip(names, picks, strict=True)]
            for writer in writers:
                writer.start()
            for writer in writers:
                writer.join()
            injected = len(proxy.log)
            keys = frozenset(mount.key(name) for name in names)
            for name, size in zip(names, picks, strict=True):
                key = mount.key(name)
                rc, stderr, _ = results.get(name, (-1, "the writer crashed", 0.0))
                verdict = judge(s3, mount.prefix, key, sources[size], rc, stderr,
                                others=keys - {key})
                self.tally.add(row.name, verdict.outcome)
                self.check(row, key, verdict, mount)
            proxy.set_scenario(None)
        finally:
            status = mount.unmount()
        if status != 0:
            self.violations.append(f"{row.name}: the mount exited {status} "
                                   f"(log {mount.log_path})")
        print(f"round {self.rounds}: {row.name}: {self.args.writers} writers, {injected} "
              f"faults injected, {time.monotonic() - began:.1f} s", flush=True)

    @staticmethod
    def _copy(source: Path, target: Path, name: str,
              results: dict[str, tuple[int, str, float]]) -> None:
        results[name] = run_cp(source, target)

    def check(self, row: Row, key: str, verdict: Verdict, mount: Mount) -> None:
        """Transient faults must land; permanent ones may also fail loudly; nothing else."""
        allowed = {LANDED} if row.expect == LANDED else {LANDED, FAILED, UNCONFIRMED}
        if row.solo:
            allowed.add(FAILED)
        if verdict.outcome in allowed:
            return
        name = key.rsplit("/", 1)[-1]
        said = [line for line in mount.log().splitlines()
                if f"{name}:" in line or f"/{name} " in line]
        line = f"{row.name}: {key}: {verdict.outcome}: {verdict.detail}\n" + "\n".join(
            f"      {entry}" for entry in said[-12:])
        if row.bug is not None and verdict.outcome != SILENT_BAD:
            self.known.append(line)
        else:
            self.violations.append(line)

    def report(self) -> int:
        print(f"\nsoak: {self.rounds} rounds, {self.args.writers} writers each, seed "
              f"{self.args.seed}")
        print(self.tally.table())
        if self.known:
            print(f"\n{len(self.known)} outcomes of known bugs (see Row.bug):")
            print("\n".join(f"  {line}" for line in self.known))
        if self.violations:
            print(f"\n{len(self.violations)} VIOLATIONS:")
            print("\n".join(f"  {line}" for line in self.violations))
        silent_bad = self.tally.total(SILENT_BAD)
        return 1 if silent_bad or self.violations else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.seed is None:
        args.seed = int(time.time())
    if args.work_dir:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        return Soak(args, work).run()
    work = Path(tempfile.mkdtemp(prefix="chute-soak-"))
    try:
        return Soak(args, work).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
