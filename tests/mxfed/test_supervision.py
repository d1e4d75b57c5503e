"""Background work under ``ServiceContext.spawn``: a failed task is restarted with
backoff, counted, and the part is NOT_SERVING until it runs again; a part whose
database does not answer is NOT_SERVING too."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import grpc
import pytest
from prometheus_client import REGISTRY

from mxfed import service_runtime
from mxfed.config import Config
from mxfed.service_runtime import ServiceContext, watch_database
from tests.support.polling import wait_until


def _context(tmp_path: Path, pool: asyncpg.Pool | None = None) -> ServiceContext:
    config = Config(server_name="supervision.example", data_dir=tmp_path, internal_tls=False)
    return ServiceContext(
        name="events",
        config=config,
        pool=pool,  # type: ignore[arg-type]
        server=grpc.aio.server(),
    )


def _sample(name: str, task: str) -> float:
    return REGISTRY.get_sample_value(name, {"task": task}) or 0.0


async def test_failed_task_is_restarted_and_health_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_runtime, "_RESTART_FIRST", 0.01)
    monkeypatch.setattr(service_runtime, "HEALTHY_AFTER", 0.05)
    context = _context(tmp_path)
    health: list[bool] = []
    context.on_health = health.append
    runs: list[int] = []
    running = asyncio.Event()
    task_name = "test:flaky"
    restarts_before = _sample("mxfed_background_task_restarts_total", task_name)

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise RuntimeError("boom")
        running.set()
        await asyncio.Event().wait()

    context.spawn(flaky, task_name)
    await asyncio.wait_for(running.wait(), 10)
    await wait_until(lambda: health == [False, True], timeout=10)
    assert runs == [0, 1, 2]
    assert _sample("mxfed_background_task_restarts_total", task_name) == restarts_before + 2
    assert _sample("mxfed_background_task_last_failure_timestamp_seconds", task_name) > 0
    assert _sample("mxfed_background_task_up", task_name) == 1
    assert context.serving
    await context.close()


async def test_a_failed_one_shot_coroutine_is_counted_and_leaves_health_alone(
    tmp_path: Path,
) -> None:
    context = _context(tmp_path)
    health: list[bool] = []
    context.on_health = health.append
    before = REGISTRY.get_sample_value("mxfed_one_shot_task_failures_total") or 0.0

    async def once() -> None:
        raise RuntimeError("boom")

    task = context.spawn(once(), "resync !room:example")
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
    assert REGISTRY.get_sample_value("mxfed_one_shot_task_failures_total") == before + 1
    assert health == [] and context.serving
    assert task not in context._tasks  # finished tasks are not kept
    await context.close()


async def test_part_without_its_database_is_not_serving(
    tmp_path: Path, refused_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = await asyncpg.create_pool(
        f"postgresql://postgres@127.0.0.1:{refused_port}/x", min_size=0, max_size=1
    )
    assert pool is not None
    context = _context(tmp_path, pool)
    health: list[bool] = []
    context.on_health = health.append
    context.spawn(lambda: watch_database(context), "database-check")
    await wait_until(lambda: health == [False], timeout=10)
    assert not context.serving
    await context.close()
    await pool.close()
