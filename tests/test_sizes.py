"""Unit tests for size parsing/formatting, S3's part limits and the config checks."""

from __future__ import annotations

import pytest

from chute.uploader.config import (
    DEFAULT_RING_SIZE,
    DEFAULT_SLICE_SIZE,
    UploaderConfig,
)
from chute.uploader.errors import ChuteError, ConfigError
from chute.uploader.sizes import (
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    GiB,
    KiB,
    MiB,
    TiB,
    check_slice_size,
    format_size,
    max_object_size,
    parse_size,
)

# -- parse_size -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8MiB", 8 * MiB),
        ("1GiB", GiB),
        ("16M", 16 * MiB),
        ("10MB", 10_000_000),
        ("512k", 512 * KiB),
        ("512K", 512 * KiB),
        ("512KiB", 512 * KiB),
        ("512kb", 512_000),
        ("2g", 2 * GiB),
        ("3GB", 3_000_000_000),
        ("1T", TiB),
        ("1TiB", TiB),
        ("2TB", 2 * 1000**4),
        ("16mib", 16 * MiB),
        ("16 MiB", 16 * MiB),
        ("  16MiB  ", 16 * MiB),
    ],
)
def test_parse_size_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("1", 1), ("4096", 4096), ("5242880", 5 * MiB), ("100b", 100), ("7B", 7)],
)
def test_parse_size_plain_bytes(text: str, expected: int) -> None:
    result = parse_size(text)
    assert result == expected
    assert isinstance(result, int)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.5GiB", 3 * GiB // 2),
        ("0.5MiB", 512 * KiB),
        ("2.5M", 5 * MiB // 2),
        ("0.5k", 512),
        ("1.5KB", 1500),
        ("2.25GB", 2_250_000_000),
        ("1.0MiB", MiB),
    ],
)
def test_parse_size_decimals(text: str, expected: int) -> None:
    result = parse_size(text)
    assert result == expected
    assert isinstance(result, int)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8.2GB", 8_200_000_000), ("2.01MB", 2_010_000), ("4.1MB", 4_100_000)],
)
def test_parse_size_exact_decimal_values(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "MiB", "abc", "-1", "-5MiB", "1.5.2M", "1,5M", "16 XB", "16MiBs", "16 M iB",
     "0x10", "1e6", ".5M", "5.M", "ten MiB", "16/2M"],
)
def test_parse_size_rejects_bad_input(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert repr(text) in str(info.value)


# -- format_size ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (KiB, "1 KiB"),
        (512 * KiB, "512 KiB"),
        (MiB, "1 MiB"),
        (16 * MiB, "16 MiB"),
        (256 * MiB, "256 MiB"),
        (3 * GiB // 2, "1.5 GiB"),
        (5 * GiB, "5 GiB"),
        (GiB + GiB // 10 * 3, "1.3 GiB"),
        (2 * TiB, "2 TiB"),
        (1536 * TiB, "1536 TiB"),
        (10.5, "10 B"),
    ],
)
def test_format_size(n: float, expected: str) -> None:
    assert format_size(n) == expected


@pytest.mark.parametrize("text", ["8MiB", "1GiB", "512KiB", "5GiB", "3TiB", "100 B"])
def test_format_then_parse_round_trips_whole_units(text: str) -> None:
    n = parse_size(text)
    assert parse_size(format_size(n).replace(" ", "")) == n


# -- S3 part limits -------------------------------------------------------------------------


def test_part_limit_constants() -> None:
    assert MIN_PART_SIZE // MiB == 5
    assert MAX_PART_SIZE // GiB == 5
    assert MIN_PART_SIZE % MiB == MAX_PART_SIZE % GiB == 0
    assert max_object_size(1) == MAX_PARTS
    assert MAX_PARTS // 10_000 == 1


@pytest.mark.parametrize("size", [5 * MiB, 5 * MiB + 1, 16 * MiB, GiB, 5 * GiB - 1, 5 * GiB])
def test_check_slice_size_accepts_inclusive_range(size: int) -> None:
    assert check_slice_size(size) is None


@pytest.mark.parametrize("size", [0, 1, MiB, 5 * MiB - 1, 5 * GiB + 1, 6 * GiB, -5 * MiB])
def test_check_slice_size_rejects_outside_range(size: int) -> None:
    with pytest.raises(ValueError) as info:
        check_slice_size(size)
    message = str(info.value)
    assert "--slice-size" in message
    assert "5 MiB" in message
    assert "5 GiB" in message


@pytest.mark.parametrize("slice_size", [5 * MiB, 8 * MiB, 16 * MiB, GiB, 5 * GiB])
def test_max_object_size_is_ten_thousand_slices(slice_size: int) -> None:
    assert max_object_size(slice_size) == 10_000 * slice_size


def test_max_object_size_examples() -> None:
    # 16 MiB slices cap a file at ~156 GiB; 5 GiB slices at S3's ~48.8 TiB.
    assert max_object_size(16 * MiB) == 160_000 * MiB
    assert format_size(max_object_size(16 * MiB)) == "156.2 GiB"
    assert max_object_size(5 * GiB) == 50_000 * GiB


# -- UploaderConfig.validate ----------------------------------------------------------------


def test_default_config_is_valid() -> None:
    config = UploaderConfig()
    config.validate()
    assert config.slice_size == DEFAULT_SLICE_SIZE
    assert config.ring_size == DEFAULT_RING_SIZE
    assert config.slot_count == DEFAULT_RING_SIZE // DEFAULT_SLICE_SIZE == 16


@pytest.mark.parametrize("ring_size", [0, 16 * MiB, 32 * MiB - 1])
def test_validate_rejects_ring_smaller_than_two_slices(ring_size: int) -> None:
    config = UploaderConfig(slice_size=16 * MiB, ring_size=ring_size)
    assert config.slot_count < 2
    with pytest.raises(ConfigError, match="--ring-size") as info:
        config.validate()
    assert "two slices" in str(info.value)


def test_validate_accepts_exactly_two_slices() -> None:
    config = UploaderConfig(slice_size=16 * MiB, ring_size=32 * MiB)
    config.validate()
    assert config.slot_count == 2


def test_slot_count_rounds_down() -> None:
    config = UploaderConfig(slice_size=16 * MiB, ring_size=100 * MiB)
    config.validate()
    assert config.slot_count == 6


@pytest.mark.parametrize("slice_size", [MiB, 5 * MiB - 1, 5 * GiB + 1])
def test_validate_rejects_slice_outside_s3_limits(slice_size: int) -> None:
    config = UploaderConfig(slice_size=slice_size, ring_size=64 * GiB)
    with pytest.raises(ConfigError, match="--slice-size") as info:
        config.validate()
    # A ConfigError (reported before mounting), not the bare ValueError from sizes.py.
    assert isinstance(info.value, ChuteError)
    assert info.value.__cause__ is None


def test_validate_accepts_minimum_slice() -> None:
    UploaderConfig(slice_size=5 * MiB, ring_size=10 * MiB).validate()


@pytest.mark.parametrize("concurrency", [0, -1])
def test_validate_rejects_zero_upload_concurrency(concurrency: int) -> None:
    with pytest.raises(ConfigError, match="--upload-concurrency"):
        UploaderConfig(upload_concurrency=concurrency).validate()


def test_validate_accepts_concurrency_one() -> None:
    UploaderConfig(upload_concurrency=1).validate()


def test_validate_rejects_unknown_checksum_and_non_positive_timeouts() -> None:
    with pytest.raises(ConfigError, match="--checksum"):
        UploaderConfig(checksum="sha1").validate()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--stall-timeout"):
        UploaderConfig(stall_timeout=0).validate()
    with pytest.raises(ConfigError, match="--retry-budget"):
        UploaderConfig(retry_budget=-1).validate()
