"""The gateway counts requests by route template and status."""

from __future__ import annotations

import httpx
from prometheus_client import REGISTRY

from gateway.app import create_app
from gateway.service_clients import ServiceClients
from mxfed.config import Config
from tests.support.grpc_plane import plane_settings


def _count(route: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "mxfed_gateway_requests_total", {"method": "GET", "route": route, "status": status}
    )
    return value or 0.0


async def test_requests_are_counted_by_route_template_and_status() -> None:
    config = Config(server_name="metrics.test", **plane_settings())
    app = create_app(config, ServiceClients(config))
    version = "/_matrix/federation/v1/version"
    before = (_count(version, "200"), _count("unmatched", "404"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        assert (await client.get(version)).status_code == 200
        assert (await client.get("/_matrix/federation/v1/nothing")).status_code == 404
    assert _count(version, "200") == before[0] + 1
    assert _count("unmatched", "404") == before[1] + 1
