"""Fixtures only: a real SeaweedFS store, an independent boto3 client, real FUSE mounts.

End-to-end tests never mock the store or FUSE: they start ``weed mini`` on loopback (the
embedded store chute itself uses), run ``chute mount`` as a subprocess exactly as a user
would, drive the mount with real tools, and check the bucket with boto3. The helpers these
fixtures use live in ``tests/support/``, where test modules import them from.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from chute.fs.embedded_store import EmbeddedStore
from tests.support.mounts import Mount, launch_mount, wait_until_mounted
from tests.support.store import BUCKET, direct_client, store_env


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStore]:
    """One SeaweedFS for the whole session; tests use distinct key prefixes."""
    server = EmbeddedStore(tmp_path_factory.mktemp("seaweedfs"), bucket=BUCKET)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3(store: EmbeddedStore):
    """An independent client for checking what landed in the bucket."""
    return direct_client(store)


@pytest.fixture
def mount_factory(store: EmbeddedStore, tmp_path: Path):
    """Start ``chute mount`` on a fresh directory with a fresh prefix; unmount at the end."""
    mounts: list[Mount] = []

    def start(*options: str, prefix: str | None = None,
              server: EmbeddedStore | None = None) -> Mount:
        server = server or store
        path = tmp_path / f"mnt{len(mounts)}"
        path.mkdir()
        mount = launch_mount(path, tmp_path / f"mount{len(mounts)}.log", server.endpoint_url,
                             store_env(server), options, prefix)
        mounts.append(mount)
        wait_until_mounted(mount)
        return mount

    yield start
    for mount in mounts:
        with contextlib.suppress(Exception):
            mount.unmount()
