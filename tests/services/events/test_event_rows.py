"""A room batch's events are stored alike whether few (one statement with their edges, the
forward extremities' change and local transaction ids, for one room or for several rooms
written together) or many (a COPY per table, then the rest): every column, the order of
servers_before, auth and prev edges, extremities."""

from __future__ import annotations

from typing import Any

import asyncpg

from matrix_protocol.canonical_json import encode_json
from matrix_protocol.events import Event
from matrix_protocol.room_versions import room_version
from services.events import storage
from services.events.storage import EventWrite, Status, StoredEvent

VERSION = room_version("10")
COLUMNS = (
    "type, state_key, sender, membership, depth, origin_server_ts, pdu_json, status,"
    " rejection_reason, redacted, state_group_before, state_group_after, servers_before,"
    " relayed_for, stream_pending"
)


def _write(room: str, n: int) -> EventWrite:
    """The ``n``-th of a room's events: every kind of column value in turn."""
    member = n % 3 == 0
    pdu: dict[str, Any] = {
        "type": "m.room.member" if member else "m.room.message",
        "sender": f"@u{n}:a.test",
        "content": {"membership": "join"} if member else {"body": f"n{n}"},
        "depth": n + 1,
        "origin_server_ts": 1_700_000_000_000 + n,
        "prev_events": [f"{room}-{n - 1}"] if n else [],
        "auth_events": [f"{room}-auth-{k}" for k in range(n % 4)],
        "room_id": room,
    }
    if member:
        pdu["state_key"] = f"@u{n}:a.test"
    stored = StoredEvent(
        Event(pdu, VERSION, f"{room}-{n}"),
        Status.REJECTED if n % 5 == 4 else Status.ACCEPTED,
        rejection_reason="no" if n % 5 == 4 else "",
        redacted=n % 7 == 6,
        state_group_before=None if n % 6 == 5 else 10 * n,
        state_group_after=None if n % 6 == 5 else 10 * n + 1,
        # Not sorted: the order given is the order stored.
        servers_before=["c.test", "a.test", "b.test"][: n % 4],
    )
    return EventWrite(
        stored,
        encode_json(pdu).decode(),
        "join" if member else None,
        relayed_for="r.test" if n % 4 == 1 else None,
    )


async def _stored(conn: asyncpg.Connection, room: str, count: int) -> list[Any]:
    rows = []
    for n in range(count):
        event_id = f"{room}-{n}"
        row = await conn.fetchrow(
            f"SELECT {COLUMNS} FROM events.events WHERE event_id = $1", event_id
        )
        auth = await conn.fetch(
            "SELECT auth_id FROM events.event_auth WHERE event_id = $1 ORDER BY auth_id", event_id
        )
        prevs = await conn.fetch(
            "SELECT prev_event_id FROM events.event_edges WHERE event_id = $1", event_id
        )
        rows.append(
            (
                dict(row),
                [r["auth_id"].removeprefix(room) for r in auth],
                [r["prev_event_id"].removeprefix(room) for r in prevs],
            )
        )
    return rows


ROOMS = (("!few:rows.test", 12), ("!few2:rows.test", 12), ("!many:rows.test", 40))


async def test_a_few_events_are_stored_as_many_are(events_pool: asyncpg.Pool) -> None:
    """Two rooms with a few events and one with many, written together (as a /send's
    rooms are): the two in one statement, the other by COPY."""
    async with events_pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            rooms = []
            for k, (room, count) in enumerate(ROOMS):
                await conn.execute(
                    "INSERT INTO events.rooms (room_id, room_version) VALUES ($1, '10')", room
                )
                await conn.execute(
                    "INSERT INTO events.forward_extremities (room_id, event_id)"
                    " VALUES ($1, $1 || '-old'), ($1, $1 || '-kept')",
                    room,
                )
                writes = [_write(room, n) for n in range(count)]
                change = storage.HeadChange(
                    [f"{room}-old"], [f"{room}-{count - 1}"], [("@u1:a.test", room, f"{room}-1")]
                )
                # Every other accepted event queued for the stream (places rolled back).
                pending = {
                    w.stored.event_id: 1_000_000_000 + 100 * n + k
                    for n, w in enumerate(writes)
                    if n % 2 == 0
                }
                rooms.append(storage.RoomWrites(room, writes, pending, change))
            await storage.insert_events(conn, rooms)
            heads = {}
            stored = []
            for k, (room, _) in enumerate(ROOMS):
                heads[room] = (
                    await conn.fetch(
                        "SELECT event_id FROM events.forward_extremities WHERE room_id = $1"
                        " ORDER BY event_id",
                        room,
                    ),
                    await conn.fetchval(
                        "SELECT event_id FROM events.local_transactions"
                        " WHERE sender = '@u1:a.test' AND txn_id = $1",
                        room,
                    ),
                )
                rows = await _stored(conn, room, 12)
                for row, _, _ in rows:
                    if row["stream_pending"] is not None:
                        row["stream_pending"] -= k
                    row["pdu_json"] = row["pdu_json"].replace(room, ROOMS[0][0])
                stored.append(rows)
        finally:
            await transaction.rollback()
    stored_few, stored_few2, stored_many = stored
    assert stored_few == stored_few2 == stored_many
    # The values themselves, not only alike.
    assert stored_few[3][0]["servers_before"] == ["c.test", "a.test", "b.test"]
    assert stored_few[3][0]["state_key"] == "@u3:a.test"
    assert stored_few[1][0]["relayed_for"] == "r.test"
    assert stored_few[5][0]["state_group_before"] is None
    assert stored_few[3][1] == ["-auth-0", "-auth-1", "-auth-2"]
    assert stored_few[3][2] == ["-2"]
    assert stored_few[0][0]["stream_pending"] == 1_000_000_000
    # Each room's forward extremities replaced (the others' untouched) and the local
    # transaction ids stored with them.
    for room, count in ROOMS:
        extremities, sent = heads[room]
        assert [row["event_id"] for row in extremities] == [f"{room}-{count - 1}", f"{room}-kept"]
        assert sent == f"{room}-1"


async def test_the_few_events_insert_answering_a_boolean_is_gone(events_pool: asyncpg.Pool) -> None:
    """Code from before migration 019 calls ``events.insert_few`` and reads a boolean;
    since 019 the insert answers a row, under another name (020), so such a call fails
    rather than take the row for "written"."""
    async with events_pool.acquire() as conn:
        assert await conn.fetchval("SELECT to_regproc('events.insert_few')") is None
        names = await conn.fetchval(
            "SELECT proargnames FROM pg_proc"
            " WHERE oid = to_regproc('events.insert_few_then_position')"
        )
    assert names[-3:] == ["written", "positioned_ids", "positions"]
