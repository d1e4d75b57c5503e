"""Fixtures for the keys service: its schema on the test database, fake key
servers, a keyring talking to them, the servicer on a real gRPC port, and a
gateway app wired to it (driven over ASGI).

A pytest plugin: ``tests/conftest.py`` registers it, so every test can ask for
these fixtures by name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import APIRouter, FastAPI

from gateway.app import create_app
from gateway.service_clients import ServiceClients
from mxfed.config import Config
from mxfed.database import apply_migrations, create_pool
from mxfed.federation_client import FederationClient, OutboundOptions
from mxfed.identity_files import current_signing_key
from mxfed.service_runtime import migrations_directory
from mxfed_api.keys.v1 import keys_pb2_grpc
from services.keys.keyring import Keyring
from services.keys.own_keys import OwnKeys
from services.keys.server import build_keyring
from services.keys.servicer import KeysServicer
from services.keys.storage import KeysStorage
from tests.support.databases import truncate
from tests.support.federation_doctor import inert_doctor
from tests.support.grpc_plane import (
    bind_loopback,
    channel_to,
    make_server,
    plane_settings,
)
from tests.support.key_servers import FakeKeyServer

OUR_SERVER = "keys-test.example"


@pytest.fixture(scope="session")
async def keys_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=5)
    await apply_migrations(pool, "keys", migrations_directory("keys"))
    await apply_migrations(pool, "accounts", migrations_directory("accounts"))
    yield pool
    await pool.close()


@pytest.fixture
async def keys_storage(keys_pool: asyncpg.Pool) -> KeysStorage:
    await truncate(
        keys_pool, "keys.server_key_responses, keys.server_verify_keys, keys.own_old_keys"
    )
    return KeysStorage(keys_pool)


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fake-key-server-tls")


@pytest.fixture
async def key_server_factory(
    tls_dir: Path,
) -> AsyncIterator[Callable[..., Awaitable[FakeKeyServer]]]:
    started: list[FakeKeyServer] = []

    async def start(**kwargs: Any) -> FakeKeyServer:
        server = await FakeKeyServer(tls_dir, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()


@pytest.fixture
def keys_config(tmp_path: Path) -> Config:
    return Config(
        server_name=OUR_SERVER, data_dir=tmp_path, key_valid_for_ms=3600 * 1000, **plane_settings()
    )


@pytest.fixture
async def federation_client(keys_config: Config) -> AsyncIterator[FederationClient]:
    key = current_signing_key(keys_config.signing_key)
    client = FederationClient(
        keys_config.server_name,
        key.signing_key,
        key.key_id,
        OutboundOptions(verify_tls=False, allowed_ip_ranges=["127.0.0.0/8"], max_retries=0),
    )
    yield client
    await client.close()


@dataclass
class KeysUnderTest:
    config: Config
    keyring: Keyring
    own_keys: OwnKeys
    storage: KeysStorage


@pytest.fixture
def make_keys(
    keys_config: Config, keys_storage: KeysStorage, federation_client: FederationClient
) -> Callable[..., KeysUnderTest]:
    def make(**options: Any) -> KeysUnderTest:
        config = keys_config.model_copy(update=options.pop("config", {}))
        options.setdefault("min_backoff", 0.3)
        options.setdefault("refetch_interval", 0.0)
        options.setdefault("fetch_timeout", 5.0)
        keyring, own_keys = build_keyring(config, keys_storage, federation_client, **options)
        return KeysUnderTest(config, keyring, own_keys, keys_storage)

    return make


@dataclass
class KeysService:
    stub: keys_pb2_grpc.KeysStub
    keys: KeysUnderTest
    address: str


@pytest.fixture
async def keys_service(make_keys: Callable[..., KeysUnderTest]) -> AsyncIterator[KeysService]:
    keys = make_keys()
    server = make_server("keys")
    keys_pb2_grpc.add_KeysServicer_to_server(
        KeysServicer(keys.keyring, keys.own_keys, inert_doctor(keys.config, keys.own_keys)), server
    )
    address = bind_loopback(server, "keys")
    await server.start()
    channel = channel_to(address, "keys")
    yield KeysService(keys_pb2_grpc.KeysStub(channel), keys, address)
    await channel.close()
    await server.stop(grace=None)


@dataclass
class Gateway:
    app: FastAPI
    http: httpx.AsyncClient
    config: Config
    keys: KeysService


async def open_gateway(
    keys_service: KeysService, router: APIRouter | None = None, **options: object
) -> tuple[Gateway, ServiceClients]:
    config = Config(
        server_name=OUR_SERVER, keys_address=keys_service.address, **plane_settings(), **options
    )
    clients = ServiceClients(config)
    app = create_app(config, clients)
    if router is not None:
        app.include_router(router)
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
        base_url="https://gateway.test",
    )
    return Gateway(app, http, config, keys_service), clients


@pytest.fixture
async def gateway(keys_service: KeysService) -> AsyncIterator[Gateway]:
    opened, clients = await open_gateway(keys_service)
    yield opened
    await opened.http.aclose()
    await clients.close()
