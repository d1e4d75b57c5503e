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
from tests.services.keys.fixtures import (  # noqa: F401 - fixtures used by the gateway tests
    OUR_SERVER,
    KeysService,
    federation_client,
    key_server_factory,
    keys_config,
    keys_pool,
    keys_service,
    keys_storage,
    make_keys,
    tls_dir,
)


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
