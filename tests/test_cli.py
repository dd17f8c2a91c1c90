"""`chute mount` refuses bad requests before mounting, and the embedded default works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from chute.fs.cli import mount_policy, parse_args
from chute.fs.options import parse_remote
from chute.fs.policy import MountPolicy
from chute.uploader.errors import ConfigError
from tests.support.mounts import is_mounted, requires_fuse
from tests.support.store import BUCKET


def chute(*args: str, env: dict[str, str] | None = None, timeout: float = 60
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chute.fs.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_parse_remote() -> None:
    assert parse_remote("s3://bkt") == ("bkt", "")
    assert parse_remote("s3://bkt/a/b/") == ("bkt", "a/b/")
    with pytest.raises(ConfigError):
        parse_remote("bkt/a")
    with pytest.raises(ConfigError):
        parse_remote("s3:///a")


def test_policies_come_from_flags_and_the_config_file(tmp_path: Path) -> None:
    """--no-overwrite / --no-delete are the file system's policy, not the uploader's."""
    assert mount_policy(parse_args(["mount", str(tmp_path)])) == MountPolicy()
    assert mount_policy(parse_args(["mount", str(tmp_path), "--no-overwrite"])) == \
        MountPolicy(no_overwrite=True)
    config = tmp_path / "chute.toml"
    config.write_text("no-delete = true\n")
    assert mount_policy(parse_args(["mount", str(tmp_path), "--config", str(config)])) == \
        MountPolicy(no_delete=True)


def _env(store, **overrides: str) -> dict[str, str]:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": store.access_key,
           "AWS_SECRET_ACCESS_KEY": store.secret_key, "AWS_REGION": store.region}
    env.pop("AWS_PROFILE", None)
    env.update(overrides)
    return env


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bad-credentials", "rejected the credentials"),
        ("missing-bucket", "does not exist"),
        ("unreachable", "cannot reach the store"),
        ("not-empty", "is not empty"),
        ("not-a-dir", "is not an existing directory"),
        ("bad-size", "--slice-size"),
    ],
)
@pytest.mark.e2e
def test_mount_refuses_before_mounting(store, tmp_path: Path, case: str, expected: str) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = _env(store)
    remote = f"s3://{BUCKET}/x"
    endpoint = store.endpoint_url
    extra: list[str] = []
    if case == "bad-credentials":
        env["AWS_SECRET_ACCESS_KEY"] = "wrong"
    elif case == "missing-bucket":
        remote = "s3://no-such-bucket-here"
    elif case == "unreachable":
        endpoint = "http://127.0.0.1:9"
    elif case == "not-empty":
        (mountpoint / "file").write_text("x")
    elif case == "not-a-dir":
        mountpoint = tmp_path / "missing"
    elif case == "bad-size":
        extra = ["--slice-size", "1MiB"]
    result = chute("mount", str(mountpoint), remote, "--endpoint-url", endpoint, *extra,
                   env=env)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not is_mounted(mountpoint)


@pytest.mark.e2e
@requires_fuse
def test_embedded_default_mount_copy_and_restart(tmp_path: Path) -> None:
    """`chute mount DIR` alone: starts SeaweedFS, the copy lands, a second mount reuses data."""
    data_dir = tmp_path / "data"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}

    def run_once(name: str, payload: bytes) -> str:
        log = tmp_path / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "chute.fs.cli", "mount", str(mountpoint),
                 "--data-dir", str(data_dir)], stdout=out, stderr=subprocess.STDOUT, env=env,
            )
        try:
            deadline = time.monotonic() + 90
            while not is_mounted(mountpoint):
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            (mountpoint / name).write_bytes(payload)
            listing = sorted(os.listdir(mountpoint))
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 0, log.read_text()
        assert not is_mounted(mountpoint)
        text = log.read_text()
        assert "embedded store at http://127.0.0.1:" in text
        assert "credentials in" in text
        return ",".join(listing)

    assert run_once("first", b"one") == "first"
    assert run_once("second", b"two") == "first,second"
    from chute.fs.embedded_store import EmbeddedStore

    with EmbeddedStore(data_dir / "seaweedfs" if (data_dir / "seaweedfs").exists()
                       else data_dir) as store:
        s3 = boto3.client("s3", endpoint_url=store.endpoint_url, region_name=store.region,
                          aws_access_key_id=store.access_key,
                          aws_secret_access_key=store.secret_key)
        assert s3.get_object(Bucket=store.bucket, Key="first")["Body"].read() == b"one"
        assert s3.get_object(Bucket=store.bucket, Key="second")["Body"].read() == b"two"
    # weed is gone with the mount
    assert subprocess.run(["pgrep", "-f", f"weed mini.*{data_dir}"],
                          capture_output=True).returncode != 0
