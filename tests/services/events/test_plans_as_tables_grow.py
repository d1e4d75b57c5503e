"""A room's head read and its checked write find their rows by key, whatever the tables'
sizes when their generic plans were made.

Room transactions run with generic plans, made once per connection (see
``storage.room_transaction``), and a write on kept heads is a PL/pgSQL function whose
statements are planned once per session too. Planned while the tables were small, these
joined the whole of local_transactions, events, rooms and the forward extremities by hash
and kept doing so as the tables grew (every local send ever made with a transaction id,
every room of the server): each read and write then cost time in proportion to the
server's size. Here the plans are made on nearly empty tables, the tables grow, and
PostgreSQL's ``auto_explain`` shows what the next read and write scanned."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from matrix_protocol.canonical_json import encode_json
from matrix_protocol.events import Event
from matrix_protocol.room_versions import room_version
from mxfed.database import apply_migrations, create_pool
from mxfed.service_runtime import migrations_directory
from services.events import storage
from services.events.storage import EventWrite, Status, StoredEvent
from tests.support.databases import explain_from_now, rows_examined

ROOM = "!grown:a.test"
SENDER = "@a:a.test"
GROWN = 20_000
# The tables whose rows a head read or a checked write looks up by key.
LOOKED_UP = {
    "events",
    "rooms",
    "forward_extremities",
    "local_transactions",
    "waiting_redactions",
    "partial_state_rooms",
}


def _write(n: int) -> EventWrite:
    pdu: dict[str, Any] = {
        "type": "m.room.message",
        "sender": SENDER,
        "content": {"body": f"n{n}"},
        "depth": n + 1,
        "origin_server_ts": 1_700_000_000_000 + n,
        "prev_events": [f"$grown-{n - 1}"],
        "auth_events": [],
        "room_id": ROOM,
    }
    stored = StoredEvent(
        Event(pdu, room_version("10"), f"$grown-{n}"),
        Status.ACCEPTED,
        state_group_before=1,
        state_group_after=1,
    )
    return EventWrite(stored, encode_json(pdu).decode(), None)


async def _write_on_kept_head(conn: asyncpg.Connection, n: int) -> dict[str, int] | None:
    """Event ``n`` written on the head event ``n - 1`` left, as a lone local send is."""
    change = storage.HeadChange(
        [f"$grown-{n - 1}"], [f"$grown-{n}"], [(SENDER, f"t{n}", f"$grown-{n}")]
    )
    room = storage.RoomWrites(
        ROOM, [_write(n)], {}, change, storage.ExpectedHead(f"$grown-{n - 1}", 1)
    )
    return await storage.insert_events_alone(conn, [room])


async def _read_head(conn: asyncpg.Connection, sent: tuple[str, str]) -> storage.RoomHead | None:
    async with storage.room_transaction(conn, ROOM):
        return await storage.room_head(conn, ROOM, 1, local_transactions=[sent])


@pytest.fixture
async def pool(own_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(own_database_url, max_size=2)
    await apply_migrations(pool, "events", migrations_directory("events"))
    yield pool
    await pool.close()


async def test_head_reads_and_checked_writes_look_up_by_key_after_the_tables_grew(
    pool: asyncpg.Pool, own_database_url: str
) -> None:
    await pool.execute(
        "INSERT INTO events.rooms (room_id, room_version, current_state_group)"
        " VALUES ($1, '10', 1)",
        ROOM,
    )
    await pool.execute(
        "INSERT INTO events.events (event_id, room_id, type, sender, depth, origin_server_ts,"
        " pdu_json, status) VALUES ('$grown-0', $1, 'm.room.create', $2, 0, 0, '{}', 1)",
        ROOM,
        SENDER,
    )
    await pool.execute("INSERT INTO events.forward_extremities VALUES ($1, '$grown-0')", ROOM)
    await pool.execute("ANALYZE")
    conn = await asyncpg.connect(own_database_url)
    try:
        # Planned now, on nearly empty tables.
        assert (await _read_head(conn, (SENDER, "t0"))).extremities == {"$grown-0": 0}
        assert await _write_on_kept_head(conn, 1) is not None
        # Another room per row: every table a head read or a write looks in grows.
        await pool.execute(
            "INSERT INTO events.rooms (room_id, room_version, current_state_group)"
            " SELECT '!r' || i || ':b.test', '10', 1 FROM generate_series(1, $1) i",
            GROWN,
        )
        await pool.execute(
            "INSERT INTO events.events (event_id, room_id, type, sender, depth,"
            " origin_server_ts, pdu_json, status) SELECT '$e' || i, '!r' || i || ':b.test',"
            " 'm.room.message', '@b:b.test', i, 0, '{}', 1 FROM generate_series(1, $1) i",
            GROWN,
        )
        await pool.execute(
            "INSERT INTO events.forward_extremities SELECT '!r' || i || ':b.test', '$e' || i"
            " FROM generate_series(1, $1) i",
            GROWN,
        )
        await pool.execute(
            "INSERT INTO events.local_transactions SELECT '@b:b.test', 't' || i, '$e' || i"
            " FROM generate_series(1, $1) i",
            GROWN,
        )
        plans = await explain_from_now(conn)
        head = await _read_head(conn, (SENDER, "t1"))
        assert head is not None and head.extremities == {"$grown-1": 2}
        assert head.sent_before == {(SENDER, "t1"): ("$grown-1", None)}
        assert await _write_on_kept_head(conn, 2) is not None
        assert await _write_on_kept_head(conn, 2) is None  # the head moved on: checked
    finally:
        await conn.close()
    examined = list(rows_examined(plans, LOOKED_UP))
    looked_in = {scan.table for scan in examined}
    assert {"events", "rooms", "forward_extremities", "local_transactions"} <= looked_in
    for scan in examined:
        assert scan.rows <= 10, scan.shown
