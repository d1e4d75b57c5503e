"""The per-process metrics: internal calls counted at both ends by method and status,
the event-loop lag measured, the pool's wait timed."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from prometheus_client import REGISTRY

from mxfed.database import create_pool
from mxfed.process_metrics import ServerMetrics, client_interceptors, measure_loop_lag
from tests.support.databases import create_database, drop_database
from tests.support.polling import wait_until

CHECK = "/grpc.health.v1.Health/Check"


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_calls_are_counted_and_timed_at_both_ends_by_status() -> None:
    server = grpc.aio.server(interceptors=[ServerMetrics()])
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    before = {
        (end, code): _value(f"mxfed_grpc_{end}_handled_total", method=CHECK, code=code)
        for end in ("server", "client")
        for code in ("OK", "NOT_FOUND")
    }
    timed = _value("mxfed_grpc_client_handling_seconds_count", method=CHECK)
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", interceptors=client_interceptors()
    ) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest())
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    # An aborted call's status reaches the client before its handler has returned (abort
    # sends it, then raises): the server counts it when the handler ends, which a stop
    # meanwhile would cancel.
    await wait_until(
        lambda: all(
            _value("mxfed_grpc_server_handled_total", method=CHECK, code=code)
            == before[("server", code)] + 1
            for code in ("OK", "NOT_FOUND")
        ),
        what="the server's handlers ended and counted",
    )
    await server.stop(0)
    for end in ("server", "client"):
        for code in ("OK", "NOT_FOUND"):
            now = _value(f"mxfed_grpc_{end}_handled_total", method=CHECK, code=code)
            assert now == before[(end, code)] + 1, (end, code)
    assert _value("mxfed_grpc_client_handling_seconds_count", method=CHECK) == timed + 2


async def test_a_blocked_loop_shows_as_lag() -> None:
    lagged = _value("mxfed_event_loop_lag_histogram_seconds_sum")
    samples = _value("mxfed_event_loop_lag_histogram_seconds_count")
    task = asyncio.create_task(measure_loop_lag(0.05))
    await asyncio.sleep(0.01)
    time.sleep(0.3)  # blocks the loop on purpose: the timer due in 0.04 s fires late
    while _value("mxfed_event_loop_lag_histogram_seconds_count") == samples:
        await asyncio.sleep(0.01)
    task.cancel()
    # A lower bound only: a busier machine makes the lag longer, never shorter.
    assert _value("mxfed_event_loop_lag_histogram_seconds_sum") - lagged >= 0.25


async def test_the_pool_times_each_wait_and_reports_its_use() -> None:
    url = await create_database("mxfed_pool_metrics")
    pool = await create_pool(url, max_size=2)
    try:
        waits = _value("mxfed_db_pool_acquire_seconds_count")
        async with pool.acquire():
            await pool.fetchval("SELECT 1")
        assert _value("mxfed_db_pool_acquire_seconds_count") == waits + 2
    finally:
        await pool.close()
        await drop_database(url)
