"""The FastAPI application: one router module per area of the federation spec.

Routers live in ``gateway/routes/<area>.py`` and each exposes ``router``;
cross-cutting concerns (X-Matrix verification, errors, metrics) are
dependencies and handlers installed here, never copied into handlers.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway.access_log import install_access_log
from gateway.body_limit import BodyLimitMiddleware
from gateway.errors import install_error_handlers
from gateway.metrics import install_metrics
from gateway.origin_limits import OriginLimiter, OriginLimitMiddleware
from gateway.request_target import RefuseNulMiddleware
from gateway.routes.media import DownloadSlots
from gateway.service_clients import ServiceClients
from mxfed.config import Config
from mxfed.process_metrics import measure_loop_lag
from mxfed.server_policy import SERVER_POLICY, follow_server_policy, grpc_policy_fetcher
from mxfed.verify_key_cache import VerifyKeyCache

ROUTE_MODULES = [
    "health",
    "version",
    "keys",
    "well_known",
    "transactions",
    "events",
    "history",
    "membership",
    "directory_query",
    "directory",
    "queries",  # after directory_query: it answers every other /query/{queryType}
    "devices",
    "openid",
    "third_party",
    "media",
]


def create_app(config: Config, clients: ServiceClients | None = None) -> FastAPI:
    owned_clients = clients is None
    service_clients = clients or ServiceClients(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        follower = None
        if owned_clients:
            # The operator's server block list, read from the events process.
            SERVER_POLICY.own_server_name = config.server_name
            follower = asyncio.create_task(
                follow_server_policy(
                    grpc_policy_fetcher(service_clients.channel("events")),
                    config.server_policy_refresh_interval,
                )
            )
        lag = asyncio.create_task(measure_loop_lag()) if owned_clients else None
        yield
        if lag is not None:
            lag.cancel()
        if follower is not None:
            follower.cancel()
        if owned_clients:
            await service_clients.close()

    app = FastAPI(
        title="mxfed federation gateway",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
        # A trailing-slash variant of a route is an unknown endpoint (404
        # M_UNRECOGNIZED), not a 307 with an empty body.
        redirect_slashes=False,
    )
    app.state.config = config
    app.state.services = service_clients
    install_error_handlers(app)
    install_metrics(app)
    app.state.origin_limiter = OriginLimiter()
    # Origins' current keys from the keys service's answers: X-Matrix checked here.
    app.state.request_keys = VerifyKeyCache("gateway_request_keys")
    app.state.media_download_slots = DownloadSlots(config.media_downloads_per_origin)
    app.add_middleware(OriginLimitMiddleware, limiter=app.state.origin_limiter)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(RefuseNulMiddleware)
    install_access_log(app, config.access_log_level)  # last added: outermost
    for name in ROUTE_MODULES:
        app.include_router(importlib.import_module(f"gateway.routes.{name}").router)
    return app
