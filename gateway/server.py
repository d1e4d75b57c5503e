"""Runs the gateway: uvicorn over TLS on ``gateway_listen``, metrics beside it."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from gateway.app import create_app
from gateway.tls_client_certificates import client_certificate_options
from mxfed.config import Config
from mxfed.identity_files import ensure_tls_pair
from mxfed.listening import bind_tcp, start_metrics_server
from mxfed.logs import setup_logging

log = logging.getLogger(__name__)


async def run_gateway(config: Config) -> None:
    setup_logging("gateway", config.log_level, config.log_format)
    ensure_tls_pair(config.tls_certificate, config.tls_private_key, config.server_name)
    listener = bind_tcp(config.gateway_listen, reuse_port=config.listen_reuse_port)
    start_metrics_server(config.gateway_metrics_listen, reuse_port=config.listen_reuse_port)
    options: dict[str, Any] = {"http": "httptools"}
    if config.require_tls_client_certificate_match:
        ca_file = str(config.tls_client_ca_file) if config.tls_client_ca_file else None
        options = client_certificate_options(ca_file)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            ssl_certfile=str(config.tls_certificate),
            ssl_keyfile=str(config.tls_private_key),
            log_config=None,
            access_log=False,
            loop="none",
            server_header=False,
            timeout_graceful_shutdown=5,
            **options,
        )
    )
    log.info("gateway starting", extra={"listen": config.gateway_listen})
    await server.serve(sockets=[listener])
