"""Smoke test of scripts/bench.py: the short mode runs end to end and prints its report.

It starts its own SeaweedFS and a real chute mount, so it needs /dev/fuse. Nothing here
asserts a speed: shared machines are noisy, and the numbers are for people to read.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chute.fs.mountinfo import mounts
from chute.uploader.read_budget import DEFAULT_READ_BUDGET
from tests.support.mounts import requires_fuse

pytestmark = [pytest.mark.e2e, requires_fuse]

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
NUMBER = r"\d+(?:\.\d+)?"


def run_bench(*args: str, work: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run(
        [sys.executable, str(BENCH), "--short", "--work-dir", str(work), *args],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )


def test_short_mode_prints_table_and_ratios(tmp_path: Path) -> None:
    result = run_bench(work=tmp_path)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    out = result.stdout

    for header in ("machine", "versions", "work dir", "verify"):
        assert re.search(rf"^{header}\s", out, re.M), out
    assert re.search(r"^contender\s+MB/s", out, re.M), out
    for row in ("ceiling", "chute"):
        # name, median MB/s, min-max, CPU s/GiB, peak RSS, disk writes, store CPU, verified
        assert re.search(
            rf"^{row}\s+{NUMBER}\s+{NUMBER}-{NUMBER}\s+{NUMBER}\s+{NUMBER} \w?i?B\s+"
            rf"{NUMBER} \w?i?B\s+{NUMBER}\s+1/1 etag$", out, re.M), out
    assert re.search(rf"^chute/ceiling\s+{NUMBER}", out, re.M), out
    # chute never stages data on local disk.
    chute_row = next(line for line in out.splitlines() if line.startswith("chute "))
    assert " 0 B " in chute_row, chute_row
    # The run cleaned up after itself: nothing mounted, the work subdirectory removed.
    assert not [m for m in mounts() if m.mountpoint.startswith(str(tmp_path))]
    assert list(tmp_path.iterdir()) == []


def test_short_mode_json(tmp_path: Path) -> None:
    result = run_bench("--json", work=tmp_path)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    report = json.loads(result.stdout)
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == {"ceiling", "chute"}
    for row in rows.values():
        assert row["verified"] == len(row["runs"]) == 1
        assert row["mbps_median"] > 0
    assert "chute/ceiling" in report["ratios"]
    assert report["environment"]["nproc"] >= 1


def test_small_files_with_floors_json(tmp_path: Path) -> None:
    """The small-file mode with its two floors (curl alone, FUSE alone) and the bound they
    give, so the README's reading of the small-file numbers cannot rot."""
    result = run_bench("--small-files", "--floors", "--files", "40", "--json", work=tmp_path)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    report = json.loads(result.stdout)
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == {"chute", "store-floor", "fuse-floor"}
    for row in rows.values():
        assert row["verified"] == len(row["runs"]) == 1, row
        assert row["files_per_s_median"] > 0
    assert rows["store-floor"]["verified_how"] == "etag"
    assert rows["fuse-floor"]["verified_how"] == "sizes via mount"
    floors = report["floors"]
    assert floors["bound_files_per_s"] > 0
    assert floors["chute/bound"] > 0
    assert "chute/store-floor" not in report["ratios"]  # references, not peers


def test_reads_mode_json(tmp_path: Path) -> None:
    """--reads (issue 15): a read through chute --allow-read beside the direct download
    (and rclone mount where installed), every one of them getting the whole object."""
    result = run_bench("--reads", "--size", "32MiB", "--json", work=tmp_path)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    report = json.loads(result.stdout)
    assert {"direct", "chute", "chute-direct"} <= set(report["rows"])
    for row in report["rows"].values():
        assert row["bytes"] == report["size"] == 32 << 20
        assert row["seconds"] > 0 and row["peak_rss"] > 0
    assert report["read_budget"] == DEFAULT_READ_BUDGET
    assert not [m for m in mounts() if m.mountpoint.startswith(str(tmp_path))]
    assert list(tmp_path.iterdir()) == []


def test_link_mode_json(tmp_path: Path) -> None:
    """--link (issue 19): every contender through the same modelled link; the link caps the
    big file's rate and the sequential read's, no contender beats one round trip per small
    file, and the requests that crossed it are counted by operation."""
    rtt, mbit, files = 0.02, 100, 10
    result = run_bench("--link", "--link-points", f"{rtt * 1000:g}ms/{mbit}Mbit",
                       "--size", "32MiB", "--files", str(files), "--json", work=tmp_path)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    report = json.loads(result.stdout)
    [point] = report["points"]
    assert point["rtt_s"] == rtt and point["rate_bytes_per_s"] == mbit * 1e6 / 8
    assert {"direct", "chute"} <= set(point["big"])
    assert {"curl", "chute"} <= set(point["small"])
    for name, cell in point["big"].items():
        assert cell["verified"], name
        assert cell["mbps"] <= mbit / 8 * 1.05, (name, cell["mbps"])
        assert cell["requests"]["UploadPart"] == 2, (name, cell["requests"])
    for name, cell in point["small"].items():
        assert cell["verified"], name
        assert cell["seconds"] >= files * rtt * 0.95, (name, cell["seconds"])
        assert cell["requests"]["PutObject"] >= files, (name, cell["requests"])
    assert point["small"]["curl"]["requests"] == {"PutObject": files, "connections": 1}
    # The sequential read of one 32 MiB object through the same link: every reader got it
    # whole, none beat the link, the direct download in 8 MiB GETs.
    read = point["read"]
    assert read["size"] == 32 << 20 and {"direct", "chute"} <= set(read["rows"])
    for name, row in read["rows"].items():
        assert row["complete"] and row["mbps"] <= mbit / 8 * 1.05, (name, row)
    assert read["rows"]["direct"]["requests"]["GetObject"] == 4, read["rows"]["direct"]
    assert read["rows"]["chute"]["requests"]["GetObject"] >= 4, read["rows"]["chute"]
    assert not [m for m in mounts() if m.mountpoint.startswith(str(tmp_path))]
    assert list(tmp_path.iterdir()) == []


def test_writers_mode_json(tmp_path: Path) -> None:
    """--writers (issue 19): parallel writers into one mount (xargs -P cp, N big cp, tar and
    rsync at once), every object verified."""
    result = run_bench("--writers", "--writer-counts", "2", "--size", "32MiB", "--files", "20",
                       "--json", work=tmp_path)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    report = json.loads(result.stdout)
    chute = {(c["case"], c["writers"]): c for c in report["cases"] if c["contender"] == "chute"}
    assert set(chute) == {("small", 2), ("big", 2), ("mixed", 2)}
    assert chute["small", 2]["files"] == 20 and chute["mixed", 2]["files"] == 40
    assert chute["big", 2]["bytes"] == 2 * 32 << 20
    assert all(c["verified"] and c["files_per_s"] > 0 for c in report["cases"])
    assert not [m for m in mounts() if m.mountpoint.startswith(str(tmp_path))]
    assert list(tmp_path.iterdir()) == []
