"""Ports of the embedded store: ten explicit loopback ports, stable across restarts.

Every port (HTTP and gRPC of each component, plus the admin server, which listens even with its
UI off) is chosen explicitly, outside the kernel's ephemeral range so that no outgoing
connection can take one while the server is down. The gRPC one is HTTP + 10000: weed's own
convention, which its maintenance worker relies on (it dials the admin at -admin.port + 10000
whatever -admin.port.grpc says). Unpassed or unavailable ports are silently moved by weed;
explicit ones fail loudly.

weed always serves (and dials) its in-process gRPC at /tmp/seaweedfs-SVC-grpc-PORT.sock; a
port whose path there another user owns is never chosen (see ``foreign_sockets``).
Ports chosen by live stores of this process are reserved here until released, so two stores
started side by side never pick the same ones.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import socket
import threading
from collections.abc import Iterable
from pathlib import Path

HOST = "127.0.0.1"
SERVICES = ("s3", "master", "volume", "filer", "admin")
PORT_OPTIONS = tuple(f"{svc}.port{grpc}" for svc in SERVICES for grpc in ("", ".grpc"))
GRPC_OFFSET = 10000


class NoFreePorts(Exception):
    """Not enough free TCP ports on 127.0.0.1."""


_reserved_lock = threading.Lock()
_reserved: set[int] = set()
"""Ports chosen by live stores in this process."""


def choose(recorded: dict[str, int] | None, pinned_s3: int | None) -> dict[str, int]:
    """Reuse ``recorded`` ports if all are free, else pick new ones; reserves the result."""
    with _reserved_lock:
        if recorded is not None and all(
            p not in _reserved and _port_is_free(p) for p in recorded.values()
        ):
            ports = dict(recorded)
        else:
            ports = {}
            taken = set(_reserved)
            if pinned_s3 is not None:
                ports["s3.port"] = pinned_s3
                grpc = pinned_s3 + GRPC_OFFSET
                if grpc > 65535 or grpc in taken or not _port_is_free(grpc):
                    grpc = _free_port(taken | {pinned_s3})  # only the admin needs the offset
                ports["s3.port.grpc"] = grpc
                taken.update(ports.values())
            for svc in SERVICES:
                if f"{svc}.port" not in ports:
                    http = _free_port_pair(taken)
                    ports[f"{svc}.port"] = http
                    ports[f"{svc}.port.grpc"] = http + GRPC_OFFSET
                    taken.update((http, http + GRPC_OFFSET))
        _reserved.update(ports.values())
        return ports


def reserve(ports: dict[str, int]) -> None:
    with _reserved_lock:
        _reserved.update(ports.values())


def release(ports: dict[str, int]) -> None:
    with _reserved_lock:
        _reserved.difference_update(ports.values())


def read_recorded(path: Path, pinned_s3: int | None) -> dict[str, int] | None:
    """The ports recorded in ``path`` if they are a complete, sane set (and match the pin)."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or set(recorded) != set(PORT_OPTIONS):
        return None
    if not all(isinstance(p, int) and 0 < p < 65536 for p in recorded.values()):
        return None
    if len(set(recorded.values())) != len(recorded):
        return None
    if pinned_s3 is not None and recorded["s3.port"] != pinned_s3:
        return None
    return recorded


def _ephemeral_low() -> int:
    """The first port the kernel hands to outgoing connections (and bind to port 0)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def foreign_sockets(ports: Iterable[int]) -> list[str]:
    """The paths weed would use for these ports under /tmp that another user owns.

    weed always serves (and dials) its in-process gRPC at /tmp/seaweedfs-SVC-grpc-PORT.sock
    and cannot replace a file another user put there: its own components would then dial that
    user's socket (mutual TLS makes that fail, not leak, but the store would not work).
    """
    me = os.geteuid()
    found = []
    for port in ports:
        for service in SERVICES:
            for path in (f"/tmp/seaweedfs-{service}-grpc-{port}.sock",
                         f"/tmp/seaweedfs-{service}-{port}.sock"):
                try:
                    owner = os.lstat(path).st_uid
                except OSError:
                    continue
                if owner != me:
                    found.append(path)
    return found


def _port_is_free(port: int) -> bool:
    """Whether weed could listen on 127.0.0.1:port (Go listeners set SO_REUSEADDR too)."""
    if foreign_sockets((port,)):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port_pair(taken: set[int]) -> int:
    """A free port P with P + 10000 free too, both below the ephemeral range if possible.

    Ports outgoing connections draw from could be taken by one while weed is down, and a
    restart could then not serve the same endpoint.
    """
    top = min(_ephemeral_low(), 65536) - GRPC_OFFSET  # P + 10000 stays below the range
    below = (random.randrange(10000, top) for _ in range(200 if top - 10000 >= 1000 else 0))
    anywhere = (_kernel_port() for _ in range(200))  # unusual range: take what there is
    for port in itertools.chain(below, anywhere):
        pair = (port, port + GRPC_OFFSET)
        if pair[1] <= 65535 and not taken.intersection(pair) and all(map(_port_is_free, pair)):
            return port
    raise NoFreePorts("cannot find free TCP ports on 127.0.0.1 for the embedded store")


def _free_port(taken: set[int]) -> int:
    for _ in range(200):
        port = _kernel_port()
        if port not in taken:
            return port
    raise NoFreePorts("cannot find free TCP ports on 127.0.0.1 for the embedded store")


def _kernel_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])
