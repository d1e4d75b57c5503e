"""A subscriber that arrives while the hub, with nobody listening, looks up the latest
position must still get what is committed after its replay ends."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from services.events import storage
from services.events.streams import StreamFilter, StreamHub


class _GatedPool:
    """The events pool, with one ``acquire`` held at a gate until the test opens it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.armed = False
        self.held = asyncio.Event()
        self.gate = asyncio.Event()

    def acquire(self, **options: Any) -> Any:
        if not self.armed:
            return self.pool.acquire(**options)
        self.armed = False
        return self._held_acquire(**options)

    @contextlib.asynccontextmanager
    async def _held_acquire(self, **options: Any) -> AsyncIterator[asyncpg.Connection]:
        self.held.set()
        await self.gate.wait()
        async with self.pool.acquire(**options) as connection:
            yield connection

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)


async def _typing(pool: asyncpg.Pool, room_id: str, user_id: str) -> None:
    async with pool.acquire() as conn:
        await storage.insert_ephemeral(
            conn, [{"room_id": room_id, "kind": "typing", "user_id": user_id, "typing": True}]
        )
        await storage.assign_stream_positions(conn)


async def test_entries_committed_while_the_hub_looks_up_the_latest_reach_a_new_subscriber(
    events_pool: asyncpg.Pool,
) -> None:
    room_id = f"!{uuid.uuid4().hex}:hub.example"
    gated = _GatedPool(events_pool)
    hub = StreamHub(gated, "hub.example", poll_interval=0.05)  # type: ignore[arg-type]
    running = asyncio.create_task(hub.run())
    received: list[str] = []
    try:
        while not hub._started:
            await asyncio.sleep(0.01)
        # The hub, with nobody subscribed, is held while it looks up the latest position.
        gated.armed = True
        await asyncio.wait_for(gated.held.wait(), 30)

        async def follow() -> None:
            stream = StreamFilter(room_id=room_id, include_ephemeral=True)
            async for entry in hub.subscribe(stream, 0):
                assert entry.ephemeral is not None
                received.append(entry.ephemeral["user_id"])

        following = asyncio.create_task(follow())
        # The subscriber's replay finds nothing yet; then an entry is committed.
        while not hub._subscribers:
            await asyncio.sleep(0.01)
        # Let the replay end first (were it still reading, it would find the entry itself
        # and the test would pass without exercising the hand-over).
        await asyncio.sleep(0.2)
        await _typing(events_pool, room_id, "@late:hub.example")
        gated.gate.set()
        deadline = asyncio.get_running_loop().time() + 30
        while received != ["@late:hub.example"]:
            assert asyncio.get_running_loop().time() < deadline, received
            await asyncio.sleep(0.05)
        following.cancel()
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
