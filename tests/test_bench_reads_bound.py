"""``bench.py --reads``' CPU-bound limit (scripts/benchlib/reads.py ``cpu_bound``): the ratio a
mount's read can reach against the direct download when the cores, shared with the store,
are what bounds both runs. No store, no mount."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from benchlib.reads import bound_line, cpu_bound, machine_cpu  # noqa: E402

GiB = 1 << 30


def row(seconds: float, cpu: float, store: float, reader: float, machine: float) -> dict:
    return {"seconds": seconds, "cpu": cpu, "store_cpu": store, "reader_cpu": reader,
            "machine_cpu": machine, "bytes": 4 * GiB, "peak_rss": 1}


def test_the_limit_is_the_direct_runs_cpu_per_gib_over_the_mounts() -> None:
    """4 GiB: direct costs store 2.4 + client 0.45 s/GiB, chute store 2.4 + mount 0.85 +
    dd 0.3: on the same cores chute can reach 2.85 / 3.55 of the direct download."""
    direct = row(5.0, 0.45 * 4, 2.4 * 4, 0.0, 9.8)
    chute = row(6.5, 0.85 * 4, 2.4 * 4, 0.3 * 4, 12.6)
    bound = cpu_bound(direct, chute, 4 * GiB, cores=2)
    assert bound["direct_s_per_gib"] == pytest.approx(2.85)
    assert bound["s_per_gib"] == pytest.approx(3.55)
    assert bound["limit"] == pytest.approx(2.85 / 3.55)
    assert bound["ratio"] == pytest.approx(5.0 / 6.5)
    assert bound["busy_direct"] == pytest.approx(9.8 / 10.0)
    assert bound["busy"] == pytest.approx(12.6 / 13.0)
    line = bound_line("chute", direct, chute, bound, 4 * GiB)
    assert line.startswith("chute / direct 0.77 beside its CPU-bound limit 0.80: ")
    assert "direct 2.85 s/GiB (store 2.40 + client 0.45)" in line
    assert "chute 3.55 (store 2.40 + mount 0.85 + dd 0.30)" in line
    assert line.endswith("cores busy: direct 98%, chute 97%")


def test_a_run_without_a_reader_or_any_cpu() -> None:
    """A row without dd's CPU counts none; a run that cost nothing has no limit."""
    direct = row(1.0, 1.0, 1.0, 0.0, 2.0)
    del direct["reader_cpu"]
    free = row(1.0, 0.0, 0.0, 0.0, 0.0)
    assert cpu_bound(direct, free, GiB, cores=2)["limit"] == float("inf")


def test_the_machine_cpu_only_grows() -> None:
    first = machine_cpu()
    sum(range(200_000))
    assert machine_cpu() >= first > 0
