"""Exactly one replica at a time does a job, through a PostgreSQL advisory lock.

Used where a job must not run twice (following a stream into a table with a
cursor, for instance). The lock lives on a dedicated connection, so it goes
away with the session when the holder dies; another replica, polling for
it, then takes the job over. A replica whose connection is cut stops its
job at once and competes for the lock again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import asyncpg
import grpc

from mxfed.held_connection import Backoff, is_connection_error

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
    When the lock's connection is lost (PostgreSQL ended the session: the lock
    is gone and another replica may hold it now) the job is cancelled at once,
    not at its next statement; the loop connects again and polls for the lock
    like any other replica before running the job again (which reads its
    position from the database, never "now"). A gRPC failure (the stream a
    job follows went away) or a lost connection is logged briefly; anything
    else with its traceback. Restarts back off from 0.2 s to 2 s.
    """
    backoff = Backoff(0.2, 2.0)
    while True:
        connection: asyncpg.Connection | None = None
        leading = False
        try:
            connection = await asyncpg.connect(database_url, timeout=10)
            while not await connection.fetchval(  # noqa: ASYNC110 (polls PostgreSQL)
                "SELECT pg_try_advisory_lock(hashtext($1))", lock_name
            ):
                await asyncio.sleep(poll_interval * random.uniform(0.75, 1.25))
            leading = True
            on_leadership(True)
            log.info("holding the lock", extra={"lock": lock_name})
            await _run_while_connected(connection, job)
            backoff.reset()
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "job's gRPC call failed; restarting",
                extra={"lock": lock_name, "code": exc.code().name, "details": exc.details()},
            )
        except Exception as exc:
            if is_connection_error(exc) or isinstance(exc, ConnectionLostError):
                log.warning(
                    "lock's database connection lost; taking the lock again",
                    extra={"lock": lock_name, "error": str(exc) or type(exc).__name__},
                )
            else:
                log.exception("job failed; restarting", extra={"lock": lock_name})
        finally:
            if leading:
                on_leadership(False)
            if connection is not None:
                connection.terminate()  # drops the lock with the session
        await backoff.wait()


class ConnectionLostError(Exception):
    """The connection holding a lock was closed while its job ran."""


async def _run_while_connected(
    connection: asyncpg.Connection, job: Callable[[asyncpg.Connection], Awaitable[None]]
) -> None:
    """``job(connection)``, cancelled as soon as ``connection`` is closed."""
    task = asyncio.ensure_future(job(connection))
    lost = False

    def on_close(_connection: object) -> None:
        nonlocal lost
        lost = True
        task.cancel()

    connection.add_termination_listener(on_close)
    try:
        await task
    except asyncio.CancelledError:
        if lost and not _current_task_cancelling():
            raise ConnectionLostError("the lock's connection was closed") from None
        raise
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if not connection.is_closed():
            connection.remove_termination_listener(on_close)


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
