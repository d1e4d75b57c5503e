"""Fixtures for interop tests against a real Synapse on loopback.

- ``synapse``: session-scoped, started on first use, default room version (12).
- ``synapse_v10``: session-scoped, ``default_room_version: "10"`` (room ids with :server);
  only started if a test asks for it.
- ``synapse_client`` / ``synapse_v10_client``: a fresh ``SynapseClient`` per test.
- ``mxfed``: module-scoped, a whole mxfed (``MxfedProcess``) on its own database, named
  after the test module; ``mx``: a fresh :class:`tests.support.mx.Mx` on it per test.

Helpers live in ``synapse_harness`` (this directory is put on sys.path here, so tests
can ``from synapse_harness import SynapseServer, SynapseClient, wait_until``).
Set MXFED_KEEP_SYNAPSE_DIR=1 to keep the temp dirs (config, logs, sqlite) after the run.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synapse_harness import SynapseClient, SynapseServer

from tests.support.databases import create_database, drop_database
from tests.support.mx import Mx
from tests.support.mxfed_process import MxfedProcess


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "interop: runs against a real Synapse homeserver (slow, spawns processes)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test using a Synapse fixture is an interop test, marked or not.
    for item in items:
        if {"synapse", "synapse_v10"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.interop)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # A failed interop test shows what Synapse logged: its directory is gone after the run.
    report = yield
    if report.failed:
        for name in ("synapse", "synapse_v10"):
            server = getattr(item, "funcargs", {}).get(name)
            if isinstance(server, SynapseServer):
                report.sections.append((f"{name} log", server.read_log_tail(200)))
    return report


def _serve(server: SynapseServer) -> Iterator[SynapseServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def synapse() -> Iterator[SynapseServer]:
    yield from _serve(SynapseServer())


@pytest.fixture(scope="session")
def synapse_v10() -> Iterator[SynapseServer]:
    yield from _serve(SynapseServer(default_room_version="10"))


@pytest.fixture
async def synapse_client(synapse: SynapseServer) -> AsyncIterator[SynapseClient]:
    async with synapse.client() as client:
        yield client


@pytest.fixture
async def synapse_v10_client(synapse_v10: SynapseServer) -> AsyncIterator[SynapseClient]:
    async with synapse_v10.client() as client:
        yield client


@pytest.fixture(scope="module")
def mxfed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MxfedProcess]:
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    database_url = asyncio.run(create_database(f"mxfed_{name}"))
    process = MxfedProcess(tmp_path_factory.mktemp(name) / "data", database_url)
    process.start()
    try:
        yield process
    finally:
        process.stop()
        asyncio.run(drop_database(database_url))


@pytest.fixture
async def mx(mxfed: MxfedProcess) -> AsyncIterator[Mx]:
    client = Mx(mxfed)
    yield client
    await client.close()
