"""Exactly one replica at a time does a job, through a PostgreSQL advisory lock.

Used where a job must not run twice (following a stream into a table with a
cursor, for instance). The lock lives on a dedicated connection, so it goes
away with the session when the holder dies; another replica, polling for
it, then takes the job over.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import asyncpg
import grpc

log = logging.getLogger(__name__)


async def lead_forever(
    database_url: str,
    lock_name: str,
    job: Callable[[asyncpg.Connection], Awaitable[None]],
    *,
    poll_interval: float = 2.0,
    on_leadership: Callable[[bool], None] = lambda _: None,
) -> None:
    """Forever: hold ``lock_name``, run ``job`` with the lock's connection, restart on failure.

    ``on_leadership(True)`` once the lock is held, ``(False)`` when it is lost.
    A gRPC failure (the stream a job follows went away) is logged briefly;
    anything else with its traceback. Restarts back off from 0.5 s to 10 s.
    """
    delay = 0.5
    while True:
        connection: asyncpg.Connection | None = None
        try:
            connection = await asyncpg.connect(database_url)
            while not await connection.fetchval(  # noqa: ASYNC110 (polls PostgreSQL)
                "SELECT pg_try_advisory_lock(hashtext($1))", lock_name
            ):
                await asyncio.sleep(poll_interval * random.uniform(0.75, 1.25))
            on_leadership(True)
            log.info("holding the lock", extra={"lock": lock_name})
            await job(connection)
            delay = 0.5
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "job's gRPC call failed; restarting",
                extra={"lock": lock_name, "code": exc.code().name, "details": exc.details()},
            )
        except Exception:
            log.exception("job failed; restarting", extra={"lock": lock_name})
        finally:
            on_leadership(False)
            if connection is not None:
                connection.terminate()  # drops the lock with the session
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)
