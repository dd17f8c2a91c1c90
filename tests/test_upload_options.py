"""Upload options at the mount: flags, config file and fstab, the object-lock preflight, and
the --bwlimit token bucket (virtual clock)."""

from __future__ import annotations

import pytest
import trio

from chute.fs import cli, upload_options
from chute.fs.mount_helper import chute_arguments
from chute.uploader.bandwidth import Bandwidth, parse_bwlimit, parse_rate
from chute.uploader.errors import ConfigError
from chute.uploader.multipart import MultipartSession
from chute.uploader.object_options import ObjectOptions
from chute.uploader.retry import RetryPolicy
from tests.support.memory_s3 import MemoryS3, memory_client

MiB = 1 << 20


def test_flags_config_file_and_fstab(tmp_path) -> None:
    args = cli.parse_args(["mount", "/mnt", "--tag", "a=1", "--tag", "b=2",
                           "--storage-class", "GLACIER_IR", "--bwlimit", "20MiB/s"])
    assert (args.tag, args.storage_class, args.bwlimit.entries) == (
        ["a=1", "b=2"], "GLACIER_IR", ((0, 20.0 * MiB),))
    config = tmp_path / "chute.toml"
    config.write_text('tag = ["team=ops", "keep=1y"]\nsse = "AES256"\n'
                      'object-lock-mode = "GOVERNANCE"\nobject_lock_retain = "30d"\n'
                      'bwlimit = "08:00,5M 19:00,off"\nno_content_type = true\n')
    args = cli.parse_args(["mount", "/mnt", "--config", str(config)])
    assert (args.tag, args.sse, args.object_lock_mode, args.no_content_type) == (
        ["team=ops", "keep=1y"], "AES256", "GOVERNANCE", True)
    options = upload_options.object_options(args)
    assert options.tags == (("team", "ops"), ("keep", "1y"))
    policy = cli.mount_policy(args)
    assert (policy.no_overwrite, policy.no_delete) == (True, True)  # implied by object lock
    args = cli.parse_args(["mount", "/mnt", "--config", str(config), "--tag", "x=y"])
    assert args.tag == ["x=y"]  # a flag replaces the file's list
    argv = chute_arguments("s3://b/p", "/mnt", ["tag=a=1,tag=b=2,legal_hold,acl=private"])
    assert argv[argv.index("--tag"):][:4] == ["--tag", "a=1", "--tag", "b=2"]
    assert "--legal-hold" in argv and argv[argv.index("--acl") + 1] == "private"


def test_bad_bwlimit_is_one_sentence() -> None:
    for text, sentence in (("10", "a unit is needed"), ("0M", "must be positive"),
                           ("08:00,5M 25:00,off", "no such time of day"),
                           ("8h,5M", "is not HH:MM,RATE")):
        with pytest.raises(ValueError, match=sentence):
            parse_bwlimit(text)
    assert parse_rate("off") is None and parse_rate("5M") == 5 * MiB
    assert parse_rate("1.5MB/s") == 1.5e6


def test_schedule_rates_by_time_of_day() -> None:
    schedule = parse_bwlimit("19:00,off 08:00,5M 12:30,1MiB/s")
    rates = [schedule.rate_at(m) for m in (0, 8 * 60, 12 * 60 + 29, 12 * 60 + 30, 19 * 60)]
    assert rates == [None, 5 * MiB, 5 * MiB, 1 * MiB, None]


async def test_token_bucket_holds_the_rate_over_all_uploads(autojump_clock) -> None:
    store = MemoryS3(min_part_size=1)
    client = memory_client(store, policy=RetryPolicy(budget=30))
    client.bandwidth = bandwidth = Bandwidth(parse_bwlimit("4MiB/s"))
    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(MultipartSession(client, f"f{n}").put, b"x" * 2 * MiB, {}, "0")
    elapsed = trio.current_time() - began
    assert bandwidth.sent == 8 * MiB
    assert 1.74 <= elapsed <= 1.76  # 8 MiB at 4 MiB/s, less the quarter-second burst
    began = trio.current_time()
    session = MultipartSession(client, "g")
    await session.create({})
    await session.upload_part(1, b"y" * 4 * MiB)
    await session.complete(4 * MiB)
    assert 0.9 <= trio.current_time() - began <= 1.05
    assert store.body("g") == b"y" * 4 * MiB
    bandwidth.minute_of_day = lambda: 0  # a schedule that is "off" now does not wait
    bandwidth.schedule = parse_bwlimit("00:00,off 12:00,1M")
    began = trio.current_time()
    await MultipartSession(client, "h").put(b"z" * 4 * MiB, {}, "0")
    assert trio.current_time() - began < 0.01
    await client.aclose()


async def test_object_lock_preflight(autojump_clock) -> None:
    store = MemoryS3()
    client = memory_client(store, policy=RetryPolicy(budget=5))
    options = ObjectOptions(lock_mode="COMPLIANCE", lock_retain_seconds=86400)
    await upload_options.check_object_lock(client, options)
    probe = next(r for r in store.requests if r.operation == "PutObject")
    assert probe.key.startswith(".chute-uploads/lock-probe-")
    assert probe.headers["x-amz-object-lock-mode"] == "COMPLIANCE"
    assert "x-amz-object-lock-retain-until-date" in probe.headers
    assert store.keys(".chute-uploads") == []  # deleted again
    store.fail_next("PutObject", status=400, code="InvalidRequest",
                    message="Bucket is missing Object Lock Configuration")
    with pytest.raises(ConfigError, match="does not have object lock enabled"):
        await upload_options.check_object_lock(client, options)
    store.fail_next("PutObject", status=403, code="AccessDenied")
    with pytest.raises(ConfigError, match="s3:PutObjectRetention"):
        await upload_options.check_object_lock(client, options)
    store.requests.clear()
    await upload_options.check_object_lock(client, ObjectOptions())  # no lock: no probe
    assert store.requests == []
    await client.aclose()


def test_the_mount_logs_its_upload_options_without_the_key() -> None:
    options = ObjectOptions(storage_class="GLACIER_IR", sse_c_key=b"k" * 32,
                            lock_mode="GOVERNANCE", lock_retain_seconds=30 * 86400 + 3600,
                            tags=(("a", "1"),), content_type=False)
    line = upload_options.describe(options, parse_bwlimit("5M"))
    assert line == ("storage class GLACIER_IR; object lock GOVERNANCE; SSE-C; retained 30 d 1 h;"
                    " tags a=1; no Content-Type; bwlimit 5 MiB/s")
    assert "k" * 32 not in repr(options)
    assert upload_options.describe(ObjectOptions(), None) == "none"
