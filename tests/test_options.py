"""Input, neighbours and the status screen (issue 13, items 7, 10, 12, 13, 14), without a store.

Each bad request is refused before anything starts, in one sentence on stderr with a non-zero
exit and no traceback; the control directory and the data directory are refused when another
user could have planted or shares them; the listeners serve a bounded number of connections;
``chute status`` never sends a control character from a name to the terminal.
"""

from __future__ import annotations

import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from chute.fs import control, options
from chute.fs.data_dir import check_data_dir
from chute.fs.embedded_store import EmbeddedStore
from chute.fs.listeners import serve_capped
from chute.fs.options import (
    check_bucket_name,
    check_endpoint,
    check_prefix,
    check_ring_memory,
    parse_remote,
    raise_descriptor_limit,
)
from chute.fs.watch import print_once, printable, render
from chute.uploader.config import UploaderConfig
from chute.uploader.errors import ConfigError
from chute.uploader.ring import Ring, RingExhausted
from chute.uploader.sizes import MiB, TiB

# -- the remote ---------------------------------------------------------------------------


@pytest.mark.parametrize("bucket", ["my-bucket", "abc", "a.b.c", "bucket123", "x" * 63])
def test_valid_bucket_names(bucket: str) -> None:
    check_bucket_name(bucket)


@pytest.mark.parametrize("bucket", [
    "ab", "x" * 64, "Bucket", "bkt#frag", "bkt?x=1", "bk t", "-bkt", "bkt-", "a..b",
    "a.-b", "192.168.1.1", "bkt_", "bkt\x01",
])
def test_invalid_bucket_names(bucket: str) -> None:
    with pytest.raises(ConfigError, match="not a valid bucket name"):
        check_bucket_name(bucket)


@pytest.mark.parametrize("prefix", ["a", "a/b/c", "with space", "données/été", "a-b_c.d"])
def test_valid_prefixes(prefix: str) -> None:
    check_prefix(prefix)


@pytest.mark.parametrize(("prefix", "why"), [
    ("../other", "segment"), ("a/../b", "segment"), ("a/./b", "segment"), ("a//b", "segment"),
    ("/a", "segment"), ("a#frag", "'#'"), ("a?x=1", "'#' or '\\?'"), ("a\x01b", "control"),
    ("a\nb", "control"), ("a\\b", "backslash"), ("p" * 1025, "1024 bytes"),
])
def test_invalid_prefixes(prefix: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        check_prefix(prefix)


def test_parse_remote_checks_both_parts() -> None:
    assert parse_remote("s3://bkt/a/b/") == ("bkt", "a/b/")
    for remote in ("s3://bkt#frag", "s3://bkt?x=1", "s3://bkt/../other", "s3://bk t",
                   "s3://bkt/a//b"):
        with pytest.raises(ConfigError):
            parse_remote(remote)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8333", "https://s3.example.com",
                                 "https://[::1]:9000/", "http://minio:9000/base"])
def test_valid_endpoints(url: str) -> None:
    check_endpoint(url)


@pytest.mark.parametrize("url", ["notaurl", "ftp://host", "http://", "http://host:port",
                                 "http://host/?x=1", "http://host/#f", "http://ho st",
                                 "127.0.0.1:9000"])
def test_invalid_endpoints(url: str) -> None:
    with pytest.raises(ConfigError, match="endpoint"):
        check_endpoint(url)


# -- numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "flag"), [
    ("upload_concurrency", 1_000_000, "--upload-concurrency"),
    ("upload_concurrency", 0, "--upload-concurrency"),
    ("stall_timeout", math.nan, "--stall-timeout"),
    ("stall_timeout", math.inf, "--stall-timeout"),
    ("stall_timeout", -1.0, "--stall-timeout"),
    ("retry_budget", math.inf, "--retry-budget"),
    ("retry_budget", math.nan, "--retry-budget"),
])
def test_numbers_out_of_range_are_refused_with_the_range(field: str, value: float,
                                                         flag: str) -> None:
    with pytest.raises(ConfigError, match=f"{flag} must be between") as info:
        UploaderConfig(**{field: value}).validate()  # type: ignore[arg-type]
    assert str(value) in str(info.value) or repr(value) in str(info.value)


def test_a_ring_larger_than_memory_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"more than the .* of memory available"):
        check_ring_memory(1 * TiB)
    check_ring_memory(64 * MiB)


def test_descriptor_limit_is_raised_to_the_hard_limit_and_checked() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY and hard > 512:
            resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
        assert raise_descriptor_limit(100) == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
        if hard != resource.RLIM_INFINITY:
            with pytest.raises(ConfigError, match="open-file limit"):
                raise_descriptor_limit(hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- the control directory and the mount lock ------------------------------------------------


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "run"
    where.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(where))
    return where


def test_control_dir_is_made_private(runtime: Path) -> None:
    (runtime / "chute").mkdir(mode=0o755)
    (runtime / "chute").chmod(0o755)
    assert control.control_dir() == runtime / "chute"
    assert (runtime / "chute").stat().st_mode & 0o777 == 0o700


def test_a_symlinked_control_dir_is_refused_and_its_target_untouched(runtime: Path,
                                                                     tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.mkdir()
    target.chmod(0o755)
    (runtime / "chute").symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        control.control_dir()
    with pytest.raises(ConfigError, match="symbolic link"):
        control.socket_path("/mnt")  # what chute status does
    assert target.stat().st_mode & 0o777 == 0o755


def test_a_control_dir_that_is_a_file_or_anothers_is_refused(runtime: Path) -> None:
    (runtime / "chute").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        control.control_dir()
    (runtime / "chute").unlink()
    if os.geteuid() == 0:
        (runtime / "chute").mkdir()
        os.chown(runtime / "chute", 65534, 65534)
        with pytest.raises(ConfigError, match="another user"):
            control.control_dir()


def test_the_mount_lock_refuses_a_second_holder(runtime: Path) -> None:
    fd = control.lock_mountpoint("/some/mnt")
    try:
        holder = subprocess.run(
            [sys.executable, "-c", "from chute.fs import control; "
             "control.lock_mountpoint('/some/mnt')"],
            capture_output=True, text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
        assert holder.returncode != 0
        assert f"another chute (pid {os.getpid()}) is already mounting" in holder.stderr
        other = control.lock_mountpoint("/other/mnt")  # another mountpoint: its own lock
        os.close(other)
    finally:
        os.close(fd)
    os.close(control.lock_mountpoint("/some/mnt"))  # released with its descriptor


# -- the data directory ---------------------------------------------------------------------


def test_a_shared_data_dir_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(ConfigError, match="writable by others"):
        check_data_dir(shared)
    with pytest.raises(ConfigError, match="writable by others"):
        EmbeddedStore(shared)
    assert shared.stat().st_mode & 0o7777 == 0o1777
    group = tmp_path / "group"
    group.mkdir()
    group.chmod(0o770)
    with pytest.raises(ConfigError, match="writable by others"):
        check_data_dir(group)


def test_an_own_private_or_new_data_dir_is_accepted(tmp_path: Path) -> None:
    check_data_dir(tmp_path / "new")
    own = tmp_path / "own"
    own.mkdir()
    own.chmod(0o755)
    check_data_dir(own)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        check_data_dir(tmp_path / "file")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_anothers_data_dir_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(ConfigError, match="belongs to another user"):
        check_data_dir(theirs)


# -- one sentence, no traceback, nothing started ----------------------------------------------


def _chute(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    return subprocess.run([sys.executable, "-m", "chute.fs.cli", *args], capture_output=True,
                          text=True, env={**base, **(env or {})}, timeout=60)


@pytest.mark.parametrize(("extra", "expected"), [
    (["s3://bkt", "--endpoint-url", "notaurl"], "is not a URL"),
    (["s3://bkt", "--endpoint-url", "http://127.0.0.1:1", "--profile", "nosuchprofile"],
     "AWS profile 'nosuchprofile' is not in"),
    (["s3://bkt", "--endpoint-url", "http://127.0.0.1:1", "--ring-size", "1TiB"],
     "memory available"),
    (["s3://bkt", "--endpoint-url", "http://127.0.0.1:1", "--upload-concurrency", "1000000"],
     "between 1 and 256"),
    (["s3://bkt", "--endpoint-url", "http://127.0.0.1:1", "--stall-timeout", "nan"],
     "--stall-timeout must be between"),
    (["s3://bkt", "--endpoint-url", "http://127.0.0.1:1", "--retry-budget", "inf"],
     "--retry-budget must be between"),
    (["s3://bkt#frag", "--endpoint-url", "http://127.0.0.1:1"], "not a valid bucket name"),
    (["s3://bkt?x=1", "--endpoint-url", "http://127.0.0.1:1"], "not a valid bucket name"),
    (["s3://bkt/../other", "--endpoint-url", "http://127.0.0.1:1"], "'..' segment"),
    (["s3://bk t", "--endpoint-url", "http://127.0.0.1:1"], "not a valid bucket name"),
    (["s3://bkt", "--endpoint-url", "http://127.0.0.1:1", "--log-file", "/nonexistent/x.log"],
     "cannot open the log file /nonexistent/x.log"),
])
def test_bad_requests_are_one_sentence(tmp_path: Path, extra: list[str], expected: str) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = _chute("mount", str(mnt), *extra, env={"XDG_RUNTIME_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not os.path.ismount(mnt)


def test_a_binary_config_file_is_one_sentence(tmp_path: Path) -> None:
    config = tmp_path / "bin.toml"
    config.write_bytes(bytes(range(128, 256)) * 4)
    result = _chute("mount", str(tmp_path), "--config", str(config))
    assert result.returncode == 2
    assert "is not a TOML file" in result.stderr and "Traceback" not in result.stderr


def test_a_planted_control_dir_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """chute mount and chute status: one sentence, and the link's target keeps its mode."""
    runtime, target, mnt = tmp_path / "run", tmp_path / "victim", tmp_path / "mnt"
    for d in (runtime, target, mnt):
        d.mkdir()
    target.chmod(0o755)
    (runtime / "chute").symlink_to(target)
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    for args in (["status", str(mnt)],
                 ["mount", str(mnt), "s3://bkt", "--endpoint-url", "http://127.0.0.1:1"],
                 ["mount", str(mnt), "--data-dir", str(tmp_path / "data")]):
        result = _chute(*args, env=env)
        assert result.returncode == 1, result.stderr
        assert "is a symbolic link" in result.stderr and "Traceback" not in result.stderr
    assert target.stat().st_mode & 0o777 == 0o755
    assert not (tmp_path / "data").exists()  # the embedded store never started


def test_a_shared_data_dir_is_refused_before_anything_starts(tmp_path: Path) -> None:
    shared, mnt = tmp_path / "shared", tmp_path / "mnt"
    shared.mkdir()
    mnt.mkdir()
    shared.chmod(0o1777)
    result = _chute("mount", str(mnt), "--data-dir", str(shared),
                    env={"XDG_RUNTIME_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert "writable by others (mode 1777)" in result.stderr
    assert shared.stat().st_mode & 0o7777 == 0o1777
    assert os.listdir(shared) == []


@pytest.mark.parametrize(("args", "expected"), [
    (["status", "/mnt", "--interval", "nan"], "--interval must be between"),
    (["unmount", "/mnt", "--timeout", "-1"], "--timeout must be between"),
])
def test_status_and_unmount_numbers_are_checked(args: list[str], expected: str) -> None:
    result = _chute(*args)
    assert result.returncode == 1 and expected in result.stderr


# -- listeners: a bounded number of connections ------------------------------------------------


async def test_serve_capped_serves_at_most_limit_connections_at_once() -> None:
    busy = 0
    most = 0
    release = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal busy, most
        async with stream:
            busy += 1
            most = max(most, busy)
            await release.wait()
            busy -= 1

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_capped, handler, listeners, 3)
        clients = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(20)]
        await trio.sleep(0.2)
        assert (busy, most) == (3, 3)
        release.set()
        await trio.sleep(0.2)
        assert busy == 0 and most == 3
        for client in clients:
            await client.aclose()
        nursery.cancel_scope.cancel()


# -- item 12: the ring bounds its waiters ------------------------------------------------------


async def test_the_ring_refuses_one_waiter_more_than_max_waiters(
        autojump_clock: trio.abc.Clock) -> None:
    ring = Ring(1, MiB, stall_grace=5.0, max_waiters=2)
    held = await ring.acquire("holder")
    async with trio.open_nursery() as nursery:
        for n in range(2):
            nursery.start_soon(ring.acquire, f"w{n}")
        await trio.sleep(0.01)
        assert ring.waiting == 2
        with pytest.raises(RingExhausted, match="2 writers already wait"):
            await ring.acquire("one too many")
        nursery.cancel_scope.cancel()
    ring.release(held)


# -- item 10: the status screen never sends a control character --------------------------------


def _snapshot(name: str) -> dict:
    return {
        "mountpoint": "/mnt/x", "pid": 1, "remote": "s3://b/p/", "endpoint_url": None,
        "metrics_url": None,
        "ring": {"slots": 4, "slice_size": 16 * MiB, "free": 3, "filling": 1, "sealed": 0,
                 "uploading": 0, "retained": 0, "writers_waiting": 0, "blocked_seconds": 0.0},
        "files": [{"path": name, "key": "p/" + name, "state": "open", "bytes_received": 10,
                   "parts_acknowledged": 0,
                   "bytes_acknowledged": 0, "parts_in_flight": 0, "throughput_bps": 0.0,
                   "retries": 0, "seconds": 1.0, "error": None, "retries_by_reason": {}}],
        "totals": {"bytes_written": 10, "files_done": 0, "bytes_uploaded": 0, "parts": 0,
                   "failures": 0, "retries": {}, "files_opened": 1, "files_abandoned": 0,
                   "files_writer_died": 0, "retries_by_reason": {}},
    }


HOSTILE = "evil\x1b[2J\x1b[31mred\nforged line\r\x07\x9b\u202egnp.exe"


def test_printable_escapes_what_a_terminal_acts_on() -> None:
    shown = printable(HOSTILE)
    assert not any(c in shown for c in "\x1b\n\r\x07\x9b\u202e")
    assert "\\x1b[2J" in shown and "\\u202e" in shown
    assert printable("plain é 名前.txt") == "plain é 名前.txt"


def test_status_text_and_watch_screen_escape_names(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    from chute.fs.control import MountStatus

    snapshot = _snapshot(HOSTILE)
    status = MountStatus.from_json(snapshot)
    print_once(snapshot, as_json=False)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "forged line" in out
    assert len(out.splitlines()) == 2  # the ring line and one file line: no injected line
    console = Console(width=120, force_terminal=False, record=True)
    console.print(render(status, 120))
    screen = console.export_text()
    assert "\x1b" not in screen and "\\x1b[2J" in screen
    print_once(snapshot, as_json=True)
    assert "\x1b" not in capsys.readouterr().out  # JSON escapes it
    assert options  # imported for its checks above


def test_a_ring_the_kernel_cannot_map_is_a_config_error() -> None:
    """The pre-mount check is the first line; the allocation itself is the second."""
    with pytest.raises(ConfigError, match="cannot allocate a ring of 1024 TiB"):
        Ring(1 << 20, 1 << 30)


def test_verify_refuses_an_endpoint_that_is_not_a_url(tmp_path: Path) -> None:
    local = tmp_path / "f"
    local.write_bytes(b"x")
    result = _chute("verify", str(local), "s3://bkt/k", "--endpoint-url", "notaurl")
    assert result.returncode == 1 and "is not a URL" in result.stderr
    assert "Traceback" not in result.stderr
