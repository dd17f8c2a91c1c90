"""The pure parts of ``bench.py --link``'s small files (scripts/benchlib/links.py, link.py):
the directories ``cp -r`` makes for the tree, and the floors the table prints. No store, no
mount."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from benchlib.link import LinkModel  # noqa: E402
from benchlib.links import make_small_tree, small_floor_lines, tree_dirs  # noqa: E402


def test_the_tree_has_its_own_directory_and_ten_below(tmp_path: Path) -> None:
    expected = make_small_tree(tmp_path / "tree", 200, seed=1)
    assert len(expected) == 200
    assert tree_dirs(expected) == 11  # tree/ and d00/ .. d09/
    assert tree_dirs({"a/b/f": (1, ""), "a/g": (1, ""), "h": (1, "")}) == 3
    assert tree_dirs({}) == 0


def test_the_floor_with_a_round_trip_per_directory() -> None:
    model = LinkModel(0.1, 50e6 / 8)
    nbytes = 4 << 20
    floor = model.floor_seconds(200, nbytes)
    assert floor == pytest.approx(200 * 0.1 + nbytes / (50e6 / 8))
    assert model.floor_seconds(200, nbytes, 11) == pytest.approx(floor + 11 * 0.1)
    assert LinkModel(0.04).floor_seconds(200, nbytes, 11) == pytest.approx(211 * 0.04)


def test_the_small_files_table_head() -> None:
    model = LinkModel(0.1, 50e6 / 8)
    nbytes = 4 << 20
    head, floor, dirs = small_floor_lines(model, 200, nbytes, 11)
    assert "small files 200 in 11 dirs (4 MiB)" in head and "x floor" in head
    assert floor.split()[:7] == ["floor", "(1", "RTT", "each)", "9.7", "1.00", "20.7"]
    assert dirs.split()[:7] == ["(+1", "RTT", "per", "dir)", "9.2", "0.95", "21.8"]
    assert "information" in dirs
