"""``mount.chute``: the helper mount(8) runs for ``mount -t fuse.chute`` and /etc/fstab.

For a type ``fuse.chute``, util-linux's mount(8) looks for ``/sbin/mount.fuse.chute`` before
falling back to the generic ``mount.fuse`` (which would run a program named ``chute`` with
mount's arguments, a calling convention the ``chute`` command does not have). So the helper is
installed by linking it there::

    ln -s "$(command -v mount.chute)" /sbin/mount.fuse.chute

and mount(8) calls it as (checked on Debian 12, util-linux 2.38)::

    mount.fuse.chute SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS] [-t fuse.chute]

SOURCE is ``s3://BUCKET[/PREFIX]``, or ``embedded`` for the embedded store. Each option
``name=value`` becomes ``--name value`` of ``chute mount`` and a bare ``name`` becomes
``--name`` (``allow_other``, ``config=/etc/chute/backup.toml``, ``ring_size=64MiB``).
Options that belong to mount(8), the kernel or systemd (``rw``, ``_netdev``, ``nofail``,
``x-systemd.*``, ...) are dropped. The mount then runs as ``chute mount --daemon``, so this
returns once the filesystem is mounted, non-zero with the reason if it could not be.
"""

from __future__ import annotations

import argparse
import sys

from . import cli

GENERIC_OPTIONS = frozenset({
    "rw", "defaults", "auto", "noauto", "nofail", "_netdev", "user", "users", "nouser",
    "owner", "group", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "async", "sync",
    "atime", "noatime", "relatime", "strictatime", "diratime", "nodiratime", "lazytime",
    "default_permissions", "fsname", "subtype", "comment",
})
"""Options of mount(8), the kernel or systemd: not chute's business (default_permissions is
always on)."""
EMBEDDED_SOURCES = frozenset({"embedded", "chute", "none"})


class HelperError(Exception):
    pass


def chute_arguments(source: str, mountpoint: str, options: list[str], *,
                    sloppy: bool = False, verbose: bool = False) -> list[str]:
    """The ``chute mount`` command line for mount(8)'s arguments."""
    known = {flag for action in cli.mount_parser()._actions for flag in action.option_strings}
    argv = ["mount", "--daemon", mountpoint]
    if source not in EMBEDDED_SOURCES:
        argv.append(source)
    if verbose:
        argv.append("-v")
    for option in ",".join(options).split(","):
        name, has_value, value = option.partition("=")
        if not name or name in GENERIC_OPTIONS or name.startswith("x-"):
            continue
        if name == "ro":
            raise HelperError("a chute mount is write-only; 'ro' makes no sense for it")
        flag = "--" + name.replace("_", "-")
        if flag not in known:
            if sloppy:
                continue
            raise HelperError(f"unknown mount option {name!r} (chute's options are the "
                              "flags of chute mount, with _ for -)")
        argv += [flag, value] if has_value else [flag]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mount.chute", description="mount(8) helper for chute: mount -t fuse.chute "
        "s3://BUCKET[/PREFIX] MOUNTPOINT -o OPTIONS",
    )
    parser.add_argument("source", help="s3://BUCKET[/PREFIX], or 'embedded'")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", action="append", default=[],
                        help="comma-separated options: chute mount's flags with _ for -")
    parser.add_argument("-s", dest="sloppy", action="store_true",
                        help="ignore unknown options")
    parser.add_argument("-f", dest="fake", action="store_true", help="do everything but mount")
    parser.add_argument("-n", dest="no_mtab", action="store_true", help="(no mtab to update)")
    parser.add_argument("-v", dest="verbose", action="store_true", help="more logging")
    parser.add_argument("-t", dest="type", help="the type mount(8) was given (fuse.chute)")
    parser.add_argument("-N", dest="namespace", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.namespace:
        print("mount.chute: -N (mount namespaces) is not supported", file=sys.stderr)
        return 1
    try:
        chute_argv = chute_arguments(args.source, args.mountpoint, args.options,
                                     sloppy=args.sloppy, verbose=args.verbose)
    except HelperError as exc:
        print(f"mount.chute: {exc}", file=sys.stderr)
        return 1
    if args.fake:
        return 0
    return cli.main(chute_argv)


if __name__ == "__main__":
    sys.exit(main())
