"""The mount's local control channel: a Unix socket only the mounting user can reach.

`chute status` asks a running mount what it is doing through this socket. It is a Unix
socket, not a TCP port: no network exposure, and file permissions decide who may ask. The
socket lives in a 0700 directory of the user's runtime dir (``$XDG_RUNTIME_DIR/chute``, else
``/tmp/chute-UID``) and is itself 0600. Its name is derived from the mountpoint's real path,
so ``chute status /mnt/cloud`` finds the right mount without any registry.

Protocol: the client connects and sends one line, ``status``; the mount answers with one line
of JSON (see ``Uploader.snapshot``) and closes the connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger(__name__)

MAX_REQUEST = 256


def control_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "chute" if runtime else Path(f"/tmp/chute-{os.getuid()}")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    if base.stat().st_uid != os.getuid():
        raise PermissionError(f"{base} belongs to another user")
    base.chmod(0o700)
    return base


def socket_path(mountpoint: str) -> Path:
    """Where the mount at ``mountpoint`` listens (pass the real path, resolved before mounting)."""
    digest = hashlib.sha256(mountpoint.encode()).hexdigest()[:16]
    return control_dir() / f"{digest}.sock"


async def serve(mountpoint: str, snapshot: Callable[[], dict[str, Any]], *,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer status requests until cancelled; removes the socket on the way out."""
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
                with trio.fail_after(5):
                    request = await stream.receive_some(MAX_REQUEST)
                if request.strip() != b"status":
                    await stream.send_all(b'{"error": "unknown request"}\n')
                    return
                body = {"mountpoint": mountpoint, **snapshot()}
                await stream.send_all(json.dumps(body).encode() + b"\n")
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    try:
        async with listener:
            task_status.started()
            await trio.serve_listeners(handle, [listener])
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def query(mountpoint: str, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the mount at ``mountpoint`` for its status (blocking; for the CLI)."""
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
