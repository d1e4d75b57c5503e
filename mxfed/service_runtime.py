"""The common lifecycle of every gRPC service process: build, run, stop.

A service package ``services/<name>/`` provides ``server.py`` with
``async def setup(context: ServiceContext) -> None`` that registers its
servicers on ``context.server`` and may start background tasks with
``context.spawn``. This module owns the rest: logging, the database pool and
the service's migrations, the standard gRPC health service, Prometheus
metrics, and a clean stop on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from mxfed.config import Config
from mxfed.database import apply_migrations, create_pool
from mxfed.identity_files import ServerSigningKey, load_or_create_signing_key
from mxfed.internal_plane import Caller, bind_port, new_server, open_channel
from mxfed.listening import start_metrics_server
from mxfed.logs import setup_logging

log = logging.getLogger(__name__)


@dataclass
class ServiceContext:
    """What a service's ``setup`` gets to build itself with."""

    name: str
    config: Config
    pool: asyncpg.Pool
    server: grpc.aio.Server
    signing_key: ServerSigningKey
    # Identifies this replica in leases and logs.
    instance_id: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def channel(self, service: str) -> grpc.aio.Channel:
        """A shared channel to another mxfed service (``keys``, ``events``...)."""
        if service not in self._channels:
            self._channels[service] = open_channel(
                self.config, service, caller=Caller.part(self.name)
            )
        return self._channels[service]

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(_log_task_failure)
        self._tasks.append(task)
        return task

    def on_stop(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._on_stop.append(callback)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for callback in reversed(self._on_stop):
            await callback()
        for channel in self._channels.values():
            await channel.close()


def _log_task_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "background task failed",
            exc_info=task.exception(),
            extra={"task": task.get_name()},
        )


def migrations_directory(service: str) -> Path:
    module = importlib.import_module(f"services.{service}")
    return Path(module.__file__ or "").parent / "migrations"


async def run_service(name: str, config: Config, stop: asyncio.Event | None = None) -> None:
    """Run one service until SIGTERM/SIGINT (or ``stop`` is set)."""
    setup_logging(name, config.log_level, config.log_format)
    if not config.database_url:
        raise RuntimeError("database_url must be resolved before a service starts")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    pool = await create_pool(config.database_url, max_size=config.database_pool_size)
    applied = await apply_migrations(pool, name, migrations_directory(name))
    server = new_server(config, name)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    context = ServiceContext(
        name=name,
        config=config,
        pool=pool,
        server=server,
        signing_key=load_or_create_signing_key(config.signing_key),
    )
    setup = importlib.import_module(f"services.{name}.server").setup
    await setup(context)

    listen = config.listen_address(name)
    bind_port(server, config, name, listen)
    await server.start()
    start_metrics_server(config.metrics_address(name), reuse_port=config.listen_reuse_port)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await health.set(f"mxfed.{name}.v1", health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "service started",
        extra={
            "listen": listen,
            "metrics": config.metrics_address(name),
            "migrations_applied": applied,
            "instance": context.instance_id,
        },
    )
    await stop.wait()
    log.info("service stopping")
    await health.enter_graceful_shutdown()
    await server.stop(grace=5)
    await context.close()
    await pool.close()
    log.info("service stopped")
