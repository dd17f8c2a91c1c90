"""Running a mount: checks before mounting, the trio run that serves FUSE, a clean stop.

Order matters. Everything that can be wrong with the user's request (mountpoint, credentials,
bucket, endpoint) is checked before the kernel mount exists, so ``chute mount`` exits
non-zero with one clear sentence and nothing is left mounted. Then one trio run owns a
nursery holding the upload workers, the signal watcher and pyfuse3's request loop. When the
loop ends (SIGINT, SIGTERM, or ``fusermount3 -u``), files still open are aborted so no partial
object or incomplete multipart upload stays behind, and the workers are cancelled.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass

import httpx
import pyfuse3
import trio

from chute.uploader import leftovers
from chute.uploader.config import UploaderConfig
from chute.uploader.credentials import CredentialSource
from chute.uploader.errors import ConfigError, StoreError
from chute.uploader.retry import RetryPolicy
from chute.uploader.s3 import Bucket, S3Client
from chute.uploader.uploader import Uploader

from . import control
from .operations import ChuteOperations

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MountRequest:
    mountpoint: str
    bucket: Bucket
    uploader: UploaderConfig
    profile: str | None = None
    allow_other: bool = False


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
    if isinstance(exc, httpx.TransportError):
        return f"cannot reach the store at {where}: {exc or type(exc).__name__}"
    return f"checking bucket {bucket.bucket!r} at {where} failed: {exc}"


async def _preflight(client: S3Client) -> None:
    try:
        with trio.fail_after(30):
            await client.head_bucket()
    except trio.TooSlowError:
        raise ConfigError(_describe_store_error(TimeoutError("no answer in 30 s"),
                                                client.bucket)) from None
    except (StoreError, httpx.TransportError) as exc:
        raise ConfigError(_describe_store_error(exc, client.bucket)) from None


def _make_client(request: MountRequest, credentials: CredentialSource, *, quick: bool
                 ) -> S3Client:
    config = request.uploader
    policy = RetryPolicy(budget=config.retry_budget) if not quick else \
        RetryPolicy(max_attempts=2, budget=5)
    return S3Client(request.bucket, credentials, policy, stall_timeout=config.stall_timeout,
                    max_connections=config.upload_concurrency + 8)


def check_store(request: MountRequest) -> CredentialSource:
    """Resolve credentials and reach the bucket, before anything is mounted."""
    credentials = CredentialSource(request.profile)
    credentials.load_blocking()

    async def probe() -> None:
        client = _make_client(request, credentials, quick=True)
        try:
            await _preflight(client)
        finally:
            await client.aclose()

    trio.run(probe)
    return credentials


async def _watch_signals() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def _serve(request: MountRequest, credentials: CredentialSource,
                 ready: trio.Event | None = None) -> None:
    client = _make_client(request, credentials, quick=False)
    uploader = Uploader(request.uploader, client)
    client.on_retry = uploader.count_retry
    try:
        with trio.fail_after(60):
            await leftovers.clean(client)
    except Exception as exc:
        log.warning("could not look for uploads left by earlier mounts: %s", exc)
    operations = ChuteOperations(uploader, client, request.mountpoint)
    options = set(pyfuse3.default_options)
    options |= {f"fsname=chute:{request.bucket.bucket}/{request.bucket.prefix}".rstrip("/"),
                "subtype=chute"}
    if request.allow_other:
        options.add("allow_other")
    pyfuse3.init(operations, request.mountpoint, options)
    unmounted = False
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(uploader.run)
            await nursery.start(control.serve, operations.mountpoint, uploader.snapshot)
            nursery.start_soon(_watch_signals)
            log.info("mounted s3://%s/%s at %s (ring %d x %d MiB, %d uploads in flight)",
                     request.bucket.bucket, request.bucket.prefix, request.mountpoint,
                     len(uploader.ring.slots), request.uploader.slice_size >> 20,
                     request.uploader.upload_concurrency)
            if ready is not None:
                ready.set()
            await pyfuse3.main(min_tasks=2, max_tasks=64)
            if uploader.uploads:
                await operations.abort_open_files("the mount is stopping")
            nursery.cancel_scope.cancel()
        pyfuse3.close(unmount=True)
        unmounted = True
    finally:
        if not unmounted:
            pyfuse3.close(unmount=True)
        with trio.CancelScope(shield=True):
            await client.aclose()
    log.info("unmounted %s", request.mountpoint)


def run_mount(request: MountRequest) -> int:
    """Check, mount, serve until unmounted; the exit status for the CLI."""
    check_mountpoint(request.mountpoint)
    request.uploader.validate()
    credentials = check_store(request)
    try:
        trio.run(_serve, request, credentials)
    except RuntimeError as exc:
        if "fuse_session_mount" in str(exc) or "mount" in str(exc).lower():
            raise ConfigError(f"mounting {request.mountpoint} failed: {exc}") from None
        raise
    return 0


