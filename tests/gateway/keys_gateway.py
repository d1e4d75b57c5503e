"""A gateway app wired to a real keys service (gRPC on loopback), driven over ASGI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from gateway.app import create_app
from gateway.service_clients import ServiceClients
from mxfed.config import Config
from tests.services.keys import fixtures
from tests.services.keys.fixtures import OUR_SERVER, KeysService

# The keys service fixtures; test modules bring them in with
# ``from tests.gateway.keys_gateway import KEYS_FIXTURES`` and ``globals().update``.
KEYS_FIXTURES = {
    name: getattr(fixtures, name)
    for name in (
        "federation_client",
        "key_server_factory",
        "keys_config",
        "keys_pool",
        "keys_service",
        "keys_storage",
        "make_keys",
        "tls_dir",
    )
}


@dataclass
class Gateway:
    app: FastAPI
    http: httpx.AsyncClient
    config: Config
    keys: KeysService


async def open_gateway(
    keys_service: KeysService, router: APIRouter | None = None, **options: object
) -> tuple[Gateway, ServiceClients]:
    config = Config(server_name=OUR_SERVER, keys_address=keys_service.address, **options)
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


KEYS_FIXTURES["gateway"] = gateway
