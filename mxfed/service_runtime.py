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
from mxfed.database import (
    apply_migrations,
    create_pool,
    describe,
    wait_for_database,
    with_password,
)
from mxfed.database_claim import claim_database
from mxfed.identity_files import ServerSigningKey, current_signing_key
from mxfed.internal_plane import Caller, bind_port, client_address, new_server, open_channel
from mxfed.listening import bind_tcp, start_metrics_server
from mxfed.logs import setup_logging
from mxfed.startup import StartupError, listen_failure, report_ready

log = logging.getLogger(__name__)


@dataclass
class ServiceContext:
    """What a service's ``setup`` gets to build itself with."""

    name: str
    config: Config
    pool: asyncpg.Pool
    server: grpc.aio.Server
    # Identifies this replica in leases and logs.
    instance_id: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def signing_key(self) -> ServerSigningKey:
        """The server's current signing key: after ``mxfed keys rotate``, the new one within
        a second. Read only by the parts that sign (never the gateway), when they sign."""
        return current_signing_key(self.config.signing_key)

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
    """Run one service until SIGTERM/SIGINT (or ``stop`` is set).

    Start-up problems that a restart would not cure (the database missing or
    another server's, a port taken, tables newer than the code) raise
    :class:`~mxfed.startup.StartupError`. The ports are bound before the
    service is built, and whatever the build started is stopped again if
    the start fails, so a replica that never served leaves nothing behind
    (no sender heartbeat, no lease).
    """
    setup_logging(name, config.log_level, config.log_format)
    if not config.database_url:
        raise RuntimeError("database_url must be resolved before a service starts")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    url = config.database_url
    if config.database_password_file:
        url = with_password(url, config.database_password_file.read_text().strip())
        config.database_url = url
    await wait_for_database(url, config.database_start_timeout)
    pool = await create_pool(url, max_size=config.database_pool_size)
    try:
        await _serve(name, config, pool, stop)
    finally:
        await pool.close()


async def _serve(name: str, config: Config, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
    applied = await apply_migrations(pool, name, migrations_directory(name))
    signing_key = current_signing_key(config.signing_key)
    await claim_database(pool, config.database_url or "", config.server_name, signing_key)

    server = new_server(config, name)
    listen = config.listen_address(name)
    port = _bind_grpc(server, config, name, listen)
    try:
        metrics = start_metrics_server(
            config.metrics_address(name), reuse_port=config.listen_reuse_port
        )
    except OSError as exc:
        raise listen_failure(exc, config.metrics_address(name), f"{name}_metrics_listen") from None
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    probe_server = _health_only_server(config, health)
    context = ServiceContext(
        name=name,
        config=config,
        pool=pool,
        server=server,
    )
    try:
        setup = importlib.import_module(f"services.{name}.server").setup
        await setup(context)
        await server.start()
        if probe_server is not None:
            await probe_server.start()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        await health.set(f"mxfed.{name}.v1", health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "service started",
            extra={
                "listen": listen,
                "metrics": config.metrics_address(name),
                "metrics_port": metrics,
                "database": describe(config.database_url or ""),
                "migrations_applied": applied,
                "instance": context.instance_id,
            },
        )
        readiness = asyncio.create_task(_report_when_serving(config, name, listen, port))
        await stop.wait()
        readiness.cancel()
        log.info("service stopping")
        await health.enter_graceful_shutdown()
        await server.stop(grace=5)
    finally:
        if probe_server is not None:
            await probe_server.stop(grace=None)
        await context.close()
    log.info("service stopped")


def _health_only_server(config: Config, health: HealthServicer) -> grpc.aio.Server | None:
    """The plaintext health-only port (``health_listen``) for probes that cannot do mutual
    TLS; it shares the service's health state and serves nothing else."""
    if not config.health_listen:
        return None
    try:
        bind_tcp(config.health_listen, reuse_port=config.listen_reuse_port).close()
    except OSError as exc:
        raise listen_failure(exc, config.health_listen, "health_listen") from None
    probe_server = grpc.aio.server(options=[("grpc.so_reuseport", int(config.listen_reuse_port))])
    health_pb2_grpc.add_HealthServicer_to_server(health, probe_server)
    try:
        bound = probe_server.add_insecure_port(config.health_listen)
    except RuntimeError:
        bound = 0
    if not bound:
        raise StartupError(
            f"cannot listen on {config.health_listen} (health_listen)", "check health_listen"
        )
    return probe_server


def _bind_grpc(server: grpc.aio.Server, config: Config, name: str, listen: str) -> int:
    """Bind the service's port; a port in use is a start-up error naming the option."""
    option = f"{name}_listen"
    try:
        # Our own bind first, so the cause is known (gRPC only says "failed").
        bind_tcp(listen, reuse_port=config.listen_reuse_port).close()
    except OSError as exc:
        raise listen_failure(exc, listen, option) from None
    try:
        return bind_port(server, config, name, listen)
    except RuntimeError:
        raise StartupError(f"cannot listen on {listen} ({option})", f"check {option}") from None


async def _report_when_serving(config: Config, name: str, listen: str, port: int) -> None:
    """Tell the supervisor we are ready once our own health check says SERVING, through
    our socket and the internal plane like any caller."""
    host = listen.rpartition(":")[0]
    address = client_address(f"{host}:{port}")
    async with open_channel(config, name, caller=Caller.part(name), address=address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=5, wait_for_ready=True
                )
            except grpc.aio.AioRpcError:
                reply = None
            if reply is not None and reply.status == health_pb2.HealthCheckResponse.SERVING:
                report_ready(name)
                return
            await asyncio.sleep(0.2)
