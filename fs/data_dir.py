"""The embedded store's data directory: where it is, and whether chute may use it.

It holds the store's keys, certificates and objects, so chute keeps it 0700. The check is
separate from the store so ``chute mount`` can run it before anything starts (chute.fs.options)
and the store again as it prepares the directory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from chute.uploader.errors import ConfigError


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/chute/seaweedfs, else ~/.local/share/chute/seaweedfs (XDG base dirs)."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "chute" / "seaweedfs"


def check_data_dir(data_dir: Path) -> None:
    """Refuse an existing data directory that is not the user's own and private.

    chute makes the directory 0700 because it holds the store's keys and data; done blindly,
    ``--data-dir /tmp`` (or any shared directory) would silently go from 1777 to 0700 and
    lock its other users out. So a directory that exists must be owned by the user and not
    writable by group or others (which is how chute creates it); only then is it tightened
    to 0700. One that does not exist yet is created by chute, 0700."""
    try:
        info = os.stat(data_dir)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot use the data directory {data_dir}: "
                          f"{exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"the data directory {data_dir} is not a directory")
    if info.st_uid != os.getuid():
        raise ConfigError(
            f"the data directory {data_dir} belongs to another user (uid {info.st_uid}): give "
            "--data-dir a directory of your own, or one that does not exist yet")
    if info.st_mode & 0o022:
        raise ConfigError(
            f"the data directory {data_dir} is writable by others (mode "
            f"{stat.S_IMODE(info.st_mode):04o}): chute keeps its keys there and would make it "
            "0700; give --data-dir a private directory, or one that does not exist yet")
