"""Oversized request bodies are refused with 413 M_TOO_LARGE before a handler reads them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from fastapi import APIRouter, Request

from gateway.app import create_app
from gateway.body_limit import MAX_BODY_BYTES
from gateway.responses import JsonResponse
from gateway.service_clients import ServiceClients
from mxfed.config import Config
from tests.support.grpc_plane import plane_settings

echo = APIRouter()


@echo.put("/test/echo-size")
async def echo_size(request: Request) -> JsonResponse:
    return JsonResponse({"size": len(await request.body())})


def _client() -> httpx.AsyncClient:
    config = Config(server_name="limits.test", **plane_settings())
    app = create_app(config, ServiceClients(config))
    app.include_router(echo)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


async def test_a_body_within_the_limit_is_served() -> None:
    async with _client() as client:
        response = await client.put("/test/echo-size", content=b"x" * 1_000_000)
    assert response.status_code == 200
    assert response.json() == {"size": 1_000_000}


async def test_a_declared_oversized_body_is_refused() -> None:
    async with _client() as client:
        response = await client.put("/test/echo-size", content=b"x" * (MAX_BODY_BYTES + 1))
    assert response.status_code == 413
    assert response.json()["errcode"] == "M_TOO_LARGE"


async def test_an_oversized_chunked_body_is_refused() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY_BYTES // 65_536 + 2):
            yield b"x" * 65_536

    async with _client() as client:
        response = await client.put("/test/echo-size", content=chunks())
    assert response.status_code == 413
    assert response.json()["errcode"] == "M_TOO_LARGE"
