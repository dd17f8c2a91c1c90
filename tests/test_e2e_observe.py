"""Seeing what a mount does and running it as a service: metrics, `status --watch`, --config,
--daemon, `mount -t fuse.chute` and fstab, `chute unmount`, `chute verify`.

The end-to-end tests drive real mounts as a user or mount(8) would; the few pure functions
behind them (option translation, config conversion, label cutting) get direct tests first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chute.fs import cli, config_file, metrics, mount_helper, mountinfo
from chute.uploader.errors import ConfigError, StoreError, StoreUnreachable
from chute.uploader.retry import RetryReason
from tests.support.faultproxy import FaultProxy, Kind, slow_down
from tests.support.files import random_file
from tests.support.mounts import is_mounted, requires_fuse
from tests.support.observe import chute, scrape, status, wait_for
from tests.support.store import BUCKET, object_keys, pending_uploads, store_env

MiB = 1 << 20
SMALL_RING = ("--slice-size", "5MiB", "--ring-size", "20MiB")


@contextlib.contextmanager
def open_for_writing(path: Path, first: bytes) -> Iterator[int]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, first)
        yield fd
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


@pytest.fixture
def background_mounts() -> Iterator[list[Path]]:
    """Mountpoints of mounts started in the background; whatever a test leaves is stopped
    (by the mount's own pid, from its status) and detached."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        if not is_mounted(path):
            continue
        with contextlib.suppress(Exception):
            pid = status(path)["pid"]
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda p=path: not is_mounted(p), "the mount to stop", timeout=20)
        if is_mounted(path):
            subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


# -- the pure parts ------------------------------------------------------------------------


def test_retry_reasons_become_bounded_labels() -> None:
    slow_down = StoreError("UploadPart", 503, "SlowDown", "Please reduce your request rate.")
    assert metrics.reason_label(RetryReason.THROTTLED, slow_down) == "HTTP 503 SlowDown"
    expired = StoreError("PutObject", 400, "ExpiredToken", "The token has expired.")
    assert metrics.reason_label(RetryReason.CREDENTIALS, expired) == "credentials"
    refused = StoreUnreachable("PutObject", "connection error (ConnectError: [Errno 111] "
                               "Connection refused)")
    assert metrics.reason_label(RetryReason.CONNECTION_FAILED, refused) == "connection failed"
    assert metrics.reason_label(RetryReason.STALLED) == "stalled"
    labels = [reason.label for reason in RetryReason]
    assert len(set(labels)) == len(labels)  # a fixed few, no error text


def test_metrics_address_and_exposure(caplog: pytest.LogCaptureFixture) -> None:
    assert metrics.parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert metrics.parse_address("[::1]:0") == ("::1", 0)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        metrics.parse_address("9464")
    metrics.check_exposure("localhost", explicit=False)
    metrics.check_exposure("::1", explicit=False)
    with pytest.raises(ConfigError, match="not a loopback address"):
        metrics.check_exposure("0.0.0.0", explicit=False)
    with caplog.at_level(logging.WARNING):
        metrics.check_exposure("0.0.0.0", explicit=True)
    assert "not loopback" in caplog.text


def test_config_file_values_are_converted_like_flags(tmp_path: Path) -> None:
    parser = cli.mount_parser()
    good = tmp_path / "good.toml"
    good.write_text('ring-size = "64MiB"\nslice_size = 8388608\nupload_concurrency = 3\n'
                    'stall_timeout = 5\nallow_other = true\nremote = "s3://b/p"\n')
    assert config_file.load(str(good), parser) == {
        "ring_size": 64 * MiB, "slice_size": 8 * MiB, "upload_concurrency": 3,
        "stall_timeout": 5.0, "allow_other": True, "remote": "s3://b/p",
    }
    for text, message in [
        ('ring_sise = "64MiB"', "unknown option 'ring_sise'"),
        ('ring_size = "lots"', "ring_size in"),
        ("allow_other = 1", "must be true or false"),
        ('checksum = "sha1"', "must be one of crc32c, md5"),
        ("upload_concurrency = 2.5", "whole number"),
        ("ring_size = ", "not valid TOML"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text + "\n")
        with pytest.raises(ConfigError, match=message):
            config_file.load(str(bad), parser)


def test_mount_helper_translates_mount_options() -> None:
    assert mount_helper.chute_arguments(
        "s3://b/p", "/mnt/x",
        ["rw,endpoint_url=http://h:1,ring_size=64MiB,allow_other,_netdev,nofail,"
         "x-systemd.automount,config=/etc/chute/x.toml"],
    ) == ["mount", "--daemon", "/mnt/x", "s3://b/p", "--endpoint-url", "http://h:1",
          "--ring-size", "64MiB", "--allow-other", "--config", "/etc/chute/x.toml"]
    assert mount_helper.chute_arguments("embedded", "/mnt/x", []) == \
        ["mount", "--daemon", "/mnt/x"]
    with pytest.raises(mount_helper.HelperError, match="write-only"):
        mount_helper.chute_arguments("s3://b", "/mnt/x", ["ro"])
    with pytest.raises(mount_helper.HelperError, match="unknown mount option 'bogus'"):
        mount_helper.chute_arguments("s3://b", "/mnt/x", ["bogus=1"])
    assert mount_helper.chute_arguments("s3://b", "/m", ["bogus=1"], sloppy=True) == \
        ["mount", "--daemon", "/m", "s3://b"]


def test_bad_config_is_refused_before_anything(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('ring_sise = "1GiB"\n')
    result = chute("mount", tmp_path, "s3://b", "--config", config)
    assert result.returncode == 2
    assert "unknown option 'ring_sise'" in result.stderr
    config.write_text('metrics_addr = "0.0.0.0:9464"\n')
    result = chute("mount", tmp_path, "s3://b", "--config", config)
    assert result.returncode == 1
    assert "not a loopback address" in result.stderr
    assert "Traceback" not in result.stderr


# -- metrics -------------------------------------------------------------------------------


@pytest.mark.e2e
@requires_fuse
def test_metrics_move_during_an_upload_and_add_up(mount_factory, s3) -> None:
    mount = mount_factory(*SMALL_RING, "--metrics-addr", "127.0.0.1:0")
    url = status(mount.path)["metrics_url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    before = scrape(url)
    assert before[("chute_bytes_written_total", ())] == 0
    assert before[("chute_ring_slots", (("state", "free"),))] == 4
    size = 17 * MiB + 5
    with open_for_writing(mount.path / "growing", os.urandom(size)):
        # Part 2 is sent; the first and the latest full slice are retained (header patches).
        wait_for(lambda: status(mount.path)["files"][0]["bytes_acknowledged"] == 5 * MiB,
                 "one part acknowledged")
        during = scrape(url)
        assert during[("chute_bytes_written_total", ())] == size
        assert during[("chute_bytes_uploaded_total", ())] == 5 * MiB
        assert during[("chute_parts_uploaded_total", ())] == 1
        assert during[("chute_files_open", ())] == 1
        slots = {state: during[("chute_ring_slots", (("state", state),))]
                 for state in ("free", "filling", "retained", "sealed", "uploading")}
        assert slots["filling"] == 1 and slots["retained"] == 2 and sum(slots.values()) == 4
    after = scrape(url)
    assert after[("chute_bytes_uploaded_total", ())] == after[("chute_bytes_written_total", ())]
    assert after[("chute_bytes_uploaded_total", ())] == size
    assert after[("chute_parts_uploaded_total", ())] == 4
    assert after[("chute_files_uploaded_total", ())] == 1
    assert after[("chute_files_open", ())] == 0
    assert after[("chute_upload_failures_total", ())] == 0
    assert after[("chute_ring_slots", (("state", "free"),))] == 4
    assert after[("chute_writer_blocked_seconds_total", ())] >= 0
    # every UploadPart attempt is timed; with no retries, attempts = acknowledged parts
    assert after.get(("chute_retries_total", (("operation", "UploadPart"),
                                              ("reason", "stalled")))) is None
    parts = ("chute_s3_request_duration_seconds_count", (("operation", "UploadPart"),))
    assert after[parts] == after[("chute_s3_requests_total",
                                  (("operation", "UploadPart"), ("status", "200")))] == 4
    assert after[("chute_s3_request_duration_seconds_count",
                  (("operation", "CompleteMultipartUpload"),))] == 1
    assert after[("chute_s3_request_duration_seconds_sum", (("operation", "UploadPart"),))] > 0
    assert s3.head_object(Bucket=BUCKET, Key=mount.key("growing"))["ContentLength"] == size
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(url.replace("/metrics", "/nope"), timeout=10)
    assert missing.value.code == 404


@pytest.mark.e2e
@requires_fuse
def test_metrics_count_retries_by_operation_and_reason(store, mount_factory, s3) -> None:
    with FaultProxy.for_store(store) as proxy:
        mount = mount_factory(*SMALL_RING, "--metrics-addr", "127.0.0.1:0", server=proxy)
        url = status(mount.path)["metrics_url"]
        proxy.set_scenario([slow_down(kind=Kind.UPLOAD_PART, times=2)])
        (mount.path / "f").write_bytes(os.urandom(11 * MiB))
        after = scrape(url)
        assert mount.unmount() == 0
    upload_part = ("operation", "UploadPart")
    # an error answer's label is its status and code (metrics.reason_label), as before
    assert after[("chute_retries_total", (upload_part, ("reason", "HTTP 503 SlowDown")))] == 2
    assert after[("chute_s3_requests_total", (upload_part, ("status", "503")))] == 2
    assert after[("chute_s3_requests_total", (upload_part, ("status", "200")))] == 3
    assert after[("chute_s3_request_duration_seconds_count", (upload_part,))] == 5
    assert after[("chute_upload_failures_total", ())] == 0
    assert s3.head_object(Bucket=BUCKET, Key=mount.key("f"))["ContentLength"] == 11 * MiB


# -- status --watch ------------------------------------------------------------------------


@pytest.mark.e2e
@requires_fuse
def test_status_watch_draws_a_bar_for_an_open_file(mount_factory, tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: scripts/setup.sh installs it (apt-get install tmux)")
    mount = mount_factory(*SMALL_RING)
    server = f"chute-test-{uuid.uuid4().hex[:8]}"  # a private tmux server, started here
    env = {**os.environ, "LANG": "C.UTF-8"}
    env.pop("TMUX", None)
    tmux = ["tmux", "-u", "-L", server]
    with open_for_writing(mount.path / "growing", os.urandom(17 * MiB + 5)):
        wait_for(lambda: status(mount.path)["files"][0]["bytes_acknowledged"] == 5 * MiB,
                 "one part acknowledged")
        subprocess.run([*tmux, "new-session", "-d", "-x", "160", "-y", "30",
                        f"{sys.executable} -m chute.fs.cli status {mount.path} --watch "
                        "--interval 0.3"], check=True, env=env, cwd=tmp_path)
        try:
            def screen() -> str:
                return subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True,
                                      text=True, env=env).stdout

            def bar_line() -> str | None:
                return next((line for line in screen().splitlines()
                             if "growing" in line and "━" in line), None)

            line = wait_for(bar_line, "a progress bar line for the file", timeout=15)
            text = screen()
        finally:
            subprocess.run([*tmux, "kill-server"], capture_output=True, env=env)
    assert "29%" in line and "open" in line  # 5 MiB of 17 MiB + 5 acknowledged
    assert "received 17.0 MiB · acknowledged 5 MiB · 0 parts in flight · " in text
    assert "MB/s" in text and "elapsed · 0 retries" in text
    assert "3/4 slots of 5 MiB in use: filling 1, retained 2" in text
    assert "blocked 0.0 s" in text
    assert "no ETA" in text


# -- --config ------------------------------------------------------------------------------


@pytest.mark.e2e
@requires_fuse
def test_config_file_takes_effect_and_flags_override_it(
        mount_factory, s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also: a foreground mount tells systemd (Type=notify) when it is ready and stopping."""
    config = tmp_path / "chute.toml"
    config.write_text('slice-size = "5MiB"\nring_size = "20MiB"\nupload_concurrency = 3\n'
                      'checksum = "md5"\n')
    notify_name = f"chute-test-notify-{uuid.uuid4().hex[:8]}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind("\0" + notify_name)  # abstract, as systemd's own socket may be
        notify.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + notify_name)
        mount = mount_factory("--config", str(config), "--ring-size", "40MiB")
        assert notify.recv(100) == b"READY=1"
        ring = status(mount.path)["ring"]
        assert ring["slice_size"] == 5 * MiB  # from the file
        assert ring["slots"] == 8  # --ring-size 40MiB beat the file's 20MiB
        assert "3 uploads in flight" in mount.log()  # from the file
        (mount.path / "f").write_bytes(os.urandom(6 * MiB))
        assert s3.head_object(Bucket=BUCKET, Key=mount.key("f"))["ContentLength"] == 6 * MiB
        assert mount.unmount() == 0
        assert notify.recv(100) == b"STOPPING=1"


# -- --daemon, mount(8), fstab, unmount ----------------------------------------------------


def daemon_args(store, path: Path, prefix: str, *extra: str) -> list[str]:
    return ["mount", "--daemon", str(path), f"s3://{BUCKET}/{prefix}", "--endpoint-url",
            store.endpoint_url, *SMALL_RING, *extra]


@pytest.mark.e2e
@requires_fuse
def test_daemon_returns_only_once_mounted(store, s3, tmp_path: Path,
                                          background_mounts: list[Path]) -> None:
    path = tmp_path / "mnt"
    path.mkdir()
    background_mounts.append(path)
    env = store_env(store)
    log = tmp_path / "daemon.log"
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    result = chute(*daemon_args(store, path, prefix, "--log-file", str(log)), env=env)
    assert result.returncode == 0, result.stderr + log.read_text()
    assert is_mounted(path)  # at once, no polling: the parent waited for "ready"
    pid = status(path)["pid"]
    (path / "f").write_bytes(b"from the daemon")
    assert s3.get_object(Bucket=BUCKET, Key=f"{prefix}/f")["Body"].read() == b"from the daemon"
    result = chute("unmount", path)
    assert result.returncode == 0, result.stderr
    assert not is_mounted(path)
    assert not Path(f"/proc/{pid}").exists() or \
        Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    assert "unmounted" in log.read_text()

    bad = chute("mount", "--daemon", path, "s3://no-such-bucket-here", "--endpoint-url",
                store.endpoint_url, "--log-file", tmp_path / "bad.log", env=env)
    assert bad.returncode == 1
    assert "bucket 'no-such-bucket-here' does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not is_mounted(path)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bad = chute(*daemon_args(store, path, prefix, "--metrics-addr", f"127.0.0.1:{port}"),
                    env=env)
    assert bad.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in bad.stderr
    assert not is_mounted(path)


@pytest.fixture
def fuse_chute_helper() -> Iterator[Path]:
    """/sbin/mount.fuse.chute -> this environment's mount.chute, as the README says."""
    script = Path(sys.executable).parent / "mount.chute"
    if not script.exists():
        pytest.fail(f"{script} is missing: reinstall chute (pip install -e .)")
    if os.geteuid() != 0:
        pytest.skip("installing the mount(8) helper needs root")
    link = Path("/sbin/mount.fuse.chute")
    created = False
    if link.is_symlink() or link.exists():
        if link.resolve() != script.resolve():
            pytest.skip(f"{link} exists and belongs to another chute install")
    else:
        link.symlink_to(script)
        created = True
    yield link
    if created:
        link.unlink()


def utab_mentions(path: Path) -> bool:
    with contextlib.suppress(FileNotFoundError):
        return f"TARGET={path} " in Path("/run/mount/utab").read_text()
    return False


@pytest.mark.e2e
@requires_fuse
def test_mount_t_fuse_chute_then_unmount_waits_for_the_writer(
        store, s3, tmp_path: Path, fuse_chute_helper: Path,
        background_mounts: list[Path]) -> None:
    path = tmp_path / "mnt"
    path.mkdir()
    background_mounts.append(path)
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    options = (f"endpoint_url={store.endpoint_url},slice_size=5MiB,ring_size=20MiB,"
               f"log_file={tmp_path / 'mount.log'},_netdev,nofail")
    result = subprocess.run(["mount", "-t", "fuse.chute", f"s3://{BUCKET}/{prefix}", str(path),
                             "-o", options], capture_output=True, text=True,
                            env=store_env(store), timeout=60)
    assert result.returncode == 0, result.stderr
    entry = mountinfo.find(path)
    assert entry is not None and entry.fstype == "fuse.chute", entry
    assert entry.source.startswith("chute:"), entry
    first = os.urandom(7 * MiB)
    with open_for_writing(path / "slow", first) as fd:
        unmount = subprocess.Popen([sys.executable, "-m", "chute.fs.cli", "unmount", str(path),
                                    "--timeout", "60"], stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert unmount.poll() is None, unmount.stderr.read()  # waiting for our close
        assert is_mounted(path)
        os.write(fd, b"the end")
    _, err = unmount.communicate(timeout=30)
    assert unmount.returncode == 0, err
    assert "waiting up to 60 s for 1 open file(s) to be closed: 'slow'" in err
    assert not is_mounted(path)
    assert not utab_mentions(path)  # umount dropped mount(8)'s record too
    head = s3.head_object(Bucket=BUCKET, Key=f"{prefix}/slow")
    assert head["ContentLength"] == 7 * MiB + 7


@pytest.mark.e2e
@requires_fuse
def test_fstab_line_then_unmount_timeout_abandons_open_files(
        store, s3, tmp_path: Path, fuse_chute_helper: Path,
        background_mounts: list[Path]) -> None:
    path = tmp_path / "mnt"
    path.mkdir()
    background_mounts.append(path)
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# a line as it would stand in /etc/fstab\n"
        f"s3://{BUCKET}/{prefix}  {path}  fuse.chute  endpoint_url={store.endpoint_url},"
        f"config={tmp_path / 'chute.toml'},_netdev,nofail  0  0\n"
    )
    (tmp_path / "chute.toml").write_text(
        f'slice_size = "5MiB"\nring_size = "20MiB"\nlog_file = "{tmp_path / "m.log"}"\n')
    result = subprocess.run(["mount", "--fstab", str(fstab), str(path)], capture_output=True,
                            text=True, env=store_env(store), timeout=60)
    assert result.returncode == 0, result.stderr
    assert is_mounted(path)
    assert status(path)["ring"]["slots"] == 4  # the config file named in fstab applied
    with open_for_writing(path / "never-closed", os.urandom(16 * MiB)) as fd:
        wait_for(lambda: status(path)["totals"]["parts"] == 1, "one part sent")
        result = chute("unmount", path, "--timeout", "1")
        assert result.returncode == 1
        assert "abandoning 'never-closed': 16 MiB received, 5 MiB acknowledged" in \
            result.stderr
        assert not is_mounted(path)
        with pytest.raises(OSError):
            os.write(fd, b"more")
    assert object_keys(s3, f"{prefix}/") == []
    assert pending_uploads(s3, f"{prefix}/") == []
    assert not utab_mentions(path)


# -- verify --------------------------------------------------------------------------------


@pytest.mark.e2e
@requires_fuse
def test_verify_against_the_mount_and_the_bucket(mount_factory, store,
                                                 tmp_path: Path) -> None:
    mount = mount_factory(*SMALL_RING)
    local = random_file(tmp_path / "data", 6 * MiB + 3, seed=7)
    subprocess.run(["cp", str(local), str(mount.path / "data")], check=True, timeout=60)
    in_mount = mount.path / "data"
    in_bucket = f"s3://{BUCKET}/{mount.key('data')}"
    env = store_env(store)
    endpoint = ("--endpoint-url", store.endpoint_url)

    for remote, extra in ((in_mount, ()), (in_bucket, endpoint)):
        result = chute("verify", local, remote, *extra, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"match: {local} = {remote} (xxh3-128 ")

    changed = tmp_path / "changed"
    changed.write_bytes(local.read_bytes())
    with open(changed, "r+b") as f:  # one byte, same size: only the hash can tell
        f.seek(3 * MiB)
        byte = f.read(1)
        f.seek(3 * MiB)
        f.write(bytes([byte[0] ^ 1]))
    shorter = tmp_path / "shorter"
    shorter.write_bytes(local.read_bytes()[:-1])
    for remote, extra in ((in_mount, ()), (in_bucket, endpoint)):
        result = chute("verify", changed, remote, *extra, env=env)
        assert result.returncode == 1, result.stderr
        assert result.stdout.startswith(f"MISMATCH: {changed} has xxh3-128 ")
        result = chute("verify", shorter, remote, *extra, env=env)
        assert result.returncode == 1, result.stderr
        assert "is 6291458 bytes" in result.stdout

    missing = chute("verify", local, f"s3://{BUCKET}/{mount.key('nope')}", *endpoint, env=env)
    assert missing.returncode == 2
    assert "there is no object" in missing.stderr
    not_chute = chute("verify", local, local)
    assert not_chute.returncode == 2
    assert "has no user.chute.xxh3_128" in not_chute.stderr
