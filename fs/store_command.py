"""What ``weed mini`` is told: the command line of the embedded store.

Every flag here serves embedded_store.py's guarantees: every listener on 127.0.0.1 (``-ip``,
``-ip.bind``), no telemetry report, no WebDAV, admin UI or Iceberg/Lance catalogue, the
launch's security configuration (``-config_dir``, fs/store_security.py), the identities file
(fs/store_credentials.py), every port chosen explicitly (fs/store_ports.py), and a quick stop.

Invariant: the command is a pure function of its arguments (no environment, no files read),
so the same store directory and ports always give the same command.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .store_ports import HOST


def command(weed: Path, *, config_dir: Path | str, weed_dir: Path, identities_file: Path,
            ports: Mapping[str, int], bucket: str) -> list[str]:
    """The argv that runs ``weed`` as the store: its data in ``weed_dir``, serving ``bucket``."""
    return [
        str(weed), f"-config_dir={config_dir}", "mini",
        f"-dir={weed_dir}",
        f"-ip={HOST}", f"-ip.bind={HOST}",
        f"-s3.config={identities_file}",
        *(f"-{option}={port}" for option, port in ports.items()),
        f"-bucket={bucket}",
        "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false",  # on by default: an HTTPS report to seaweedfs.com
        "-volume.preStopSeconds=0",  # no peers to drain for: stops in ~1 s, not ~4
        # On SIGTERM the volume server waits for every open connection to close, and now
        # and then one stays open without a request until this read timeout (default 30 s)
        # fires. Its peers are weed's own filer and S3 gateway on loopback sending whole
        # chunks, so a short one costs nothing and bounds stop().
        "-idleTimeout=3",
        *local_socket_options(weed_dir),
    ]


def local_socket_options(weed_dir: Path) -> list[str]:
    """The filer's and S3's Unix sockets in the private weed directory, if paths fit.

    A Unix socket path has at most 107 bytes; beyond that weed's default under /tmp stays
    (0700 by the umask, and a foreign file there makes the port unusable, see store_ports.py).
    """
    options = []
    for service in ("filer", "s3"):
        path = weed_dir / f"{service}.sock"
        if len(os.fsencode(path)) <= 107:
            options.append(f"-{service}.localSocket={path}")
    return options
