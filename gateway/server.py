"""Runs the gateway: uvicorn over TLS on ``gateway_listen``, metrics beside it.

The ports are bound before anything else, so a port in use is a start-up
error naming the option; the gateway reports ready once its own ``/health``
answers over TLS through its socket, as any client would see it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import grpc
import uvicorn

from gateway.app import create_app
from gateway.tls_client_certificates import client_certificate_options
from mxfed.config import Config
from mxfed.identity_files import ensure_tls_pair
from mxfed.internal_plane import client_address
from mxfed.listening import bind_tcp, start_metrics_server
from mxfed.logs import setup_logging
from mxfed.probes import gateway_health
from mxfed.startup import StartupError, listen_failure, report_ready
from mxfed.tracing import asgi_middleware, setup_tracing

log = logging.getLogger(__name__)


async def run_gateway(config: Config, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn's own handlers) or ``stop`` is set."""
    setup_logging("gateway", config.log_level, config.log_format)
    setup_tracing("gateway", config)
    try:
        ensure_tls_pair(config.tls_certificate, config.tls_private_key, config.server_name)
    except OSError as exc:
        raise StartupError(
            f"cannot read or create the TLS pair {config.tls_certificate}: {exc.strerror or exc}",
            "set tls_certificate_path and tls_private_key_path to a readable pair",
        ) from None
    try:
        listener = bind_tcp(config.gateway_listen, reuse_port=config.listen_reuse_port)
    except OSError as exc:
        raise listen_failure(exc, config.gateway_listen, "gateway_listen") from None
    try:
        start_metrics_server(config.gateway_metrics_listen, reuse_port=config.listen_reuse_port)
    except OSError as exc:
        listener.close()
        raise listen_failure(exc, config.gateway_metrics_listen, "gateway_metrics_listen") from None
    options: dict[str, Any] = {"http": "httptools"}
    if config.require_tls_client_certificate_match:
        ca_file = str(config.tls_client_ca_file) if config.tls_client_ca_file else None
        options = client_certificate_options(ca_file)
    app = create_app(config)
    server_config = uvicorn.Config(
        asgi_middleware(app),
        ssl_certfile=str(config.tls_certificate),
        ssl_keyfile=str(config.tls_private_key),
        log_config=None,
        access_log=False,
        loop="none",
        # The federation API has no WebSocket routes: no WebSocket library loaded.
        ws="none",
        server_header=False,
        timeout_graceful_shutdown=5,
        **options,
    )
    try:
        server_config.load()
    except (ssl.SSLError, OSError) as exc:
        listener.close()
        raise StartupError(
            f"cannot load the TLS pair {config.tls_certificate} / {config.tls_private_key}: {exc}",
            "fix tls_certificate_path and tls_private_key_path (PEM certificate and key)",
        ) from None
    server = _Server(server_config)
    log.info("gateway starting", extra={"listen": config.gateway_listen})
    port = listener.getsockname()[1]
    readiness = asyncio.create_task(
        _report_when_serving(server, config, port, app.state.services.channels.values())
    )
    stopper = asyncio.create_task(_exit_on(stop, server)) if stop is not None else None
    try:
        await server.serve(sockets=[listener])
    finally:
        readiness.cancel()
        if stopper is not None:
            stopper.cancel()


async def _exit_on(stop: asyncio.Event, server: uvicorn.Server) -> None:
    await stop.wait()
    server.should_exit = True


async def _report_when_serving(
    server: uvicorn.Server, config: Config, port: int, channels: Iterable[grpc.aio.Channel]
) -> None:
    listen_host = config.gateway_listen.rpartition(":")[0]
    host = client_address(f"{listen_host}:{port}").rpartition(":")[0]
    # Polls a socket: there is no event to wait for.
    while not (server.started and await gateway_health(host, port) == "SERVING"):  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    # Parts start together: a channel that tried a service before it listened waits out
    # its reconnect backoff, and requests meanwhile would be answered "unavailable".
    # Ready means requests can be served, so wait until every channel is connected.
    await asyncio.gather(*(channel.channel_ready() for channel in channels))
    report_ready("gateway")


class _Server(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # An idle keep-alive TLS connection closes only once the peer answers our
        # close_notify, which an idle client does when it next reads: uvicorn would wait out
        # its whole graceful timeout for it. Abort those; requests in flight still finish.
        for connection in list(self.server_state.connections):
            cycle = getattr(connection, "cycle", None)
            if cycle is None or cycle.response_complete:
                connection.transport.abort()
        await super().shutdown(sockets)
