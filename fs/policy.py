"""The mount's policies: what the mount refuses to do to objects already in the bucket.

They belong to the file system, not to the uploader: the FUSE operations decide them before
any request (objects.py, handles.py). The uploader only hears of ``--no-overwrite`` per file,
as ``no_clobber`` (a conditional create, which catches a name taken while it was written).
Built by cli.py from ``--no-overwrite`` / ``--no-delete`` (or the config file); object lock
(``--object-lock-mode``, ``--legal-hold``: fs/upload_options.py) implies both, since a locked
object can be neither replaced nor deleted: the mount never tries.
"""

from __future__ import annotations

from dataclasses import dataclass

from chute.uploader.read_budget import DEFAULT_READ_BUDGET
from chute.uploader.sizes import GiB

DEFAULT_RENAME_DIR_MAX_OBJECTS = 1000
"""A directory of more objects is not renamed (EOPNOTSUPP): one listing page, copied in a
few seconds (8 server-side copies at a time)."""
DEFAULT_RENAME_DIR_MAX_BYTES = 1 * GiB
"""A directory of more bytes is not renamed (EOPNOTSUPP). Server-side copies pass no byte
through chute, but the store copies at roughly 100 MB/s to 1 GB/s, and rename(2) blocks
its caller (with both parent directories locked by the kernel) until the last copy lands:
about 10 s at the slow end."""


@dataclass(frozen=True)
class MountPolicy:
    no_overwrite: bool = False
    """--no-overwrite: an object already in the bucket is never replaced through the mount;
    opening it for writing and renaming onto it are EEXIST, and each upload is a conditional
    create (If-None-Match), so a name that appears while its file is written fails at close."""
    no_delete: bool = False
    """--no-delete: nothing in the bucket is deleted through the mount; unlink, rmdir and
    rename (a copy, then a delete of the source) are EPERM, as on an append-only directory."""
    commit_partial: bool = False
    """--commit-partial: a file whose last close comes from its writer dying (killed by a
    signal, or exiting non-zero with the file open) is finished like any other, as on a
    plain filesystem. By default it is dropped: no object, and an object it was to replace
    stays as it was (handles.py, writer_exit.py)."""
    allow_read: bool = False
    """--allow-read: finished objects can be read (reads.py); by default an open for reading
    succeeds and its first read() fails with EACCES, as on a write-only mount."""
    direct_reads: bool = False
    """--direct-reads: files opened for reading bypass the kernel's page cache (FUSE
    direct I/O): each read() reaches the mount at the reader's own size (reads.py)."""
    read_budget: int = DEFAULT_READ_BUDGET
    """--read-budget: bytes all readers of the mount may hold at once (fetched ahead, or in
    flight), separate from the write ring."""
    rename_dir_max_objects: int = DEFAULT_RENAME_DIR_MAX_OBJECTS
    """--rename-dir-max-objects: the most objects a directory rename copies (dir_moves.py)."""
    rename_dir_max_bytes: int = DEFAULT_RENAME_DIR_MAX_BYTES
    """--rename-dir-max-bytes: the most bytes a directory rename copies."""
    uid: int | None = None
    """--uid: the owner every file and directory shows (None: the mounting user)."""
    gid: int | None = None
    """--gid: the group every file and directory shows (None: the mounting user's)."""
