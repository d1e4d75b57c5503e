"""Long-held connections (mxfed/held_connection.py, mxfed/leadership.py) when PostgreSQL
ends them with ``pg_terminate_backend``, as a failover, a restart or a pooler does."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from mxfed.held_connection import HeldConnection
from mxfed.leadership import lead_forever
from tests.support.databases import terminate_backends
from tests.support.polling import wait_until


async def test_held_connection_opens_again_and_runs_on_open_again(database_url: str) -> None:
    opened: list[int] = []
    lost: list[bool] = []

    async def on_open(connection: asyncpg.Connection) -> None:
        opened.append(await connection.fetchval("SELECT pg_backend_pid()"))

    held = HeldConnection.from_url(
        database_url, "test", on_open=on_open, on_lost=lambda: lost.append(True)
    )
    try:
        assert await held.fetchval("SELECT 1") == 1
        assert held.generation == 1 and len(opened) == 1
        await terminate_backends(database_url, opened)
        # Noticed without a query (the transport closes first, the loss is reported soon after).
        await wait_until(lambda: lost == [True], timeout=10)
        assert not held.alive
        assert await held.fetchval("SELECT pg_backend_pid()") == opened[-1]
        assert held.generation == 2 and len(opened) == 2 and opened[0] != opened[1]
    finally:
        await held.close()


async def test_leader_stops_at_once_when_its_lock_connection_is_ended_and_competes_again(
    database_url: str,
) -> None:
    lock_name = f"test.lead.{uuid.uuid4().hex}"
    starts: list[int] = []
    cancelled: list[int] = []
    leadership: list[bool] = []

    async def job(connection: asyncpg.Connection) -> None:
        pid = await connection.fetchval("SELECT pg_backend_pid()")
        starts.append(pid)
        try:
            await asyncio.Event().wait()  # a job idle on its connection (following a stream)
        except asyncio.CancelledError:
            cancelled.append(pid)
            raise

    leader = asyncio.create_task(
        lead_forever(
            database_url, lock_name, job, poll_interval=0.05, on_leadership=leadership.append
        )
    )
    competitor = await asyncpg.connect(database_url)
    try:
        await wait_until(lambda: len(starts) == 1, timeout=10)
        # Another replica queues for the lock; it has it as soon as the leader's session ends.
        waiting = asyncio.create_task(
            competitor.execute("SELECT pg_advisory_lock(hashtext($1))", lock_name)
        )
        await terminate_backends(database_url, [starts[0]])
        await asyncio.wait_for(waiting, 10)
        # The idle job was cancelled at once, not at its next statement.
        await wait_until(lambda: cancelled == starts[:1], timeout=10)
        # Leadership lost is reported just after the job is cancelled.
        await wait_until(
            lambda: leadership == [True, False], timeout=10, what="leadership reported lost"
        )
        # The old leader competes again but does not run while the other holds the lock.
        await asyncio.sleep(0.3)
        assert len(starts) == 1
        await competitor.execute("SELECT pg_advisory_unlock(hashtext($1))", lock_name)
        await wait_until(lambda: len(starts) == 2, timeout=10)
        assert starts[1] != starts[0] and leadership == [True, False, True]
    finally:
        leader.cancel()
        await asyncio.gather(leader, return_exceptions=True)
        await competitor.close()
