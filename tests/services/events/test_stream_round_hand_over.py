"""A replica's stream hub gets the entries of its own stream rounds as the round returns
(StreamPositions.hand_over), not after the round's NOTIFY and a read: published only
when nothing before them is missing, each once, in position order."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from mxfed.identity_files import new_signing_key
from services.events import storage
from services.events.cache import LruCache
from services.events.local_events import CreateRoomRequest, LocalEvents
from services.events.room_batch import RoomsCore
from services.events.state import StateResolver
from services.events.state_storage import StateStore
from services.events.streams import (
    StreamEntry,
    StreamFilter,
    StreamHub,
    StreamPositions,
    Subscription,
)
from tests.support.polling import wait_until

SERVER = "handover.test"
ALICE = f"@alice:{SERVER}"


class _Gate:
    """The hub's pool, whose ``async with acquire()`` waits while the gate is closed (the
    hub reads nothing then); ``reads`` counts the connections given back. The LISTEN
    connection, awaited from ``acquire``, is taken at start, the gate open."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.opened = asyncio.Event()
        self.opened.set()
        self.waiting = 0
        self.reads = 0

    def acquire(self, **options: Any) -> Any:
        gate = self

        class Acquire:
            def __await__(self) -> Any:
                return gate.pool.acquire(**options).__await__()

            async def __aenter__(self) -> asyncpg.Connection:
                gate.waiting += 1
                await gate.opened.wait()
                gate.waiting -= 1
                self.connection = await gate.pool.acquire(**options)
                return self.connection

            async def __aexit__(self, *_: object) -> None:
                await gate.pool.release(self.connection)
                gate.reads += 1

        return Acquire()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)


def _core(pool: asyncpg.Pool, database_url: str) -> RoomsCore:
    positions = StreamPositions(pool, database_url)  # rounds on their own connection
    return RoomsCore(
        SERVER, StateStore(pool), StateResolver(), LruCache("events_events", 1000), positions
    )


@pytest.fixture
async def core(events_pool: asyncpg.Pool, database_url: str) -> AsyncIterator[RoomsCore]:
    core = _core(events_pool, database_url)
    yield core
    await core.stream_positions.close()


@pytest.fixture
async def local(events_pool: asyncpg.Pool, core: RoomsCore) -> LocalEvents:
    key = new_signing_key()
    return LocalEvents(events_pool, core, lambda: key)


@contextlib.asynccontextmanager
async def _hub(pool: Any, core: RoomsCore) -> AsyncIterator[StreamHub]:
    hub = StreamHub(pool, SERVER, poll_interval=0.05)
    core.stream_positions.hand_to(hub)
    running = asyncio.create_task(hub.run())
    try:
        await wait_until(lambda: hub._started, interval=0.01, what="the hub starts")
        yield hub
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


def _watch(hub: StreamHub, room_id: str) -> Subscription:
    """What the hub publishes for ``room_id``, as published (subscribers drop entries at or
    before their own position, so a duplicate would not show there)."""
    watcher = Subscription(StreamFilter(room_id=room_id, include_ephemeral=True))
    hub._subscribers.add(watcher)
    return watcher


def _drain(watcher: Subscription) -> list[str]:
    names = []
    while not watcher.queue.empty():
        entry = watcher.queue.get_nowait()
        names.append(_name(entry))
    return names


def _name(entry: StreamEntry) -> str:
    if entry.event is not None:
        return entry.event.event_id
    assert entry.ephemeral is not None
    return f"{entry.ephemeral['kind']} {entry.ephemeral['user_id']}"


async def _room(local: LocalEvents) -> str:
    room_id, _ = await local.create_room(CreateRoomRequest(creator=ALICE, preset="public_chat"))
    return room_id


async def _send(local: LocalEvents, room_id: str, body: str) -> str:
    event_id, _ = await local.send_event(room_id, ALICE, "m.room.message", None, {"body": body})
    return event_id


async def test_an_own_round_reaches_subscribers_without_a_read_and_its_notify_adds_nothing(
    events_pool: asyncpg.Pool, core: RoomsCore, local: LocalEvents
) -> None:
    room_id = await _room(local)
    gate = _Gate(events_pool)
    async with _hub(gate, core) as hub:
        watcher = _watch(hub, room_id)
        live: list[str] = []

        async def follow() -> None:
            async for entry in hub.subscribe(StreamFilter(room_id=room_id), hub.position):
                live.append(_name(entry))

        subscriber = asyncio.create_task(follow())
        try:
            first = await _send(local, room_id, "first")
            await wait_until(lambda: live == [first], interval=0.01, what="the first event")
            gate.opened.clear()
            await wait_until(lambda: gate.waiting > 0, interval=0.01, what="the hub held")
            # The hub reads nothing now: only the hand-over can bring the second event.
            second = await _send(local, room_id, "second")
            await wait_until(lambda: live == [first, second], interval=0.01, what="the hand-over")
            reads = gate.reads
            gate.opened.set()
            # The read the round's NOTIFY woke finds the second event again: not republished.
            await wait_until(lambda: gate.reads > reads, interval=0.01, what="the hub reads")
            third = await _send(local, room_id, "third")
            await wait_until(lambda: len(live) == 3, interval=0.01, what="the third event")
            assert live == [first, second, third]
            assert _drain(watcher) == [first, second, third]
        finally:
            subscriber.cancel()
            await asyncio.gather(subscriber, return_exceptions=True)


async def test_a_hand_over_after_a_position_the_hub_has_not_read_waits_for_the_read(
    events_pool: asyncpg.Pool, core: RoomsCore, local: LocalEvents
) -> None:
    room_id = await _room(local)
    gate = _Gate(events_pool)
    async with _hub(gate, core) as hub:
        watcher = _watch(hub, room_id)
        gate.opened.clear()
        await wait_until(lambda: gate.waiting > 0, interval=0.01, what="the hub held")
        # Another replica's round positions a row the hub has not read...
        async with events_pool.acquire() as conn:
            await storage.insert_ephemeral(
                conn, [{"room_id": room_id, "kind": "typing", "user_id": ALICE, "typing": True}]
            )
            await storage.assign_stream_positions(conn)
        # ...so this replica's next round, handed over, must not be published before it.
        event_id = await _send(local, room_id, "after the gap")
        assert _drain(watcher) == []
        gate.opened.set()
        published: list[str] = []

        def both() -> bool:
            published.extend(_drain(watcher))
            return len(published) >= 2

        await wait_until(both, interval=0.01, what="the read fills the gap")
        assert published == [f"typing {ALICE}", event_id]


async def test_two_replicas_writing_one_room_each_hub_publishes_every_event_once_in_order(
    events_pool: asyncpg.Pool, database_url: str, core: RoomsCore, local: LocalEvents
) -> None:
    room_id = await _room(local)
    other_core = _core(events_pool, database_url)
    key = new_signing_key()
    other = LocalEvents(events_pool, other_core, lambda: key)
    try:
        async with _hub(events_pool, core) as hub, _hub(events_pool, other_core) as other_hub:
            watchers = [_watch(hub, room_id), _watch(other_hub, room_id)]
            sends = [
                _send(replica, room_id, f"{n} {secrets.token_hex(4)}")
                for n in range(24)
                for replica in (local, other)
            ]
            for start in range(0, len(sends), 8):  # eight at a time, both replicas' rounds
                await asyncio.gather(*sends[start : start + 8])
            rows = await events_pool.fetch(
                "SELECT event_id FROM events.events WHERE room_id = $1"
                " AND type = 'm.room.message' ORDER BY stream_position",
                room_id,
            )
            expected = [row["event_id"] for row in rows]
            assert len(expected) == 48
            for watcher in watchers:
                published: list[str] = []

                def caught_up(watcher: Subscription = watcher, seen: list[str] = published) -> bool:
                    seen.extend(_drain(watcher))
                    return len(seen) >= len(expected)

                await wait_until(caught_up, interval=0.01, what="every event published")
                assert published == expected
    finally:
        await other_core.stream_positions.close()
