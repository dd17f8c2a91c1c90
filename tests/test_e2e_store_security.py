"""The embedded store's listeners, probed as another local user (issue 13, item 3).

Loopback is reachable by every local user. These tests find every socket the running ``weed``
listens on (from /proc, not from chute's own port list, so a listener weed opens on its own is
probed too) and try to read and write the bucket through each one as a second uid made for the
purpose: plain HTTP, HTTP/2 cleartext (gRPC), TLS without a client certificate and TLS with a
certificate of another CA. Only the S3 port may answer, and it refuses unsigned requests.
A positive control shows the probe reaches a listener that does let its client in. Last, chute's
own mount on the same store still lands a small and a multipart file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chute.fs.embedded_store import EmbeddedStore
from tests.support.files import random_file, sha256_file
from tests.support.mounts import requires_fuse
from tests.support.store import BUCKET, pending_uploads, sha256_object
from tests.support.users import second_user

pytestmark = [
    pytest.mark.e2e, requires_fuse,
    pytest.mark.skipif(os.geteuid() != 0, reason="creates a second user: needs root"),
    pytest.mark.skipif(not (shutil.which("useradd") and shutil.which("runuser")
                            and shutil.which("curl")),
                       reason="needs useradd, runuser and curl"),
]

PROBE_USER = "chute-probe"
SECRET = b"only-the-mount-may-read-this-" + os.urandom(8).hex().encode()
MiB = 1 << 20


@dataclass(frozen=True)
class Answer:
    exit_code: int
    http_code: str
    body: bytes

    @property
    def let_in(self) -> bool:
        """A 2xx or 3xx answer: the request was served (or redirected somewhere that would)."""
        return self.http_code[:1] in ("2", "3")


@pytest.fixture(scope="module")
def probe_user() -> Iterator[str]:
    """A second local user with no home and no login shell (made if missing)."""
    with second_user(PROBE_USER) as name:
        yield name


@pytest.fixture(scope="module")
def foreign_cert(probe_user: str) -> Iterator[tuple[str, str]]:
    """A client certificate for 127.0.0.1 from another CA, readable by the probe user."""
    where = Path(tempfile.mkdtemp(prefix="chute-probe-cert-"))
    where.chmod(0o755)
    cert, key = where / "other.crt", where / "other.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=chute embedded store",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    key.chmod(0o644)
    yield str(cert), str(key)
    shutil.rmtree(where, ignore_errors=True)


def curl_as(user: str, *args: str) -> Answer:
    """curl run as ``user``; the HTTP status is the last line of its output."""
    done = subprocess.run(
        ["runuser", "-u", user, "--", "curl", "-s", "-m", "5", "-o", "-",
         "-w", "\n%{http_code}", *args],
        capture_output=True, timeout=30, check=False, cwd="/")
    body, _, code = done.stdout.rpartition(b"\n")
    return Answer(done.returncode, code.decode().strip(), body)


def weed_pid(store: EmbeddedStore) -> int:
    marker = f"-dir={store.data_dir / 'weed'}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().split(b"\0"):
                    return int(entry.name)
            except OSError:
                continue
    raise AssertionError(f"no weed process serves {store.data_dir}")


def listening_sockets(pid: int) -> tuple[set[int], set[str]]:
    """The TCP ports and Unix socket paths process ``pid`` listens on, read from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    paths: set[str] = set()
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[6] in inodes and int(fields[3], 16) & 0x10000:
                paths.add(fields[7])  # flag 0x10000: __SO_ACCEPTCON, a listening socket
    return ports, paths


@pytest.fixture(scope="module")
def secret_object(store: EmbeddedStore, s3) -> str:
    key = f"security-{os.urandom(4).hex()}/secret.txt"
    s3.put_object(Bucket=BUCKET, Key=key, Body=SECRET)
    return key


def test_every_listener_but_s3_refuses_another_user(
    store: EmbeddedStore, s3, probe_user: str, foreign_cert: tuple[str, str],
    secret_object: str,
) -> None:
    ports, unix_paths = listening_sockets(weed_pid(store))
    s3_port = int(store.endpoint_url.rsplit(":", 1)[1])
    assert s3_port in ports
    others = sorted(ports - {s3_port})
    # master, volume, filer, admin: HTTP and gRPC each; S3's gRPC: at least nine others.
    assert len(others) >= 9, ports
    cert, key = foreign_cert
    writes = []
    for port in others:
        base = f"127.0.0.1:{port}"
        evil = f"{secret_object.rsplit('/', 1)[0]}/evil-{port}"
        writes.append(evil)
        attempts = {
            "plain GET": curl_as(probe_user, f"http://{base}/buckets/{BUCKET}/{secret_object}"),
            "plain PUT": curl_as(probe_user, "-X", "PUT", "--data-binary", "evil",
                                 f"http://{base}/buckets/{BUCKET}/{evil}"),
            "plain multipart POST": curl_as(probe_user, "-F", "file=@/etc/hostname",
                                            f"http://{base}/buckets/{BUCKET}/{evil}"),
            "master assign": curl_as(probe_user, f"http://{base}/dir/assign"),
            "gRPC h2c": curl_as(probe_user, "--http2-prior-knowledge", "-X", "POST",
                                "-H", "content-type: application/grpc",
                                f"http://{base}/master_pb.Seaweed/GetMasterConfiguration"),
            "TLS without certificate": curl_as(
                probe_user, "-k", f"https://{base}/buckets/{BUCKET}/{secret_object}"),
            "TLS with another CA's certificate": curl_as(
                probe_user, "-k", "--cert", cert, "--key", key,
                f"https://{base}/buckets/{BUCKET}/{secret_object}"),
            "gRPC TLS without certificate": curl_as(
                probe_user, "-k", "--http2", "-X", "POST", "-H", "content-type: application/grpc",
                f"https://{base}/master_pb.Seaweed/GetMasterConfiguration"),
        }
        for what, answer in attempts.items():
            assert not answer.let_in, (port, what, answer)
            assert SECRET not in answer.body, (port, what)
        for what in ("TLS without certificate", "TLS with another CA's certificate",
                     "gRPC TLS without certificate"):
            assert attempts[what].exit_code != 0, (port, what, attempts[what])  # no handshake
    for path in sorted(unix_paths):
        answer = curl_as(probe_user, "--unix-socket", path,
                         f"http://localhost/buckets/{BUCKET}/{secret_object}")
        assert answer.exit_code != 0 and not answer.let_in, (path, answer)
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o700), path
    for evil in writes:
        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=evil).get("KeyCount", 0)
        assert listed == 0, evil


def test_s3_wants_a_signature(store: EmbeddedStore, s3, probe_user: str,
                              secret_object: str) -> None:
    url = f"{store.endpoint_url}/{BUCKET}"
    read = curl_as(probe_user, f"{url}/{secret_object}")
    assert read.http_code in ("401", "403"), read
    assert SECRET not in read.body
    listing = curl_as(probe_user, f"{url}?list-type=2")
    assert listing.http_code in ("401", "403"), listing
    evil = f"{secret_object}.evil"
    write = curl_as(probe_user, "-X", "PUT", "--data-binary", "evil", f"{url}/{evil}")
    assert write.http_code in ("401", "403"), write
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=evil).get("KeyCount", 0) == 0
    assert s3.get_object(Bucket=BUCKET, Key=secret_object)["Body"].read() == SECRET


def test_the_probe_reaches_a_listener_that_lets_it_in(store: EmbeddedStore) -> None:
    """Positive control: with the launch's own certificate the TLS handshake succeeds, and the
    filer still wants its token (401), so the refusals above are the listeners' doing."""
    ports, _ = listening_sockets(weed_pid(store))
    s3_port = int(store.endpoint_url.rsplit(":", 1)[1])
    secrets_dir = store.data_dir / "security"
    codes = []
    for port in sorted(ports - {s3_port}):
        done = subprocess.run(
            ["curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
             "--cacert", str(secrets_dir / "ca.crt"), "--cert", str(secrets_dir / "node.crt"),
             "--key", str(secrets_dir / "node.key"), f"https://127.0.0.1:{port}/"],
            capture_output=True, timeout=30, check=False)
        codes.append((port, done.returncode, done.stdout.decode()))
    handshaken = [c for c in codes if c[2] not in ("", "000")]
    assert len(handshaken) >= 4, codes  # the four HTTP listeners at least


def test_chute_mount_on_the_protected_store_still_works(mount_factory, s3,
                                                        tmp_path: Path) -> None:
    mount = mount_factory("--slice-size", "5MiB", "--ring-size", "20MiB")
    small = random_file(tmp_path / "small", 1000, seed=3)
    big = random_file(tmp_path / "big", 12 * MiB + 5, seed=4)
    for src in (small, big):
        subprocess.run(["cp", str(src), str(mount.path / src.name)], check=True, timeout=120)
        key = mount.key(src.name)
        assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == src.stat().st_size
        assert sha256_object(s3, key) == sha256_file(src)
    assert pending_uploads(s3, mount.prefix) == []
