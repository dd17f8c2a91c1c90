"""Running a mount: checks before mounting, the trio run that serves FUSE, a clean stop.

Order matters. Everything that can be wrong with the user's request (mountpoint, credentials,
bucket, endpoint) is checked before the kernel mount exists, so ``chute mount`` exits
non-zero with one clear sentence and nothing is left mounted. Then one trio run owns a
nursery holding the upload workers, the signal watcher and pyfuse3's request loop. When the
loop ends (SIGINT, SIGTERM, or ``fusermount3 -u``), files still open are aborted so no partial
object or incomplete multipart upload stays behind, and the workers are cancelled.

"Ready" means the kernel mount exists and the status socket (and metrics listener, if any)
answer; that is the moment ``on_ready`` fires (``--daemon``'s parent exits 0) and systemd
hears ``READY=1``. The metrics port is bound before mounting, so a taken port is refused like
any other bad option.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import pyfuse3
import trio

from chute.uploader import leftovers, moves
from chute.uploader.bandwidth import Bandwidth, BandwidthSchedule
from chute.uploader.config import UploaderConfig
from chute.uploader.credentials import CredentialSource
from chute.uploader.errors import ConfigError, StoreError, StoreUnreachable
from chute.uploader.object_options import ObjectOptions
from chute.uploader.read_budget import ReadBudget
from chute.uploader.retry import RetryPolicy, RetryReason
from chute.uploader.s3 import Bucket, S3Client
from chute.uploader.uploader import Uploader

from . import control, daemon, metrics, mountinfo, readahead, store_probe, upload_options
from .operations import ChuteOperations
from .policy import MountPolicy
from .reads import ReadSetup

log = logging.getLogger(__name__)

FUSE_TASK_RESERVE = 64
"""Request tasks beyond the writers that may wait for a ring slot. A writer waiting for a slot
holds its request's task; with fewer tasks than waiting writers plus this reserve, the writers
holding the slots could not have their writes served and would look idle to the ring's
progress rule (see ring.py). Memory: a task holds at most its request (a write's data, up to
1 MiB, received and copied once): only waiting writers keep tasks busy, idle ones exit."""


@dataclass(frozen=True)
class MountRequest:
    mountpoint: str
    bucket: Bucket
    uploader: UploaderConfig
    profile: str | None = None
    allow_other: bool = False
    metrics_addr: tuple[str, int] | None = None
    """(host, port) to serve Prometheus metrics on; exposure was checked by the CLI."""
    policy: MountPolicy = field(default_factory=MountPolicy)
    """--no-overwrite / --no-delete: what the FUSE operations refuse."""
    object_options: ObjectOptions = field(default_factory=ObjectOptions)
    """The upload options (storage class, encryption, lock...) every request carries."""
    bwlimit: BandwidthSchedule | None = None
    """--bwlimit: one token bucket for all uploads of the mount (None: unlimited)."""


def check_mountpoint(path: str) -> None:
    """The mountpoint must be an existing, empty directory that is not already a mount."""
    if not os.path.isdir(path):
        raise ConfigError(f"mountpoint {path} is not an existing directory")
    if os.path.ismount(path):
        raise ConfigError(f"mountpoint {path} is already a mount point")
    if os.listdir(path):
        raise ConfigError(f"mountpoint {path} is not empty")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise ConfigError("/dev/fuse is not accessible: install fuse3 and load the fuse module")


def _describe_store_error(exc: BaseException, bucket: Bucket) -> str:
    where = bucket.endpoint_url or f"AWS S3 ({bucket.region})"
    if isinstance(exc, StoreError):
        if exc.code in ("NoSuchBucket", "NotFound") or exc.status == 404:
            return f"bucket {bucket.bucket!r} does not exist at {where}"
        if exc.status in (401, 403) or exc.code in ("InvalidAccessKeyId",
                                                    "SignatureDoesNotMatch", "AccessDenied"):
            return (f"the store at {where} rejected the credentials for bucket "
                    f"{bucket.bucket!r} ({exc.code})")
        return f"the store at {where} answered {exc}"
    if isinstance(exc, StoreUnreachable):
        return f"cannot reach the store at {where}: {exc.description}"
    return f"checking bucket {bucket.bucket!r} at {where} failed: {exc}"


async def _preflight(client: S3Client) -> None:
    try:
        with trio.fail_after(30):
            await client.head_bucket()
    except trio.TooSlowError:
        raise ConfigError(_describe_store_error(TimeoutError("no answer in 30 s"),
                                                client.bucket)) from None
    except (StoreError, StoreUnreachable) as exc:
        raise ConfigError(_describe_store_error(exc, client.bucket)) from None


def _make_client(request: MountRequest, credentials: CredentialSource, *, quick: bool
                 ) -> S3Client:
    config = request.uploader
    policy = RetryPolicy(budget=config.retry_budget) if not quick else \
        RetryPolicy(max_attempts=2, budget=5)
    client = S3Client(request.bucket, credentials, policy, stall_timeout=config.stall_timeout,
                      max_connections=config.upload_concurrency + 8)
    client.object_options = request.object_options
    if request.bwlimit is not None:
        client.bandwidth = Bandwidth(request.bwlimit)
    return client


def _side_client(request: MountRequest, credentials: CredentialSource, connections: int
                 ) -> S3Client:
    """A client beside the uploads' with connections of its own: the same credentials, retry
    policy, stall timeout and object options (an SSE-C object's GET or HEAD needs the key)."""
    config = request.uploader
    client = S3Client(request.bucket, credentials, RetryPolicy(budget=config.retry_budget),
                      stall_timeout=config.stall_timeout, max_connections=connections)
    client.object_options = request.object_options
    return client


def _make_read_client(request: MountRequest, credentials: CredentialSource) -> S3Client:
    """The ranged GETs of readers go through a client of their own, so readers never wait
    for connections behind uploads."""
    return _side_client(request, credentials, min(64, max(16, request.policy.read_budget >> 20)))


def _make_lookup_client(request: MountRequest, credentials: CredentialSource) -> S3Client:
    """Lookups and listings (HEAD, LIST) go through a client of their own, so the uploads'
    kept-alive connection stays warm. Through a link with a long round trip, a LIST that took
    the connection a PUT had just returned left the next PUT a connection idle for longer
    than TCP's retransmission timeout, whose window starts small again
    (tcp_slow_start_after_idle): a 64 KiB body then took three round trips instead of one.
    Measured through bench --link's model at 100 ms / 50 Mbit/s: 56 of 211 PUTs restarted
    slow start, 50 of them on a connection a LIST had used last. Every metadata request is
    bounded by lookups.METADATA_DEADLINE; the kernel serializes lookups per directory, so
    few connections serve them."""
    return _side_client(request, credentials, LOOKUP_CONNECTIONS)


LOOKUP_CONNECTIONS = 16
"""Connections of the lookups' client: lookups in different directories, readdir and rmdir's
emptiness check run side by side; each request is small."""
MIN_READ_BUDGET = 1 << 20


def check_store(request: MountRequest) -> CredentialSource:
    """Resolve credentials and reach the bucket, before anything is mounted."""
    credentials = CredentialSource(request.profile)
    credentials.load_blocking()

    async def probe() -> None:
        client = _make_client(request, credentials, quick=True)
        try:
            await _preflight(client)
            await upload_options.check_object_lock(client, request.object_options)
        finally:
            await client.aclose()

    trio.run(probe)
    return credentials


def _still_mounted(path: str) -> bool:
    """From /proc/self/mountinfo, never by stat: a stat of our own mount root would wait for
    the request loop that has already ended. False once ``umount -l`` detached it, and then
    libfuse must not try to unmount it again (it would log a failure)."""
    return mountinfo.is_mounted(path)


async def _watch_signals() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


def _status(request: MountRequest, uploader: Uploader, metrics_url: str | None,
            operations: ChuteOperations) -> Callable[[], control.MountStatus]:
    """What the status socket answers: the uploader's statistics plus where this mount is
    (``mountpoint`` as given; control.serve answers with the real path it serves)."""
    bucket = request.bucket

    def status() -> control.MountStatus:
        return control.MountStatus.of(
            uploader.statistics(), mountpoint=request.mountpoint, pid=os.getpid(),
            remote=f"s3://{bucket.bucket}/{bucket.prefix}", endpoint_url=bucket.endpoint_url,
            metrics_url=metrics_url,
            reads=operations.reads.statistics() if operations.reads.allow else None)

    return status


async def _close(clients: list[S3Client]) -> None:
    """Close every client of the mount (the caller shields this from cancellation)."""
    for client in clients:
        await client.aclose()


async def _serve(request: MountRequest, credentials: CredentialSource,
                 on_ready: Callable[[], None] | None = None) -> None:
    client = _make_client(request, credentials, quick=False)
    uploader = Uploader(request.uploader, client)
    mount_metrics = metrics.MountMetrics(uploader)

    def retried(operation: str, reason: RetryReason, error: Exception) -> None:
        uploader.count_retry(operation, reason)
        mount_metrics.observe_retry(operation, reason, error)

    def observed(one: S3Client) -> S3Client:
        """Count the client's retries and requests in the mount's statistics and metrics,
        and close it with the mount."""
        one.on_retry = retried
        one.on_request = mount_metrics.observe_request
        clients.append(one)
        return one

    clients: list[S3Client] = []
    observed(client)
    lookup_client = observed(_make_lookup_client(request, credentials))
    reads = ReadSetup()
    if request.policy.allow_read:
        read_client = observed(_make_read_client(request, credentials))
        reads = ReadSetup(allow=True, direct=request.policy.direct_reads, source=read_client,
                          budget=ReadBudget(request.policy.read_budget),
                          on_first_open=lambda: readahead.widen(operations.mountpoint))
    listeners: list[trio.SocketListener] = []
    metrics_url = None
    if request.metrics_addr is not None:
        host, port = request.metrics_addr
        try:
            listeners = await metrics.open_listeners(host, port)
        except BaseException:
            with trio.CancelScope(shield=True):
                await _close(clients)
            raise
        shown = f"[{host}]" if ":" in host else host
        metrics_url = f"http://{shown}:{metrics.bound_port(listeners)}/metrics"
    try:
        with trio.fail_after(60):
            await leftovers.clean(client)
    except Exception as exc:
        log.warning("could not look for uploads left by earlier mounts: %s", exc)
    try:
        with trio.fail_after(120):
            await moves.recover(client)
    except Exception as exc:
        log.warning("could not look for directory renames cut by earlier mounts: %s", exc)
    operations = ChuteOperations(uploader, client, request.mountpoint, request.policy, reads,
                                 lookup_client=lookup_client)
    operations.ns.keeps_backslash = await store_probe.keeps_backslash(client)
    options = set(pyfuse3.default_options)
    options |= {f"fsname=chute:{request.bucket.bucket}/{request.bucket.prefix}".rstrip("/"),
                "subtype=chute"}
    if request.allow_other:
        options.add("allow_other")
    try:
        pyfuse3.init(operations, request.mountpoint, options)
    except RuntimeError as exc:  # libfuse could not mount (fuse_session_mount failed)
        with trio.CancelScope(shield=True):
            await _close(clients)
        raise ConfigError(f"mounting {request.mountpoint} failed: {exc}") from None
    unmounted = False
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(uploader.run)
            await nursery.start(operations.reads.run)  # owns the readers' GET tasks
            await nursery.start(operations.lookups.run)  # owns the background listings
            await nursery.start(control.serve, operations.mountpoint,
                                _status(request, uploader, metrics_url, operations))
            if listeners:
                await nursery.start(metrics.serve, mount_metrics, listeners)
                log.info("metrics at %s", metrics_url)
            nursery.start_soon(_watch_signals)
            log.info("mounted s3://%s/%s at %s (ring %d x %d MiB, %d uploads in flight)",
                     request.bucket.bucket, request.bucket.prefix, request.mountpoint,
                     len(uploader.ring.slots), request.uploader.slice_size >> 20,
                     request.uploader.upload_concurrency)
            log.info("upload options: %s",
                     upload_options.describe(request.object_options, request.bwlimit))
            if reads.allow:
                log.info("reads on (--allow-read): read budget %d MiB",
                         request.policy.read_budget >> 20)
            if on_ready is not None:
                on_ready()
            daemon.notify_systemd("READY=1")
            await pyfuse3.main(min_tasks=2, max_tasks=(request.uploader.max_waiting_writers
                                                       + FUSE_TASK_RESERVE))
            daemon.notify_systemd("STOPPING=1")
            if uploader.uploads:
                await operations.abort_open_files("the mount is stopping")
            nursery.cancel_scope.cancel()
        pyfuse3.close(unmount=_still_mounted(operations.mountpoint))
        unmounted = True
    finally:
        if not unmounted:
            pyfuse3.close(unmount=_still_mounted(operations.mountpoint))
        with trio.CancelScope(shield=True):
            await _close(clients)
    log.info("unmounted %s", request.mountpoint)


def run_mount(request: MountRequest, on_ready: Callable[[], None] | None = None) -> int:
    """Check, mount, serve until unmounted; the exit status for the CLI.

    ``on_ready`` is called once the mount is usable (see the module docstring).
    """
    check_mountpoint(request.mountpoint)
    request.uploader.validate()
    if request.policy.read_budget < MIN_READ_BUDGET:
        raise ConfigError(f"--read-budget must be at least 1MiB, not {request.policy.read_budget}")
    if request.policy.direct_reads and not request.policy.allow_read:
        raise ConfigError("--direct-reads applies to reads, which need --allow-read")
    credentials = check_store(request)
    trio.run(_serve, request, credentials, on_ready)
    return 0


