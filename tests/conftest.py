"""Fixtures only: a real SeaweedFS store, an independent boto3 client, real FUSE mounts.

End-to-end tests never mock the store or FUSE: they start ``weed mini`` on loopback (the
embedded store chute itself uses), run ``chute mount`` as a subprocess exactly as a user
would, drive the mount with real tools, and check the bucket with boto3. The helpers these
fixtures use live in ``tests/support/``, where test modules import them from.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from chute.fs.embedded_store import EmbeddedStore
from tests.support.held_listings import HeldListings
from tests.support.memory_mount import Mounted, memory_mount
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


E2E_FIXTURES = frozenset({"store", "s3", "mount_factory"})
"""Fixtures that start SeaweedFS or FUSE mounts: only tests marked ``e2e`` may use them."""


def _uses_e2e_fixtures(item: pytest.Item) -> bool:
    """Whether ``item`` gets one of this module's E2E_FIXTURES (not a same-named fixture of
    its own, such as an in-memory ``store``)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for name in E2E_FIXTURES & set(info.names_closure):
        definitions = info.name2fixturedefs.get(name) or ()
        if definitions and getattr(definitions[-1].func, "__module__", None) == __name__:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep ``pytest -m "not e2e"`` honest: a test that asks for the session's store or a
    mount but is not marked ``e2e`` is an error at collection, not a slow surprise in the
    unit run."""
    unmarked = [item.nodeid for item in items
                if _uses_e2e_fixtures(item) and item.get_closest_marker("e2e") is None]
    if unmarked:
        raise pytest.UsageError("tests that use the store or a mount must be marked e2e "
                                "(pytestmark = pytest.mark.e2e): " + ", ".join(unmarked))


@pytest.fixture
async def m() -> AsyncIterator[Mounted]:
    """An in-memory mount (tests/support/memory_mount.py) for unit tests of the fs layer."""
    async for mounted in memory_mount():
        yield mounted


@pytest.fixture
async def held_mount() -> AsyncIterator[tuple[Mounted, HeldListings, trio.Nursery]]:
    """An in-memory mount on a store whose listings and HEADs a test can hold or delay
    (tests/support/held_listings.py), with the lookups' background nursery running as
    mount.py runs it; the test may cancel that nursery (unmount)."""
    store = HeldListings()
    async for mounted in memory_mount(store=store):
        async with trio.open_nursery() as nursery:
            await nursery.start(mounted.ops.lookups.run)
            yield mounted, store, nursery
            nursery.cancel_scope.cancel()
