"""Fixtures shared by the whole suite: a fresh PostgreSQL database per test session,
and (per module that asks) a running mxfed scene and an outsider remote server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support import mxfed_process
from tests.support.databases import create_database, drop_database
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.ports import HeldPort
from tests.support.scene import Scene, start_scene, stop_scene

# The keys service fixtures (and the gateway wired to it), for every test.
pytest_plugins = ["tests.support.keys_service"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{mxfed_process.WHOLE_STACK}: starts a whole mxfed in the pass's mode; "
        "MXFED_TEST_SINGLE_PROCESS=1 -m whole_stack runs these against mxfed run "
        "--single-process",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before the test's fixtures: a module's whole mxfed starts in its first test's setup.
    mxfed_process.running_test = item


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """One database for the session's in-process services (not for a whole mxfed: a
    database belongs to one server, so every MxfedProcess gets its own)."""
    url = await create_database()
    yield url
    await drop_database(url)


@pytest.fixture
async def own_database_url() -> AsyncIterator[str]:
    """A database of this test's own, e.g. for the one mxfed it runs."""
    url = await create_database("mxfed_own")
    yield url
    await drop_database(url)


@pytest.fixture(scope="module")
async def scene(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Scene]:
    """A running mxfed and a fake remote homeserver, one per test module that asks
    (``mxfed run --single-process`` for a module that sets ``SCENE_SINGLE_PROCESS = True``)."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    started, scene_database_url = await start_scene(
        tmp_path_factory.mktemp(name),
        single_process=getattr(request.module, "SCENE_SINGLE_PROCESS", False),
    )
    yield started
    await stop_scene(started, scene_database_url)


@pytest.fixture(scope="module")
async def outsider() -> AsyncIterator[FakeHomeserver]:
    """A second remote server, with no member in any room."""
    server = FakeHomeserver(key_version="outsider1")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port held by the test and not listening: connections to it are refused."""
    held = HeldPort()
    yield held.port
    held.release()
