"""The mount's local control channel: a Unix socket only the mounting user can reach.

`chute status` asks a running mount what it is doing through this socket. It is a Unix
socket, not a TCP port: no network exposure, and file permissions decide who may ask. The
socket lives in a 0700 directory of the user's runtime dir (``$XDG_RUNTIME_DIR/chute``, else
``/tmp/chute-UID``) and is itself 0600. Its name is derived from the mountpoint's real path,
so ``chute status /mnt/cloud`` finds the right mount without any registry.

Protocol: the client connects and sends one line, ``status``; the mount answers with one line
of JSON and closes the connection. The answer is a :class:`MountStatus` record, made JSON by
:func:`to_json`, the one conversion from statistics records to JSON (records are frozen
dataclasses: see chute.uploader.statistics); :func:`query_status` reads it back as a record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import fcntl
import hashlib
import json
import logging
import os
import socket
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from chute.uploader.errors import ConfigError
from chute.uploader.read_budget import ReadStatistics
from chute.uploader.retry import RetryReason
from chute.uploader.ring import RingStatistics
from chute.uploader.statistics import UploadTotals
from chute.uploader.upload_status import FileUploadStatistics, UploadState
from chute.uploader.uploader import UploaderStatistics

from .listeners import serve_capped

log = logging.getLogger(__name__)

MAX_REQUEST = 256
MAX_CONNECTIONS = 4
"""Status requests served at once (each has 5 s in all): see chute.fs.listeners."""


@dataclass(frozen=True)
class MountStatus:
    """What ``chute status`` answers: where the mount is, and its uploader's statistics."""

    mountpoint: str
    pid: int
    remote: str
    """``s3://bucket/prefix``"""
    endpoint_url: str | None
    metrics_url: str | None
    ring: RingStatistics
    files: tuple[FileUploadStatistics, ...]
    """Files being written now."""
    totals: UploadTotals
    reads: ReadStatistics | None = None
    """The read budget's counters with ``--allow-read``, else None."""

    @classmethod
    def of(cls, uploader: UploaderStatistics, *, mountpoint: str, pid: int, remote: str,
           endpoint_url: str | None, metrics_url: str | None,
           reads: ReadStatistics | None = None) -> MountStatus:
        return cls(mountpoint=mountpoint, pid=pid, remote=remote, endpoint_url=endpoint_url,
                   metrics_url=metrics_url, ring=uploader.ring, files=uploader.files,
                   totals=uploader.totals, reads=reads)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MountStatus:
        """The record :func:`to_json` made ``data`` of (fields it does not know are ignored)."""
        def record(kind: type[Any], values: Mapping[str, Any], **typed: Any) -> Any:
            names = {f.name for f in dataclasses.fields(kind)} - set(typed)
            return kind(**{k: v for k, v in values.items() if k in names}, **typed)

        def reasons(counts: Mapping[str, int]) -> dict[RetryReason, int]:
            return {RetryReason(reason): n for reason, n in counts.items()}

        return record(
            cls, data, ring=record(RingStatistics, data["ring"]),
            files=tuple(record(FileUploadStatistics, f, state=UploadState(f["state"]),
                               retries_by_reason=reasons(f["retries_by_reason"]))
                        for f in data["files"]),
            totals=record(UploadTotals, data["totals"],
                          retries_by_reason=reasons(data["totals"]["retries_by_reason"])),
            reads=record(ReadStatistics, data["reads"]) if data.get("reads") else None,
        )


def to_json(value: Any) -> Any:
    """A statistics record as JSON data: dataclasses become objects (fields in order), enums
    their value, mappings objects (keys as strings), sequences lists, floats rounded to
    milliseconds' precision."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if isinstance(value, Mapping):
        return {str(to_json(k)): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, float):
        return round(value, 3)
    return value


def control_dir() -> Path:
    """The user's private directory for status sockets and mount locks, made safe to use.

    Another local user may have planted ``/tmp/chute-UID`` (or a link there) first: the
    directory is created with mkdir, never followed through a symlink, and refused (a
    :class:`ConfigError`, one sentence) if it is a symlink, not a directory, or owned by
    someone else. Its mode is tightened to 0700 through a descriptor opened with
    O_NOFOLLOW, so no chmod ever reaches a link's target."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "chute" if runtime else Path(f"/tmp/chute-{os.getuid()}")
    try:
        base.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(base, 0o700)
        info = os.lstat(base)
        if stat.S_ISLNK(info.st_mode):
            raise ConfigError(f"the control directory {base} is a symbolic link; remove it "
                              "(another user may have planted it)")
        if not stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"the control directory {base} is not a directory; remove it")
        if info.st_uid != os.getuid():
            raise ConfigError(f"the control directory {base} belongs to another user "
                              f"(uid {info.st_uid}); remove it or set XDG_RUNTIME_DIR")
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            if os.fstat(fd).st_ino != info.st_ino:
                raise ConfigError(f"the control directory {base} changed while it was "
                                  "checked; try again")
            if stat.S_IMODE(info.st_mode) != 0o700:
                os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(f"cannot prepare the control directory {base}: "
                          f"{exc.strerror or exc}") from None
    return base


def _name(mountpoint: str) -> str:
    return hashlib.sha256(mountpoint.encode()).hexdigest()[:16]


def socket_path(mountpoint: str) -> Path:
    """Where the mount at ``mountpoint`` listens (pass the real path, resolved before mounting)."""
    return control_dir() / f"{_name(mountpoint)}.sock"


def lock_path(mountpoint: str) -> Path:
    """The mount lock of ``mountpoint`` (its real path): it holds the holder's pid."""
    return control_dir() / f"{_name(mountpoint)}.lock"


def lock_mountpoint(mountpoint: str) -> int:
    """Hold the mount lock of ``mountpoint`` (its real path) for the life of this process.

    Two ``chute mount`` of one directory started together would otherwise both pass the
    "not already a mount" check, both mount, and the second would take over the first's
    status socket. The lock is an flock on a file in the control directory, taken before
    anything starts; it goes away with the process (and its ``--daemon`` child, which
    inherits the descriptor), so a crashed mount never leaves a stale lock. Returns the
    descriptor (keep it open); a :class:`ConfigError` if another process holds it."""
    path = lock_path(mountpoint)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot create the mount lock {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise ConfigError(f"another chute (pid {holder or '?'}) is already mounting or "
                          f"serving {mountpoint}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def mark_lock_holder(fd: int) -> None:
    """The process now holding the lock (the ``--daemon`` child) names itself in it."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


async def serve(mountpoint: str, status: Callable[[], MountStatus], *,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer status requests until cancelled; removes the socket on the way out.

    The answer is ``status()`` with its ``mountpoint`` as served here (the real path)."""
    path = socket_path(mountpoint)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener_socket = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await listener_socket.bind(str(path))
    finally:
        os.umask(old_umask)
    listener_socket.listen(16)
    listener = trio.SocketListener(listener_socket)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.fail_after(5):  # the whole exchange: see chute.fs.listeners
                    request = await stream.receive_some(MAX_REQUEST)
                    if request.strip() != b"status":
                        await stream.send_all(b'{"error": "unknown request"}\n')
                        return
                    answer = dataclasses.replace(status(), mountpoint=mountpoint)
                    await stream.send_all(json.dumps(to_json(answer)).encode() + b"\n")
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    try:
        async with listener:
            task_status.started()
            await serve_capped(handle, [listener], MAX_CONNECTIONS)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def query(mountpoint: str, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the mount at ``mountpoint`` for its status as JSON data (blocking; for the CLI)."""
    path = socket_path(os.path.realpath(mountpoint))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise LookupError(f"no chute mount is serving {mountpoint}") from None
        sock.sendall(b"status\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))


def query_status(mountpoint: str, timeout: float = 5.0) -> MountStatus:
    """Ask the mount at ``mountpoint`` for its status (blocking; for the CLI)."""
    return MountStatus.from_json(query(mountpoint, timeout))
