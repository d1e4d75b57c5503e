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
import contextlib
import functools
import importlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from prometheus_client import Counter, Gauge

from mxfed.config import Config
from mxfed.database import (
    apply_migrations,
    create_pool,
    describe,
    wait_for_database,
    with_password,
)
from mxfed.database_claim import claim_database
from mxfed.held_connection import Backoff, is_connection_error
from mxfed.identity_files import ServerSigningKey, current_signing_key
from mxfed.internal_plane import Caller, bind_port, client_address, new_server, open_channel
from mxfed.listening import bind_tcp, start_metrics_server
from mxfed.logs import setup_logging
from mxfed.pool_metrics import watch_pool
from mxfed.process_metrics import measure_loop_lag
from mxfed.reflection import enable_reflection
from mxfed.server_policy import SERVER_POLICY, follow_server_policy, grpc_policy_fetcher
from mxfed.startup import StartupError, listen_failure, report_ready
from mxfed.tracing import flush as flush_traces
from mxfed.tracing import setup_tracing

log = logging.getLogger(__name__)

TASK_RESTARTS = Counter(
    "mxfed_background_task_restarts_total",
    "Background tasks restarted after they failed, by task",
    ["task"],
)
TASK_LAST_FAILURE = Gauge(
    "mxfed_background_task_last_failure_timestamp_seconds",
    "When a background task last failed (Unix time), by task",
    ["task"],
)
ONE_SHOT_FAILURES = Counter(
    "mxfed_one_shot_task_failures_total", "One-shot background tasks that failed"
)
TASK_UP = Gauge("mxfed_background_task_up", "1 while a background task runs, by task", ["task"])
SERVING = Gauge("mxfed_serving", "1 while this part reports SERVING on gRPC health")

# A failed background task is started again after 0.5 s, doubling to 30 s; a
# task that ran this long before failing starts again from 0.5 s.
_RESTART_FIRST = 0.5
_RESTART_CAP = 30.0
_STABLE_AFTER = 60.0
# Seconds a restarted task must run before the part is SERVING again.
HEALTHY_AFTER = 2.0
# How often the part checks that its database answers, and how long it waits.
DATABASE_CHECK_INTERVAL = 5.0
DATABASE_CHECK_TIMEOUT = 3.0


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
    # Told (True: serving) whenever the part's health changes.
    on_health: Callable[[bool], None] | None = None
    _failing: set[str] = field(default_factory=set)

    def signing_key(self) -> ServerSigningKey:
        """The server's current signing key: after ``mxfed keys rotate``, the new one within
        a second. Read only by the parts that sign (never the gateway), when they sign."""
        return current_signing_key(self._signing_key_path)

    @functools.cached_property
    def _signing_key_path(self) -> Path:
        # One Path for every signature (a local send signs each event): making it and
        # hashing it afresh each time was ~2% of the events service's CPU.
        return self.config.signing_key

    def channel(self, service: str) -> grpc.aio.Channel:
        """A shared channel to another mxfed service (``keys``, ``events``...); one per
        serving process (accounts shares the keys channel while keys hosts it)."""
        service = self.config.host_part(service)
        if service not in self._channels:
            self._channels[service] = open_channel(
                self.config, service, caller=Caller.part(self.name)
            )
        return self._channels[service]

    def spawn(
        self,
        work: Callable[[], Coroutine[Any, Any, Any]] | Coroutine[Any, Any, Any],
        name: str,
    ) -> asyncio.Task[Any]:
        """Run background ``work`` until the part stops.

        ``work`` is a coroutine function for long-running work (a loop, a
        follower), supervised: when it fails it is logged with its traceback,
        counted (``mxfed_background_task_restarts_total``,
        ``mxfed_background_task_last_failure_timestamp_seconds``, by ``name``)
        and started again after a backoff (0.5 s doubling to 30 s, reset once
        it has run a minute), and the part reports NOT_SERVING on gRPC health
        from the failure until the restarted work has run for
        :data:`HEALTHY_AFTER` seconds. Work that returns is done.

        ``work`` may also be a coroutine, for one-shot work (a room's resync):
        it cannot be restarted, so a failure is logged and counted
        (``mxfed_one_shot_task_failures_total``) and its owner decides what
        follows; the part's health does not depend on it.
        """
        if asyncio.iscoroutine(work):
            task = asyncio.create_task(self._run_once(work, name), name=name)
        else:
            task = asyncio.create_task(self._supervise(work, name), name=name)
        self._tasks.append(task)
        task.add_done_callback(self._forget_task)
        return task

    def _forget_task(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    async def _run_once(self, work: Coroutine[Any, Any, Any], name: str) -> Any:
        try:
            return await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            ONE_SHOT_FAILURES.inc()
            log.error("background task failed", exc_info=exc, extra={"task": name})
            raise

    async def _supervise(self, work: Callable[[], Coroutine[Any, Any, Any]], name: str) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(_RESTART_FIRST, _RESTART_CAP)
        TASK_UP.labels(name).set(1)
        while True:
            attempt = asyncio.ensure_future(work())
            started = loop.time()
            try:
                if name in self._failing:
                    done, _ = await asyncio.wait({attempt}, timeout=HEALTHY_AFTER)
                    if not done:
                        self.set_failing(name, False)
                await attempt
                TASK_UP.labels(name).set(0)
                return
            except asyncio.CancelledError:
                attempt.cancel()
                await asyncio.gather(attempt, return_exceptions=True)
                raise
            except Exception as exc:
                TASK_RESTARTS.labels(name).inc()
                TASK_LAST_FAILURE.labels(name).set(time.time())
                TASK_UP.labels(name).set(0)
                self.set_failing(name, True)
                if loop.time() - started > _STABLE_AFTER:
                    backoff.reset()
                delay = backoff.next_delay()
                log.error(
                    "background task failed; restarting",
                    exc_info=exc,
                    extra={"task": name, "restart_in": round(delay, 2)},
                )
                await asyncio.sleep(delay)
                TASK_UP.labels(name).set(1)

    def set_failing(self, condition: str, failing: bool) -> None:
        """Mark ``condition`` (a background task, the database) failing or fine again; the
        part serves on gRPC health only while nothing is failing."""
        before = bool(self._failing)
        if failing:
            self._failing.add(condition)
        else:
            self._failing.discard(condition)
        if bool(self._failing) != before:
            if self._failing:
                log.warning("NOT_SERVING", extra={"failing": sorted(self._failing)})
            else:
                log.info("SERVING again")
            if self.on_health is not None:
                self.on_health(not self._failing)

    @property
    def serving(self) -> bool:
        return not self._failing

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
    setup_tracing(name, config)
    if not config.database_url:
        raise RuntimeError("database_url must be resolved before a service starts")
    # Given a stop event, the caller (mxfed run --single-process) owns the signals.
    signals = (signal.SIGTERM, signal.SIGINT) if stop is None else ()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        url = config.database_url
        if config.database_password_file:
            url = with_password(url, config.database_password_file.read_text().strip())
            config.database_url = url
        await wait_for_database(url, config.database_start_timeout)
        pool = await create_pool(url, max_size=config.database_pool_size)
        watch_pool(pool)
        try:
            await _serve(name, config, pool, stop)
        finally:
            await pool.close()
            await asyncio.to_thread(flush_traces)
    finally:
        # Here, while the loop's wake-up pipe is open: closing the loop closes the pipe
        # before it drops the handlers, and a signal in between (the supervisor
        # stopping every part when one cannot start) printed a traceback.
        for signum in signals:
            loop.remove_signal_handler(signum)


async def _serve(name: str, config: Config, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
    server_module = importlib.import_module(f"services.{name}.server")
    for schema in getattr(server_module, "MIGRATES_AFTER", ()):
        await apply_migrations(pool, schema, migrations_directory(schema))
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
    enable_reflection(server, name, config.hosted_services(name))
    probe_server = _health_only_server(config, health)
    context = ServiceContext(
        name=name,
        config=config,
        pool=pool,
        server=server,
    )
    try:
        setup = server_module.setup
        await setup(context)
        SERVER_POLICY.own_server_name = config.server_name
        context.spawn(measure_loop_lag(), name="event-loop-lag")
        if name != "events":  # the events process holds the lists (services.events.admin)
            fetcher = grpc_policy_fetcher(context.channel("events"))
            context.spawn(
                lambda: follow_server_policy(fetcher, config.server_policy_refresh_interval),
                name="server-policy",
            )
        await server.start()
        if probe_server is not None:
            await probe_server.start()
        await _set_health(health, name, context.serving, config.hosted_services(name))
        health_updates: set[asyncio.Task[None]] = set()

        def on_health(serving: bool) -> None:
            update = asyncio.create_task(
                _set_health(health, name, serving, config.hosted_services(name))
            )
            health_updates.add(update)
            update.add_done_callback(health_updates.discard)

        context.on_health = on_health
        context.spawn(lambda: watch_database(context), "database-check")
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
        context.on_health = None
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


async def _set_health(
    health: HealthServicer, name: str, serving: bool, hosted_services: list[str]
) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    SERVING.set(1 if serving else 0)
    await health.set("", status)
    await health.set(f"mxfed.{name}.v1", status)
    for hosted in hosted_services:
        await health.set(f"mxfed.{hosted}.v1", status)


async def watch_database(context: ServiceContext) -> None:
    """Check every few seconds that the database answers; while it does not, the part
    cannot do its work and says so (NOT_SERVING). A pool whose every connection is busy
    is not a database that does not answer: that check is skipped."""
    pool = context.pool
    while True:
        try:
            try:
                connection = await pool.acquire(timeout=DATABASE_CHECK_TIMEOUT)
            except TimeoutError:
                if pool.get_size() > pool.get_idle_size():
                    await asyncio.sleep(DATABASE_CHECK_INTERVAL)  # busy with work
                    continue
                raise
            try:
                await connection.fetchval("SELECT 1", timeout=DATABASE_CHECK_TIMEOUT)
            finally:
                await pool.release(connection)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not (is_connection_error(exc) or isinstance(exc, asyncpg.PostgresError)):
                raise
            if "database" not in context._failing:
                log.warning("the database does not answer", extra={"error": str(exc) or repr(exc)})
            context.set_failing("database", True)
            await asyncio.sleep(1.0)
            continue
        context.set_failing("database", False)
        await asyncio.sleep(DATABASE_CHECK_INTERVAL)


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
