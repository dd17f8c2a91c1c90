"""The ``chute`` command line's grammar: its subcommands and flags, and where a value comes from.

:func:`parse_args` reads argv; for ``mount`` each option's value is layered: the flag typed on
the command line, else the ``--config`` file (config_file.py, which reads its keys off the same
``mount`` parser, so a flag and its file key cannot drift apart), else the built-in default.
:func:`mount_parser` is that parser alone (for ``mount.chute``'s option check). What each
command then does is cli.py's job; this module only says what was asked, and checks nothing a
parser cannot (options.py checks the rest before mounting).

Invariant: ``args.explicit`` is exactly the set of mount options typed on the command line
(the value of every other one came from the file or the default).
"""

from __future__ import annotations

import argparse

from chute.fs import config_file, options, upload_options
from chute.fs.policy import (
    DEFAULT_RENAME_DIR_MAX_BYTES,
    DEFAULT_RENAME_DIR_MAX_OBJECTS,
)
from chute.uploader.config import (
    DEFAULT_RETRY_BUDGET,
    DEFAULT_RING_SIZE,
    DEFAULT_SLICE_SIZE,
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_UPLOAD_CONCURRENCY,
)
from chute.uploader.late_patches import DEFAULT_PATCH_BACK, DEFAULT_PATCH_BUDGET, PATCH_BACK_MODES
from chute.uploader.moves import MAX_KEYS as MAX_MOVE_KEYS
from chute.uploader.read_budget import DEFAULT_READ_BUDGET
from chute.uploader.sizes import format_size, parse_size


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _object_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= count <= MAX_MOVE_KEYS:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_MOVE_KEYS}")
    return count


def _mount_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    mount = sub.add_parser(
        "mount", help="mount a write-only directory that uploads to a bucket",
        description="Mount MOUNTPOINT; files written into it stream to the bucket and are "
        "complete objects when close() returns. Without a remote, an embedded local "
        "SeaweedFS store is started. Every option can also be set in a TOML file (--config); "
        "flags given here override the file.",
    )
    mount.add_argument("mountpoint", help="an existing, empty directory")
    mount.add_argument("remote", nargs="?", help="s3://BUCKET[/PREFIX] (default: embedded store)")
    store = mount.add_argument_group("store")
    store.add_argument("--endpoint-url", metavar="URL",
                       help="S3 endpoint (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the "
                       "profile, or AWS S3)")
    store.add_argument("--region", metavar="REGION",
                       help="signing region (default: AWS_REGION, the profile, or us-east-1)")
    store.add_argument("--profile", metavar="NAME", help="AWS profile (default: AWS_PROFILE)")
    store.add_argument("--data-dir", metavar="DIR",
                       help="embedded store's data directory (default: "
                       "$XDG_DATA_HOME/chute/seaweedfs)")
    stream = mount.add_argument_group("streaming")
    stream.add_argument("--slice-size", type=_size, metavar="SIZE", default=DEFAULT_SLICE_SIZE,
                        help="bytes per ring slot = per multipart part; caps a file at "
                        f"10,000 slices (default {format_size(DEFAULT_SLICE_SIZE)}; "
                        "accepts 8MiB, 1GiB)")
    stream.add_argument("--ring-size", type=_size, metavar="SIZE", default=DEFAULT_RING_SIZE,
                        help="total ring bytes: all the data memory the mount uses, rounded "
                        "down to a whole number of slices; at most the memory available "
                        f"(default {format_size(DEFAULT_RING_SIZE)})")
    stream.add_argument("--upload-concurrency", type=int, metavar="N",
                        default=DEFAULT_UPLOAD_CONCURRENCY,
                        help="parts in flight at once; 1 sends each file's parts in order "
                        f"(default {DEFAULT_UPLOAD_CONCURRENCY})")
    stream.add_argument("--checksum", choices=("crc32c", "md5"), default="crc32c",
                        help="checksum the store verifies on every part (default crc32c)")
    stream.add_argument("--patch-back", choices=PATCH_BACK_MODES, default=DEFAULT_PATCH_BACK,
                        help="which uploads are made at a hidden temporary key, so that writes "
                        "into parts already sent can land (composed server-side at close): "
                        "auto = files opened O_RDWR or that wrote back into an earlier slice "
                        "but the first; "
                        "always = every multipart upload (a server-side copy of each file at "
                        f"close); never = such writes fail with EINVAL (default "
                        f"{DEFAULT_PATCH_BACK})")
    stream.add_argument("--patch-budget", type=_size, metavar="SIZE",
                        default=DEFAULT_PATCH_BUDGET,
                        help="memory for writes into parts already sent, all files together, "
                        "beside the ring; beyond it such a write fails with ENOBUFS (default "
                        f"{format_size(DEFAULT_PATCH_BUDGET)})")
    reliability = mount.add_argument_group("reliability")
    reliability.add_argument("--stall-timeout", type=float, metavar="SECONDS",
                             default=DEFAULT_STALL_TIMEOUT,
                             help="seconds without progress before a transfer is retried "
                             f"(default {DEFAULT_STALL_TIMEOUT:g})")
    reliability.add_argument("--retry-budget", type=float, metavar="SECONDS",
                             default=DEFAULT_RETRY_BUDGET,
                             help="seconds a request is retried before the writer gets EIO "
                             f"(default {DEFAULT_RETRY_BUDGET:g})")
    policy = mount.add_argument_group("policy")
    policy.add_argument("--no-overwrite", action="store_true",
                        help="never replace an object: opening an existing file for writing "
                        "(with O_TRUNC or not) and renaming onto an existing name fail with "
                        "EEXIST (so rsync can add new files but not update changed ones); a "
                        "name that appears in the bucket while its file is being written "
                        "makes the last close fail with EEXIST, the other object untouched "
                        "(default: replace)")
    policy.add_argument("--no-delete", action="store_true",
                        help="never delete an object: unlink, rmdir of an empty directory and "
                        "every rename (a copy, then a delete of the source) fail with EPERM, "
                        "so rsync needs --inplace; with --no-overwrite the mount only adds "
                        "(default: allowed)")
    policy.add_argument("--commit-partial", action="store_true",
                        help="finish a file whose writer died with it open (killed by a "
                        "signal, or exited non-zero) like any other, as a plain filesystem "
                        "does (default: drop it, so no truncated object appears and an object "
                        "it was to replace stays untouched)")
    policy.add_argument("--rename-dir-max-objects", type=_object_count, metavar="N",
                        default=DEFAULT_RENAME_DIR_MAX_OBJECTS,
                        help="rename a non-empty directory only if it holds at most N objects "
                        "(copied server-side one by one, then deleted; not atomic); beyond, "
                        f"EOPNOTSUPP; 0 refuses all (default {DEFAULT_RENAME_DIR_MAX_OBJECTS}, "
                        f"at most {MAX_MOVE_KEYS})")
    policy.add_argument("--rename-dir-max-bytes", type=_size, metavar="SIZE",
                        default=DEFAULT_RENAME_DIR_MAX_BYTES,
                        help="rename a non-empty directory only if its objects total at most "
                        "SIZE (the rename blocks until every server-side copy has landed) "
                        f"(default {format_size(DEFAULT_RENAME_DIR_MAX_BYTES)})")
    reads = mount.add_argument_group("reading")
    reads.add_argument("--allow-read", action="store_true",
                       help="let finished objects be read through the mount (ranged GETs, "
                       "streamed, never staged); a file being written is EBUSY until its "
                       "last close (default: write-only: opens for reading succeed, read() "
                       "fails with EACCES)")
    reads.add_argument("--direct-reads", action="store_true",
                       help="with --allow-read: bypass the kernel's page cache for files "
                       "opened for reading, so each read() goes to the mount at the "
                       "reader's size (fast for readers of 1 MiB at a time, slow for small "
                       "reads; no shared mmap; nothing cached between opens) "
                       "(default: the page cache and 1 MiB readahead)")
    reads.add_argument("--read-budget", type=_size, metavar="SIZE",
                       default=DEFAULT_READ_BUDGET,
                       help="memory all readers share for data fetched ahead or in flight, "
                       f"separate from the ring (default {format_size(DEFAULT_READ_BUDGET)})")
    upload_options.add_arguments(mount)
    service = mount.add_argument_group("service")
    service.add_argument("--config", metavar="FILE",
                         help="TOML file of these options (ring_size = \"64MiB\", "
                         "remote = \"s3://...\"); flags override it (default: none)")
    service.add_argument("--daemon", action="store_true",
                         help="run in the background; return once mounted, non-zero with "
                         "the reason if mounting failed (default: foreground)")
    service.add_argument("--allow-other", action="store_true",
                         help="let other users use the mount (needs user_allow_other in "
                         "/etc/fuse.conf unless root; permissions are still checked) "
                         "(default: only the mounting user)")
    service.add_argument("--uid", type=options.owner_id, metavar="UID",
                         help="owner every file and directory shows (default: the mounting "
                         "user; with --allow-other, the user who should rewrite files)")
    service.add_argument("--gid", type=options.owner_id, metavar="GID",
                         help="group every file and directory shows (default: the mounting "
                         "user's group)")
    service.add_argument("--metrics-addr", metavar="HOST:PORT",
                         help="serve Prometheus metrics at http://HOST:PORT/metrics; a "
                         "non-loopback HOST only from the command line (default: off)")
    logs = mount.add_argument_group("logging")
    logs.add_argument("-v", "--verbose", action="count", default=0,
                      help="more logging (-v debug, -vv also HTTP)")
    logs.add_argument("-q", "--quiet", action="store_true", help="errors only")
    logs.add_argument("--log-file", metavar="FILE",
                      help="append the log here (default: stderr; with --daemon: syslog)")
    return mount


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The whole command line, and its ``mount`` subcommand (for --config and mount.chute)."""
    parser = argparse.ArgumentParser(
        prog="chute", description="Stream files written to a directory into S3.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    mount = _mount_parser(sub)
    status = sub.add_parser("status", help="show what a running mount is uploading")
    status.add_argument("mountpoint")
    status.add_argument("--json", action="store_true", help="one machine-readable snapshot "
                        "(with --watch: one JSON object per line)")
    status.add_argument("--watch", action="store_true",
                        help="redraw live with progress bars until Ctrl-C")
    status.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                        help="seconds between redraws with --watch (default 1)")
    unmount = sub.add_parser(
        "unmount", help="wait for open files to finish uploading, then unmount",
        description="Wait until no file in the mount is open, unmount it, and return once "
        "the mount process has exited. Files still open at the timeout (or at once with "
        "--abandon) are named and abandoned: their uploads are aborted.",
    )
    unmount.add_argument("mountpoint")
    unmount.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                         help="seconds to wait for open files (default 300); then they are "
                         "abandoned and the exit status is 1")
    unmount.add_argument("--abandon", action="store_true",
                         help="do not wait: abandon open files now (exit status 0)")
    verify = sub.add_parser(
        "verify", help="compare a local file with its uploaded object, without downloading",
        description="Hash LOCAL_FILE with xxh3-128 and compare with the digest chute stored "
        "with the object. Exit status 0 match, 1 mismatch, 2 cannot tell.",
    )
    verify.add_argument("local_file")
    verify.add_argument("remote", help="a path inside a chute mount, or s3://BUCKET/KEY")
    verify.add_argument("--endpoint-url", help="S3 endpoint for s3:// (default: the AWS "
                        "conventions, as for mount)")
    verify.add_argument("--region", help="signing region (default: AWS_REGION or us-east-1)")
    verify.add_argument("--profile", help="AWS profile (default: AWS_PROFILE)")
    return parser, mount


def mount_parser() -> argparse.ArgumentParser:
    return _parsers()[1]


class _Unset:
    """Default of every mount option while parsing: tells a flag given from one left out."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse; for ``mount``, layer built-in defaults < --config file < flags given.

    ``args.explicit`` is the set of mount options typed on the command line.
    """
    parser, mount = _parsers()
    options = config_file.options(mount)
    builtin = {dest: mount.get_default(dest) for dest in options}
    # a count (-v) adds to its default, so its "not given" is None rather than a sentinel
    # (and a repeatable flag appends to it)
    repeated = argparse._CountAction | argparse._AppendAction
    mount.set_defaults(**{dest: None if isinstance(action, repeated) else _UNSET
                          for dest, action in options.items()})
    args = parser.parse_args(argv)
    if args.command != "mount":
        return args
    explicit = {dest for dest in options if getattr(args, dest) not in (_UNSET, None)}
    from_file = config_file.load(args.config, mount) if args.config else {}
    for dest in options:
        value = getattr(args, dest) if dest in explicit else from_file.get(dest, builtin[dest])
        setattr(args, dest, value)
    args.explicit = explicit
    return args
