"""The ``chute`` command line.

``chute mount MOUNTPOINT [s3://BUCKET[/PREFIX]]`` mounts in the foreground until Ctrl-C,
SIGTERM or ``fusermount3 -u MOUNTPOINT`` (in the background with ``--daemon``). Without a
remote it starts the embedded store (a SeaweedFS ``weed mini`` bound to 127.0.0.1, data under
the user's data directory) and stops it when the mount ends. Every problem found before
mounting is one sentence on stderr and exit status 2 for usage errors (a bad ``--config`` file
included), 1 for anything else. A mount option's value comes from the command line, else the
``--config`` file, else the built-in default: that grammar is cli_args.py's (:func:`parse_args`,
re-exported here); this module runs what was asked.

``chute status`` / ``unmount`` / ``verify`` watch, stop and check mounts; each lives in its own
module, imported only when used.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from chute.fs import options, upload_options
from chute.fs.logs import setup_logging
from chute.fs.policy import (
    MountPolicy,
)
from chute.uploader.config import (
    UploaderConfig,
)
from chute.uploader.errors import ConfigError
from chute.uploader.s3 import Bucket
from chute.uploader.sizes import format_size

from .cli_args import mount_parser, parse_args

__all__ = ["main", "mount_parser", "mount_policy", "parse_args"]

log = logging.getLogger("chute")


def _metrics_addr(args: argparse.Namespace) -> tuple[str, int] | None:
    if not args.metrics_addr:
        return None
    from chute.fs import metrics

    host, port = metrics.parse_address(args.metrics_addr)
    metrics.check_exposure(host, explicit="metrics_addr" in args.explicit)
    return host, port


def _mount(args: argparse.Namespace) -> int:
    """Check what can be checked here, then mount in the foreground or the background."""
    config = UploaderConfig(
        slice_size=args.slice_size, ring_size=args.ring_size,
        upload_concurrency=args.upload_concurrency, checksum=args.checksum,
        stall_timeout=args.stall_timeout, retry_budget=args.retry_budget,
        patch_back=args.patch_back, patch_budget=args.patch_budget,
    )
    config.validate()
    metrics_addr = _metrics_addr(args)
    # the background process works from /: every path it is given must be absolute
    for name in ("mountpoint", "log_file", "data_dir"):
        if getattr(args, name):
            setattr(args, name, os.path.abspath(getattr(args, name)))
    args.object_options = upload_options.object_options(args)
    args.bucket = options.check_mount(args, config)  # the rest, before anything starts
    from chute.fs import control

    args.lock = control.lock_mountpoint(os.path.realpath(args.mountpoint))
    if not args.daemon:
        return _mount_here(args, config, metrics_addr, on_ready=None)
    from chute.fs import daemon

    if args.log_file is None and not os.path.exists("/dev/log"):
        print("chute: warning: --daemon without --log-file and no syslog at /dev/log: the "
              "mount's log is discarded", file=sys.stderr)
    verdict = daemon.detach()
    if isinstance(verdict, int):
        return verdict  # the parent: the mount's outcome
    control.mark_lock_holder(args.lock)
    setup_logging(args.verbose, args.quiet, args.log_file, background=True)
    try:
        return _mount_here(args, config, metrics_addr, on_ready=verdict.ready)
    except ConfigError as exc:
        log.error("%s", exc)
        verdict.fail(str(exc))
        return 1
    except BaseException as exc:
        log.exception("the mount failed")
        verdict.fail(f"the mount failed: {exc or type(exc).__name__}")
        raise
    finally:
        verdict.fail("the mount ended before it was ready")  # no-op once ready was sent


def mount_policy(args: argparse.Namespace) -> MountPolicy:
    """What the mount refuses (fs policy, not the uploader's config)."""
    # object lock: an object under retention can be neither replaced nor deleted
    lock = args.object_lock_mode is not None or args.legal_hold
    return MountPolicy(no_overwrite=args.no_overwrite or lock, no_delete=args.no_delete or lock,
                       commit_partial=args.commit_partial, allow_read=args.allow_read,
                       direct_reads=args.direct_reads,
                       read_budget=args.read_budget, uid=args.uid, gid=args.gid,
                       rename_dir_max_objects=args.rename_dir_max_objects,
                       rename_dir_max_bytes=args.rename_dir_max_bytes)


def _mount_here(args: argparse.Namespace, config: UploaderConfig,
                metrics_addr: tuple[str, int] | None,
                on_ready: Callable[[], None] | None) -> int:
    from chute.fs.mount import MountRequest, check_mountpoint, run_mount

    policy = mount_policy(args)

    if args.bucket is not None:
        return run_mount(MountRequest(args.mountpoint, args.bucket, config, args.profile,
                                      args.allow_other, metrics_addr, policy,
                                      object_options=args.object_options,
                                      bwlimit=args.bwlimit), on_ready)

    from pathlib import Path

    from chute.fs.embedded_store import EmbeddedStore

    check_mountpoint(args.mountpoint)
    store = EmbeddedStore(Path(args.data_dir) if args.data_dir else None)
    store.start()
    try:
        os.environ["AWS_ACCESS_KEY_ID"] = store.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = store.secret_key
        os.environ.pop("AWS_SESSION_TOKEN", None)
        banner = (
            f"chute: embedded store at {store.endpoint_url}, bucket {store.bucket}\n"
            f"chute: credentials in {store.credentials_file} (profile chute); inspect with\n"
            f"  AWS_SHARED_CREDENTIALS_FILE={store.credentials_file} aws --profile chute "
            f"--endpoint-url {store.endpoint_url} s3 ls s3://{store.bucket}/\n"
            f"chute: mounting at {args.mountpoint} (ring {format_size(config.ring_size)}, "
            f"slice {format_size(config.slice_size)}); Ctrl-C or fusermount3 -u to stop"
        )
        if args.daemon:
            log.info("%s", banner)
        else:
            print(banner, file=sys.stderr, flush=True)
        bucket = Bucket(store.bucket, "", endpoint_url=store.endpoint_url, region=store.region)
        return run_mount(MountRequest(args.mountpoint, bucket, config, None, args.allow_other,
                                      metrics_addr, policy, object_options=args.object_options,
                                      bwlimit=args.bwlimit), on_ready)
    finally:
        store.stop()


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ConfigError as exc:  # a bad --config file
        print(f"chute: {exc}", file=sys.stderr)
        return 2
    try:
        setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False),
                       getattr(args, "log_file", None))
    except OSError as exc:
        print(f"chute: cannot open the log file {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        options.check_command(args)
        if args.command == "mount":
            return _mount(args)
        if args.command == "status":
            from chute.fs.watch import status

            return status(args.mountpoint, watch=args.watch, interval=args.interval,
                          as_json=args.json)
        if args.command == "unmount":
            from chute.fs.unmount import unmount

            return unmount(args.mountpoint, timeout=args.timeout, abandon=args.abandon)
        if args.command == "verify":
            from chute.fs.verify import verify

            if args.endpoint_url:
                options.check_endpoint(args.endpoint_url)
            return verify(args.local_file, args.remote, endpoint_url=args.endpoint_url,
                          region=args.region, profile=args.profile)
    except ConfigError as exc:
        print(f"chute: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
