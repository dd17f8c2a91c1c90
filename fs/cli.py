"""The ``chute`` command line.

``chute mount MOUNTPOINT [s3://BUCKET[/PREFIX]]`` mounts in the foreground until Ctrl-C,
SIGTERM or ``fusermount3 -u MOUNTPOINT``. Without a remote it starts the embedded store (a
SeaweedFS ``weed mini`` bound to 127.0.0.1, data under the user's data directory) and stops it
when the mount ends. Every problem found before mounting is one sentence on stderr and exit
status 2 for usage errors, 1 for anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys

from chute.uploader.config import (
    DEFAULT_RING_SIZE,
    DEFAULT_SLICE_SIZE,
    DEFAULT_UPLOAD_CONCURRENCY,
    UploaderConfig,
)
from chute.uploader.credentials import resolve_endpoint, resolve_region
from chute.uploader.errors import ConfigError
from chute.uploader.s3 import Bucket
from chute.uploader.sizes import format_size, parse_size

log = logging.getLogger("chute")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_remote(remote: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix/")."""
    if not remote.startswith("s3://"):
        raise ConfigError(f"remote must look like s3://BUCKET[/PREFIX], got {remote!r}")
    bucket, _, prefix = remote[len("s3://"):].partition("/")
    if not bucket:
        raise ConfigError(f"no bucket name in {remote!r}")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chute", description="Stream files written to a directory into S3.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    mount = sub.add_parser(
        "mount", help="mount a write-only directory that uploads to a bucket",
        description="Mount MOUNTPOINT; files written into it stream to the bucket and are "
        "complete objects when close() returns. Without a remote, an embedded local "
        "SeaweedFS store is started.",
    )
    mount.add_argument("mountpoint", help="an existing, empty directory")
    mount.add_argument("remote", nargs="?", help="s3://BUCKET[/PREFIX] (default: embedded store)")
    store = mount.add_argument_group("store")
    store.add_argument("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL_S3, "
                       "AWS_ENDPOINT_URL, the profile, or AWS S3)")
    store.add_argument("--region", help="signing region (default: AWS_REGION, the profile, "
                       "or us-east-1)")
    store.add_argument("--profile", help="AWS profile (default: AWS_PROFILE)")
    store.add_argument("--data-dir", help="embedded store's data directory (default: "
                       "$XDG_DATA_HOME/chute/seaweedfs)")
    stream = mount.add_argument_group("streaming")
    stream.add_argument("--slice-size", type=_size, default=DEFAULT_SLICE_SIZE,
                        help="bytes per ring slot = per multipart part; caps a file at "
                        f"10,000 slices (default {format_size(DEFAULT_SLICE_SIZE)}; "
                        "accepts 8MiB, 1GiB)")
    stream.add_argument("--ring-size", type=_size, default=DEFAULT_RING_SIZE,
                        help="total ring bytes: all the data memory the mount uses "
                        f"(default {format_size(DEFAULT_RING_SIZE)})")
    stream.add_argument("--upload-concurrency", type=int, default=DEFAULT_UPLOAD_CONCURRENCY,
                        help="parts in flight at once; 1 sends each file's parts in order "
                        f"(default {DEFAULT_UPLOAD_CONCURRENCY})")
    stream.add_argument("--checksum", choices=("crc32c", "md5"), default="crc32c",
                        help="checksum the store verifies on every part (default crc32c)")
    reliability = mount.add_argument_group("reliability")
    reliability.add_argument("--stall-timeout", type=float, default=30.0,
                             help="seconds without progress before a transfer is retried "
                             "(default 30)")
    reliability.add_argument("--retry-budget", type=float, default=150.0,
                             help="seconds a request is retried before the writer gets EIO "
                             "(default 150)")
    mount.add_argument("--allow-other", action="store_true",
                       help="let other users use the mount (needs user_allow_other)")
    mount.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    mount.add_argument("-q", "--quiet", action="store_true", help="errors only")
    mount.add_argument("--log-file", help="append the log here instead of stderr")
    status = sub.add_parser("status", help="show what a running mount is uploading")
    status.add_argument("mountpoint")
    status.add_argument("--json", action="store_true", help="one machine-readable snapshot")
    return parser


def _status(args: argparse.Namespace) -> int:
    import json

    from chute.fs.control import query

    try:
        snapshot = query(args.mountpoint)
    except (LookupError, OSError) as exc:
        print(f"chute: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(snapshot, indent=2))
        return 0
    ring = snapshot["ring"]
    print(f"{snapshot['mountpoint']}: ring {ring['slots']} x {format_size(ring['slice_size'])}"
          f"  free {ring['free']}  filling {ring['filling']}  sealed {ring['sealed']}  "
          f"uploading {ring['uploading']}  writers waiting {ring['writers_waiting']}  "
          f"blocked {ring['blocked_seconds']:.1f} s")
    for f in snapshot["files"]:
        print(f"  {f['path']}: received {format_size(f['bytes_received'])}, acknowledged "
              f"{format_size(f['bytes_acknowledged'])}, {f['parts_in_flight']} parts in flight, "
              f"{f['throughput_bps'] / 1e6:.1f} MB/s, {f['retries']} retries, {f['state']}")
    if not snapshot["files"]:
        print("  no file is being written")
    return 0


def _setup_logging(verbose: int, quiet: bool, log_file: str | None = None) -> None:
    """Timestamps on a terminal or in a file; none when journald (or another collector)
    reads stderr and stamps each line itself."""
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO
    stamped = log_file is not None or sys.stderr.isatty()
    handler: logging.Handler = (logging.FileHandler(log_file) if log_file
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s" if stamped
        else "%(levelname)s %(name)s: %(message)s"
    ))
    logging.basicConfig(level=level, handlers=[handler])
    # botocore logs canonical requests and signatures at DEBUG: never let it, at any -v.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    if verbose < 2:
        for noisy in ("httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _mount(args: argparse.Namespace) -> int:
    from chute.fs.mount import MountRequest, check_mountpoint, run_mount

    config = UploaderConfig(
        slice_size=args.slice_size, ring_size=args.ring_size,
        upload_concurrency=args.upload_concurrency, checksum=args.checksum,
        stall_timeout=args.stall_timeout, retry_budget=args.retry_budget,
    )
    config.validate()
    if args.remote:
        bucket_name, prefix = parse_remote(args.remote)
        bucket = Bucket(bucket_name, prefix,
                        endpoint_url=resolve_endpoint(args.profile, args.endpoint_url),
                        region=resolve_region(args.profile, args.region))
        return run_mount(MountRequest(args.mountpoint, bucket, config, args.profile,
                                      args.allow_other))

    import os
    from pathlib import Path

    from chute.fs.embedded_store import EmbeddedStore

    check_mountpoint(args.mountpoint)
    store = EmbeddedStore(Path(args.data_dir) if args.data_dir else None)
    store.start()
    try:
        os.environ["AWS_ACCESS_KEY_ID"] = store.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = store.secret_key
        os.environ.pop("AWS_SESSION_TOKEN", None)
        print(
            f"chute: embedded store at {store.endpoint_url}, bucket {store.bucket}\n"
            f"chute: credentials in {store.credentials_file} (profile chute); inspect with\n"
            f"  AWS_SHARED_CREDENTIALS_FILE={store.credentials_file} aws --profile chute "
            f"--endpoint-url {store.endpoint_url} s3 ls s3://{store.bucket}/\n"
            f"chute: mounting at {args.mountpoint} (ring {format_size(config.ring_size)}, "
            f"slice {format_size(config.slice_size)}); Ctrl-C or fusermount3 -u to stop",
            file=sys.stderr, flush=True,
        )
        bucket = Bucket(store.bucket, "", endpoint_url=store.endpoint_url, region=store.region)
        return run_mount(MountRequest(args.mountpoint, bucket, config, None, args.allow_other))
    finally:
        store.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False),
                   getattr(args, "log_file", None))
    try:
        if args.command == "mount":
            return _mount(args)
        if args.command == "status":
            return _status(args)
    except ConfigError as exc:
        print(f"chute: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
