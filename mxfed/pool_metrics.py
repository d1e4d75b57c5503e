"""The database pool's metrics (see :mod:`mxfed.process_metrics` for the others).

``mxfed_db_pool_size``, ``mxfed_db_pool_in_use``, ``mxfed_db_pool_max`` (read when
scraped) and ``mxfed_db_pool_acquire_seconds`` (the wait for a connection). Apart from
the process metrics so that a process without a database (the gateway) does not load
the database driver.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
from prometheus_client import Gauge, Histogram

POOL_SIZE = Gauge("mxfed_db_pool_size", "Open database connections of this process's pool")
POOL_IN_USE = Gauge("mxfed_db_pool_in_use", "Database connections handed out")
POOL_MAX = Gauge("mxfed_db_pool_max", "The pool's maximum size (database_pool_size)")
POOL_ACQUIRE_SECONDS = Histogram(
    "mxfed_db_pool_acquire_seconds",
    "Wait for a database connection from the pool",
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)


class TimedPool(asyncpg.Pool):
    """An asyncpg pool that times the wait for each connection."""

    async def _acquire(self, timeout: float | None) -> Any:  # noqa: ASYNC109
        started = time.perf_counter()
        try:
            return await super()._acquire(timeout)
        finally:
            POOL_ACQUIRE_SECONDS.observe(time.perf_counter() - started)


def watch_pool(pool: asyncpg.Pool) -> None:
    """Export ``pool``'s size and use (read when scraped)."""
    POOL_SIZE.set_function(pool.get_size)
    POOL_IN_USE.set_function(lambda: pool.get_size() - pool.get_idle_size())
    POOL_MAX.set_function(pool.get_max_size)
