"""The pure parts of ``bench.py --link``'s sequential reads (scripts/benchlib/link_reads.py):
the read's size per link point, the requests column, a table row, the ratios and the
targets line. No store, no mount."""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from benchlib.link import LinkModel  # noqa: E402
from benchlib.link_reads import per_file, ratios, read_row, target_line  # noqa: E402
from benchlib.links import big_size  # noqa: E402
from benchlib.reads import READ_PART  # noqa: E402

MiB = 1 << 20


def test_read_size_is_what_the_link_carries_in_whole_gets_at_least_four() -> None:
    # 50 Mbit/s carries 125 MB in 20 s: 14 whole 8 MiB GETs.
    assert big_size(LinkModel(0.1, 50e6 / 8), 256 * MiB, READ_PART) == 112 * MiB
    assert big_size(LinkModel(0.04, 200e6 / 8), 256 * MiB, READ_PART) == 256 * MiB
    assert big_size(LinkModel(0.1, None), 256 * MiB, READ_PART) == 256 * MiB
    assert big_size(LinkModel(0.1, 1e6 / 8), 256 * MiB, READ_PART) == 4 * READ_PART


def test_requests_most_frequent_first_then_connections() -> None:
    requests = {"HeadObject": 1, "GetObject": 36, "ListObjectsV2": 1, "connections": 5}
    assert per_file(requests, 1) == "GetObject 36, HeadObject 1, ListObjectsV2 1; 5 conn"
    assert per_file({"PutObject": 21}, 20) == "PutObject 1.05; 0 conn"


def test_read_row_columns() -> None:
    size = 100 * 10**6
    row = {"seconds": 20.0, "bytes": size, "cpu": 0.42, "requests": {"GetObject": 12}}
    line = read_row("chute", row, size, link_mbps=6.25)
    assert line.split() == ["chute", "5.0", "0.80", "20.0", "0.4", "s", "GetObject", "12;",
                            "0", "conn"]
    assert "(0.4 s)" in read_row("direct", row, size, None)  # the client's CPU
    assert read_row("direct", row, size, None).split()[2] == "-"  # no cap: no x link
    short = read_row("rclone", {**row, "bytes": 5}, size, None)
    assert short.endswith("SHORT: 5 bytes")


def test_ratios_and_targets() -> None:
    read = {"size": 1000, "rows": {"direct": {"seconds": 1.0}, "chute": {"seconds": 1.25},
                                   "rclone": {"seconds": 2.0}}}
    found = ratios(read)
    assert found == {"chute/direct": 0.8, "chute/rclone": 1.6}
    assert target_line(found) == ("chute / direct 0.80 (>= 0.85: NOT met); "
                                  "chute / rclone 1.60 (>= 1.3: met)")
    del read["rows"]["rclone"]
    assert ratios(read) == {"chute/direct": 0.8}
