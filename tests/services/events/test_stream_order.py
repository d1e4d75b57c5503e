"""Stream positions are given after rooms commit (migration 012): one room's open
transaction does not hold up another room's commit, and a reader that has read up to a
position never sees a row at or before it appear later."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from mxfed.identity_files import new_signing_key
from services.events import storage
from services.events.cache import LruCache
from services.events.local_events import CreateRoomRequest, LocalEvents
from services.events.room_batch import RoomBatch, RoomsCore
from services.events.state import StateResolver
from services.events.state_storage import StateStore
from services.events.storage import Status
from services.events.streams import (
    StreamEntry,
    StreamFilter,
    StreamHub,
    StreamPositions,
    read_entries,
)
from tests.support.polling import wait_until

SERVER = "order.test"
ALICE = f"@alice:{SERVER}"


@pytest.fixture
async def core(events_pool: asyncpg.Pool, database_url: str) -> AsyncIterator[RoomsCore]:
    positions = StreamPositions(events_pool, database_url)  # rounds on their own connection
    yield RoomsCore(
        SERVER,
        StateStore(events_pool),
        StateResolver(),
        LruCache("events_events", 1000),
        positions,
    )
    await positions.close()


@pytest.fixture
async def local(events_pool: asyncpg.Pool, core: RoomsCore) -> LocalEvents:
    key = new_signing_key()
    return LocalEvents(events_pool, core, lambda: key)


async def _room(local: LocalEvents) -> str:
    room_id, _ = await local.create_room(CreateRoomRequest(creator=ALICE, preset="public_chat"))
    return room_id


async def _write(
    conn: asyncpg.Connection, core: RoomsCore, local: LocalEvents, room_id: str, body: str
) -> tuple[RoomBatch, str]:
    """A message written in the caller's open transaction (queued for the stream)."""
    batch = RoomBatch(core, conn, room_id)
    assert await batch.open(1)
    event, pdu = local.build(batch, room_id, "m.room.message", ALICE, None, {"body": body})
    assert (await batch.add_local(event, pdu)).status is Status.ACCEPTED
    await batch.write()
    return batch, event.event_id


class _Reader:
    """Reads the stream after its own position, as the hub and every replay do."""

    def __init__(self, pool: asyncpg.Pool, rooms: set[str], after: int) -> None:
        self.pool = pool
        self.rooms = rooms
        self.position = after
        self.seen: list[str] = []

    async def read(self, conn: Any = None) -> None:
        if conn is None:
            async with self.pool.acquire() as acquired:
                return await self.read(acquired)
        entries, _ = await read_entries(conn, self.position, "", True)
        for entry in entries:
            assert entry.position > self.position
            self.position = entry.position
            if entry.room_id in self.rooms:
                self.seen.append(_name(entry))
        return None


def _name(entry: StreamEntry) -> str:
    if entry.event is not None:
        return entry.event.event_id
    assert entry.ephemeral is not None
    return f"{entry.ephemeral['kind']} {entry.ephemeral['user_id']}"


async def _latest(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        return await storage.max_stream_position(conn)


async def test_a_room_streams_while_another_is_mid_commit_and_no_reader_skips_the_other(
    events_pool: asyncpg.Pool, core: RoomsCore, local: LocalEvents
) -> None:
    first, second = await _room(local), await _room(local)
    reader = _Reader(events_pool, {first, second}, await _latest(events_pool))
    hub = StreamHub(events_pool, SERVER, poll_interval=0.05)
    following = asyncio.create_task(hub.run())
    live: list[str] = []

    async def follow() -> None:
        async for entry in hub.subscribe(StreamFilter(room_id=first), reader.position):
            live.append(_name(entry))

    subscriber = asyncio.create_task(follow())
    try:
        async with events_pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            # The first room's event is queued for the stream before the second room's...
            batch, first_id = await _write(conn, core, local, first, "first")
            # ...whose send commits and is streamed while the first is still open: rooms
            # do not wait for each other's commits (a lock held to commit would hang here).
            second_id, second_position = await asyncio.wait_for(
                local.send_event(second, ALICE, "m.room.message", None, {"body": "second"}), 30
            )
            await reader.read()
            assert reader.seen == [second_id]
            await transaction.commit()
        await batch.committed()
        # Committed after the reader passed the second room's position: it comes after it.
        assert batch.positions[first_id] > second_position
        await reader.read()
        assert reader.seen == [second_id, first_id]
        await wait_until(
            lambda: first_id in live, interval=0.01, what="the hub streams the first event"
        )
        assert live == [first_id]
    finally:
        subscriber.cancel()
        following.cancel()
        await asyncio.gather(subscriber, following, return_exceptions=True)


async def test_a_round_needs_no_pooled_connection_so_rooms_waiting_for_one_do_not_hold_it_up(
    events_pool: asyncpg.Pool, core: RoomsCore, local: LocalEvents
) -> None:
    room_id = await _room(local)
    async with events_pool.acquire() as conn, conn.transaction():
        batch, event_id = await _write(conn, core, local, room_id, "committed")
    # Every pooled connection is taken (room batches of a /send over many rooms), and
    # more batches wait for one: the committed room's round does not queue behind them.
    taken = [await events_pool.acquire() for _ in range(events_pool.get_max_size())]

    async def acquire() -> asyncpg.Connection:
        return await events_pool.acquire()

    waiting = asyncio.create_task(acquire())
    try:
        await asyncio.wait_for(batch.committed(), 30)
        assert list(batch.positions) == [event_id]
        assert not waiting.done()
    finally:
        for conn in taken:
            await events_pool.release(conn)
        await events_pool.release(await waiting)


async def test_rows_a_crash_left_pending_get_positions_in_the_rooms_order(
    events_pool: asyncpg.Pool, core: RoomsCore, local: LocalEvents
) -> None:
    room_id, other = await _room(local), await _room(local)
    reader = _Reader(events_pool, {room_id, other}, await _latest(events_pool))
    pending = []
    for body in ("one", "two"):
        # Committed; the replica dies before its round (committed() never runs).
        async with events_pool.acquire() as conn, conn.transaction():
            _, event_id = await _write(conn, core, local, room_id, body)
        pending.append(event_id)
    async with events_pool.acquire() as conn:
        assert await storage.stream_positions_of(conn, pending) == {}
    await reader.read()
    assert reader.seen == []
    # Another replica's next round covers them too, in the order the room wrote them.
    later_id, later_position = await local.send_event(
        other, ALICE, "m.room.message", None, {"body": "later"}
    )
    async with events_pool.acquire() as conn:
        positions = await storage.stream_positions_of(conn, pending)
    assert positions[pending[0]] < positions[pending[1]] < later_position
    await reader.read()
    assert reader.seen == [*pending, later_id]


async def test_the_sweep_gives_positions_to_what_a_dead_replica_left_pending(
    events_pool: asyncpg.Pool, core: RoomsCore, local: LocalEvents
) -> None:
    room_id = await _room(local)
    async with events_pool.acquire() as conn, conn.transaction():
        _, event_id = await _write(conn, core, local, room_id, "orphan")
        await storage.insert_ephemeral(
            conn, [{"room_id": room_id, "kind": "typing", "user_id": ALICE, "typing": True}]
        )
    sweeping = asyncio.create_task(StreamPositions(events_pool).run_sweeper(interval=0.05))
    try:
        async with events_pool.acquire() as conn:
            await wait_until(
                lambda: storage.stream_positions_of(conn, [event_id]),
                interval=0.01,
                what="the sweep gives the orphan a position",
            )
            typing = await conn.fetchval(
                "SELECT stream_position FROM events.ephemeral WHERE room_id = $1", room_id
            )
            position = (await storage.stream_positions_of(conn, [event_id]))[event_id]
        assert typing == position + 1
    finally:
        sweeping.cancel()
        await asyncio.gather(sweeping, return_exceptions=True)


async def test_a_repeated_local_send_waits_for_the_position_its_first_call_never_got(
    events_pool: asyncpg.Pool, core: RoomsCore, local: LocalEvents
) -> None:
    room_id = await _room(local)
    txn_id = secrets.token_hex(8)
    async with events_pool.acquire() as conn, conn.transaction():
        _, event_id = await _write(conn, core, local, room_id, "once")
        await storage.store_local_transactions(conn, [(ALICE, txn_id, event_id)])
    # The first call's replica died after its commit, before its round.
    repeated = await local.send_event(
        room_id, ALICE, "m.room.message", None, {"body": "once"}, txn_id=txn_id
    )
    async with events_pool.acquire() as conn:
        assert repeated == (
            event_id,
            (await storage.stream_positions_of(conn, [event_id]))[event_id],
        )
    again = await local.send_event(
        room_id, ALICE, "m.room.message", None, {"body": "once"}, txn_id=txn_id
    )
    assert again == repeated


class _CommitsBetweenQueries:
    """The reader's connection; after its first query, ``between`` commits on another."""

    def __init__(self, conn: asyncpg.Connection, between: Callable[[], Awaitable[None]]) -> None:
        self.conn = conn
        self.between: Callable[[], Awaitable[None]] | None = between

    async def fetch(self, *args: Any) -> list[asyncpg.Record]:
        rows = await self.conn.fetch(*args)
        if self.between is not None:
            between, self.between = self.between, None
            await between()
        return rows


async def test_a_read_of_events_and_ephemeral_rows_skips_no_event_committed_in_between(
    events_pool: asyncpg.Pool, core: RoomsCore, local: LocalEvents
) -> None:
    room_id = await _room(local)
    reader = _Reader(events_pool, {room_id}, await _latest(events_pool))
    sent: list[str] = []

    async def event_then_typing() -> None:
        event_id, _ = await local.send_event(room_id, ALICE, "m.room.message", None, {"body": "x"})
        sent.append(event_id)
        async with events_pool.acquire() as other:
            await storage.insert_ephemeral(
                other, [{"room_id": room_id, "kind": "typing", "user_id": ALICE, "typing": True}]
            )
            await storage.assign_stream_positions(other)

    async with events_pool.acquire() as conn:
        # Between reading the events and reading the ephemeral rows, an event and then a
        # typing row (a later position) are committed: both or neither may be read.
        await reader.read(_CommitsBetweenQueries(conn, event_then_typing))
        await reader.read(conn)
    assert reader.seen == [sent[0], f"typing {ALICE}"]


async def _someone_waits_for_an_advisory_lock(pool: asyncpg.Pool) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE l.locktype = 'advisory' AND NOT l.granted"
            " AND a.datname = current_database()"
        )
    )


async def test_a_round_waits_for_a_round_not_yet_committed_so_positions_appear_in_order(
    events_pool: asyncpg.Pool, core: RoomsCore, local: LocalEvents
) -> None:
    first, second = await _room(local), await _room(local)
    reader = _Reader(events_pool, {first, second}, await _latest(events_pool))
    async with events_pool.acquire() as conn, conn.transaction():
        _, first_id = await _write(conn, core, local, first, "first")
    async with events_pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        # A round (another replica's) has given the first room's event its position
        # and not committed yet.
        assert list(await storage.assign_stream_positions(conn)) == [first_id]
        # The second room's send commits; its round must wait for that one.
        sending = asyncio.create_task(
            local.send_event(second, ALICE, "m.room.message", None, {"body": "second"})
        )
        await wait_until(
            lambda: _someone_waits_for_an_advisory_lock(events_pool),
            interval=0.01,
            what="the second room's round waits for the first round's lock",
        )
        await reader.read()
        assert reader.seen == []
        await transaction.commit()
    second_id, _ = await asyncio.wait_for(sending, 30)
    await reader.read()
    assert reader.seen == [first_id, second_id]


async def test_a_redaction_of_an_event_still_waiting_for_its_position_streams_after_it(
    events_pool: asyncpg.Pool, core: RoomsCore, local: LocalEvents
) -> None:
    room_id = await _room(local)
    reader = _Reader(events_pool, {room_id}, await _latest(events_pool))
    async with events_pool.acquire() as conn, conn.transaction():
        _, target_id = await _write(conn, core, local, room_id, "regrettable")
    # Its round has not run; the next batch of the room redacts it (rewriting its row).
    async with events_pool.acquire() as conn, conn.transaction():
        batch = RoomBatch(core, conn, room_id)
        assert await batch.open(1)
        event, pdu = local.build(
            batch, room_id, "m.room.redaction", ALICE, None, {"redacts": target_id}, target_id
        )
        assert (await batch.add_local(event, pdu)).status is Status.ACCEPTED
        await batch.write()
    await batch.committed()
    await reader.read()
    assert reader.seen == [target_id, event.event_id]
    async with events_pool.acquire() as conn:
        stored = (await storage.fetch_events(conn, [target_id]))[target_id]
    assert stored.redacted


async def test_rows_the_running_round_positioned_are_not_looked_up_again_by_the_next_one(
    events_pool: asyncpg.Pool, core: RoomsCore, local: LocalEvents, monkeypatch: Any
) -> None:
    """A caller that asks while a round runs waits for the next round; rows it committed
    before the running round's statement got their positions there, and it takes them
    from that round instead of asking the database again."""
    room_id = await _room(local)
    positions = StreamPositions(events_pool)
    async with events_pool.acquire() as conn, conn.transaction():
        _, event_id = await _write(conn, core, local, room_id, "early")
    assign, running, let_finish = storage.assign_stream_positions, asyncio.Event(), asyncio.Event()

    async def held_round(conn: asyncpg.Connection) -> dict[str, int]:
        assigned = await assign(conn)
        if not running.is_set():  # the first round, once it positioned the row
            running.set()
            await let_finish.wait()
        return assigned

    async def looked_up(conn: asyncpg.Connection, event_ids: Any) -> dict[str, int]:
        raise AssertionError(f"looked up again: {event_ids}")

    monkeypatch.setattr(storage, "assign_stream_positions", held_round)
    monkeypatch.setattr(storage, "stream_positions_of", looked_up)
    first_round = asyncio.create_task(positions.assign())
    await asyncio.wait_for(running.wait(), 30)
    asking = asyncio.create_task(positions.assign([event_id]))
    await asyncio.sleep(0)  # it asked: the next round is its own
    let_finish.set()
    await first_round
    found = await asyncio.wait_for(asking, 30)
    async with events_pool.acquire() as conn:
        assert found == {
            event_id: await conn.fetchval(
                "SELECT stream_position FROM events.events WHERE event_id = $1", event_id
            )
        }


# The stream lock the rounds take (migration 012).
STREAM_LOCK = 120363881423873


# Counters of who gave stream positions: a write on kept heads, a room transaction.
KEPT_HEAD_WRITES = "mxfed_events_writes_on_kept_heads_total"
ROOM_TRANSACTIONS = "mxfed_events_streamed_room_transactions_total"


def _positioned_by(counter: str, who: str) -> float:
    return REGISTRY.get_sample_value(counter, {"positioned_by": who}) or 0.0


class _CountedRounds:
    """storage.assign_stream_positions, counting its calls (the rounds run)."""

    def __init__(self) -> None:
        self.rounds = 0
        self._assign = storage.assign_stream_positions

    async def __call__(self, conn: asyncpg.Connection) -> dict[str, int]:
        self.rounds += 1
        return await self._assign(conn)


async def test_a_lone_send_gives_positions_in_its_own_statement_to_rows_left_pending_first(
    events_pool: asyncpg.Pool, core: RoomsCore, local: LocalEvents, monkeypatch: Any
) -> None:
    room_id, other = await _room(local), await _room(local)
    # The room's head kept by this send: the next is written in one statement.
    await local.send_event(room_id, ALICE, "m.room.message", None, {"body": "first"})
    reader = _Reader(events_pool, {room_id, other}, await _latest(events_pool))
    async with events_pool.acquire() as conn, conn.transaction():
        # Committed in another room; its replica died before its round.
        _, orphan_id = await _write(conn, core, local, other, "orphan")
    counted = _CountedRounds()
    monkeypatch.setattr(storage, "assign_stream_positions", counted)
    by_write = _positioned_by(KEPT_HEAD_WRITES, "write")
    sent_id, position = await local.send_event(
        room_id, ALICE, "m.room.message", None, {"body": "second"}
    )
    # No round: the write took the free stream lock and positioned the row left pending
    # too, before its own (the order they were queued in).
    assert counted.rounds == 0
    assert _positioned_by(KEPT_HEAD_WRITES, "write") == by_write + 1
    async with events_pool.acquire() as conn:
        positions = await storage.stream_positions_of(conn, [orphan_id, sent_id])
    assert positions == {orphan_id: position - 1, sent_id: position}
    await reader.read()
    assert reader.seen == [orphan_id, sent_id]


async def test_a_lone_send_that_takes_the_stream_lock_inserts_its_event_positioned(
    events_pool: asyncpg.Pool, local: LocalEvents
) -> None:
    """Never pending (migration 023): not inserted and then rewritten with its position,
    which would take a place in the stream queue and leave a dead row version behind."""
    room_id = await _room(local)
    await local.send_event(room_id, ALICE, "m.room.message", None, {"body": "first"})
    orders = "SELECT last_value FROM events.stream_pending_order"
    async with events_pool.acquire() as conn:
        before = await conn.fetchval(orders)
        by_write = _positioned_by(KEPT_HEAD_WRITES, "write")
        sent_id, position = await local.send_event(
            room_id, ALICE, "m.room.message", None, {"body": "second"}
        )
        assert _positioned_by(KEPT_HEAD_WRITES, "write") == by_write + 1
        assert await conn.fetchval(orders) == before
        row = await conn.fetchrow(
            "SELECT stream_position, stream_pending FROM events.events WHERE event_id = $1",
            sent_id,
        )
    assert (row["stream_position"], row["stream_pending"]) == (position, None)


async def _send_while_the_stream_lock_is_held(
    events_pool: asyncpg.Pool, local: LocalEvents, room_id: str, *send: Any
) -> tuple[str, int]:
    """``local.send_event(room_id, *send)`` while another holds the stream lock: checked to
    have committed its event unpositioned without waiting for the lock with the room's
    held (the round after its commit is what waits), then answered once the lock is free."""
    async with events_pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", STREAM_LOCK)
        sending = asyncio.create_task(local.send_event(room_id, *send))
        try:
            await wait_until(
                lambda: _someone_waits_for_an_advisory_lock(events_pool),
                interval=0.01,
                what="the send's round waits for the stream lock",
            )
            pending = await holder.fetchval(
                "SELECT count(*) FROM events.events WHERE room_id = $1"
                " AND stream_pending IS NOT NULL",
                room_id,
            )
            assert pending == 1
            assert not sending.done()
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", STREAM_LOCK)
    return await asyncio.wait_for(sending, 30)


async def test_a_lone_send_commits_and_waits_for_a_round_while_the_stream_lock_is_taken(
    events_pool: asyncpg.Pool, core: RoomsCore, local: LocalEvents
) -> None:
    room_id = await _room(local)
    await local.send_event(room_id, ALICE, "m.room.message", None, {"body": "first"})
    reader = _Reader(events_pool, {room_id}, await _latest(events_pool))
    by_round = _positioned_by(KEPT_HEAD_WRITES, "round")
    sent_id, position = await _send_while_the_stream_lock_is_held(
        events_pool, local, room_id, ALICE, "m.room.message", None, {"body": "second"}
    )
    await reader.read()
    assert reader.seen == [sent_id]
    assert reader.position == position
    assert _positioned_by(KEPT_HEAD_WRITES, "round") == by_round + 1


async def test_rows_a_write_positioned_itself_are_answered_by_the_next_round_without_a_look_up(
    events_pool: asyncpg.Pool, core: RoomsCore, local: LocalEvents, monkeypatch: Any
) -> None:
    """A caller's committed rows that a lone send positioned in its own statement (before
    the caller's round ran) come with that round's answer, not from the database again."""
    room_id = await _room(local)
    async with events_pool.acquire() as conn, conn.transaction():
        _, event_id = await _write(conn, core, local, room_id, "committed")
    positions = StreamPositions(events_pool)
    async with events_pool.acquire() as conn:
        # As the lone send's statement does, with the stream lock it took.
        given = await storage.assign_stream_positions(conn)
    assert list(given) == [event_id]
    positions.given(given)

    async def looked_up(conn: asyncpg.Connection, event_ids: Any) -> dict[str, int]:
        raise AssertionError(f"looked up again: {event_ids}")

    monkeypatch.setattr(storage, "stream_positions_of", looked_up)
    assert await asyncio.wait_for(positions.assign([event_id]), 30) == given


async def test_a_room_transaction_gives_positions_before_its_commit_when_the_lock_is_free(
    events_pool: asyncpg.Pool, core: RoomsCore, local: LocalEvents, monkeypatch: Any
) -> None:
    """A state event (a new state group: not on a kept head) is written in a room
    transaction, which positions its event and the rows left pending before it, in their
    order, and commits: no round after it (migration 022)."""
    room_id, other = await _room(local), await _room(local)
    reader = _Reader(events_pool, {room_id, other}, await _latest(events_pool))
    async with events_pool.acquire() as conn, conn.transaction():
        # Committed in another room; its replica died before its round.
        _, orphan_id = await _write(conn, core, local, other, "orphan")
    counted = _CountedRounds()
    monkeypatch.setattr(storage, "assign_stream_positions", counted)
    by_commit = _positioned_by(ROOM_TRANSACTIONS, "write")
    sent_id, position = await local.send_event(room_id, ALICE, "m.room.topic", "", {"topic": "t"})
    assert counted.rounds == 0
    assert _positioned_by(ROOM_TRANSACTIONS, "write") == by_commit + 1
    async with events_pool.acquire() as conn:
        positions = await storage.stream_positions_of(conn, [orphan_id, sent_id])
    assert positions == {orphan_id: position - 1, sent_id: position}
    await reader.read()
    assert reader.seen == [orphan_id, sent_id]


async def test_a_room_transaction_commits_and_waits_for_a_round_while_the_lock_is_taken(
    events_pool: asyncpg.Pool, core: RoomsCore, local: LocalEvents
) -> None:
    room_id = await _room(local)
    reader = _Reader(events_pool, {room_id}, await _latest(events_pool))
    by_round = _positioned_by(ROOM_TRANSACTIONS, "round")
    sent_id, position = await _send_while_the_stream_lock_is_held(
        events_pool, local, room_id, ALICE, "m.room.topic", "", {"topic": "t"}
    )
    await reader.read()
    assert reader.seen == [sent_id]
    assert reader.position == position
    assert _positioned_by(ROOM_TRANSACTIONS, "round") == by_round + 1


async def test_a_transaction_that_positions_its_rows_flushes_its_commit(
    events_pool: asyncpg.Pool,
) -> None:
    """Told to commit without a flush (a round after it was to make it durable), a
    transaction that took the stream lock and positioned its rows commits with one."""
    async with events_pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit = off")
        await storage.position_if_free(conn)
        assert await conn.fetchval("SELECT current_setting('synchronous_commit')") == "on"
    async with events_pool.acquire() as holder, events_pool.acquire() as conn:
        await holder.execute("SELECT pg_advisory_lock($1)", STREAM_LOCK)
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL synchronous_commit = off")
                assert await storage.position_if_free(conn) == ({}, None)
                # Not taken: the round after the commit flushes it.
                assert await conn.fetchval("SELECT current_setting('synchronous_commit')") == "off"
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", STREAM_LOCK)


async def test_a_response_stored_with_the_positions_keeps_one_stored_before(
    events_pool: asyncpg.Pool,
) -> None:
    origin, txn_id = "remote.test", secrets.token_hex(8)
    first = storage.TransactionResponse(origin, txn_id, '{"pdus":{"$a":{}}}', 1)
    again = storage.TransactionResponse(origin, txn_id, '{"pdus":{}}', 2)
    async with events_pool.acquire() as conn:
        async with conn.transaction():
            _, stored = await storage.position_if_free(conn, first)
        assert stored == first.response_json
        async with conn.transaction():
            _, stored = await storage.position_if_free(conn, again)
        assert stored == first.response_json
        assert await storage.stored_transaction_response(conn, origin, txn_id) == stored
