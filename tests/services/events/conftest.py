"""Events service fixtures: the service on a real gRPC port against the test
database, a real keys service, and a "remote" homeserver (an HTTPS key server
on loopback plus helpers that build PDUs signed with its key)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from mxfed.config import Config
from mxfed.database import apply_migrations, create_pool
from mxfed.service_runtime import ServiceContext, migrations_directory
from mxfed_api.events.v1 import events_pb2_grpc
from services.events.server import setup
from tests.support.events_service import OUR_SERVER, EventsService, RemoteServer
from tests.support.grpc_plane import (
    bind_loopback,
    channel_to,
    make_server,
    plane_settings,
)
from tests.support.key_servers import FakeKeyServer


@pytest.fixture(scope="session")
async def events_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=4)
    await apply_migrations(pool, "events", migrations_directory("events"))
    yield pool
    await pool.close()


@pytest.fixture
async def events_factory(
    database_url: str,
    events_pool: asyncpg.Pool,
    keys_service: Any,  # noqa: F811
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[EventsService]]]:
    """Starts events-service replicas (each with its own pool) on the test database.

    Keyword arguments are configuration settings of the replica.
    """
    started: list[tuple[grpc.aio.Server, ServiceContext, grpc.aio.Channel]] = []

    async def start(**settings: Any) -> EventsService:
        config = Config(
            server_name=OUR_SERVER,
            data_dir=tmp_path,
            database_url=database_url,
            keys_address=keys_service.address,
            **plane_settings(),
            **settings,
        )
        pool = await create_pool(database_url, max_size=12)
        server = make_server("events")
        context = ServiceContext(name="events", config=config, pool=pool, server=server)
        await setup(context)
        address = bind_loopback(server, "events")
        await server.start()
        channel = channel_to(address, "events")
        started.append((server, context, channel))
        return EventsService(
            # The key file the keys service publishes (the same data_dir).
            events_pb2_grpc.EventsStub(channel),
            OUR_SERVER,
            context.signing_key(),
            server,
            pool,
            channel,
        )

    yield start
    for server, context, channel in started:
        await channel.close()
        await server.stop(grace=None)
        await context.close()
        await context.pool.close()


@pytest.fixture
async def events(events_factory: Callable[[], Awaitable[EventsService]]) -> EventsService:
    return await events_factory()


@pytest.fixture
async def remote(
    key_server_factory: Callable[..., Awaitable[FakeKeyServer]],  # noqa: F811
) -> RemoteServer:
    key_server = await key_server_factory()
    return RemoteServer(key_server)
