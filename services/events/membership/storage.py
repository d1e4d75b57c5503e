"""The membership tables: out-of-band memberships of local users.

An out-of-band membership is one of a local user in a room we are not in:
an invite a remote server sent us, a knock we made through a remote server,
or the leave that rejected/retracted one of those. They never enter the
room's DAG here ([Synapse]); local consumers read them with
``QueryInvites``.

The table lives in the events schema and is created at service start (the
membership package has no migrations folder of its own); creating it is
idempotent and serialised with an advisory lock so replicas can start
together.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

_SCHEMA_LOCK = 0x6D78666564_4D  # "mxfed" + "M"

SCHEMA = """
CREATE TABLE IF NOT EXISTS events.membership_out_of_band (
    user_id text NOT NULL,
    room_id text NOT NULL,
    membership text NOT NULL,
    event_id text NOT NULL,
    room_version text NOT NULL,
    sender text NOT NULL,
    via_server text NOT NULL,
    event_json text NOT NULL,
    stripped_state_json text NOT NULL DEFAULT '[]',
    received_ts bigint NOT NULL,
    PRIMARY KEY (user_id, room_id)
);
"""


@dataclass
class OutOfBand:
    user_id: str
    room_id: str
    membership: str
    event_id: str
    room_version: str
    sender: str
    via_server: str
    event_json: str
    stripped_state_json: str
    received_ts: int


async def create_tables(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
        await conn.execute(SCHEMA)


async def upsert(conn: asyncpg.Connection, row: OutOfBand) -> None:
    await conn.execute(
        "INSERT INTO events.membership_out_of_band (user_id, room_id, membership, event_id,"
        " room_version, sender, via_server, event_json, stripped_state_json, received_ts)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        " ON CONFLICT (user_id, room_id) DO UPDATE SET membership = EXCLUDED.membership,"
        " event_id = EXCLUDED.event_id, room_version = EXCLUDED.room_version,"
        " sender = EXCLUDED.sender, via_server = EXCLUDED.via_server,"
        " event_json = EXCLUDED.event_json, stripped_state_json = EXCLUDED.stripped_state_json,"
        " received_ts = EXCLUDED.received_ts",
        row.user_id,
        row.room_id,
        row.membership,
        row.event_id,
        row.room_version,
        row.sender,
        row.via_server,
        row.event_json,
        row.stripped_state_json,
        row.received_ts,
    )


async def get(conn: asyncpg.Connection, user_id: str, room_id: str) -> OutOfBand | None:
    row = await conn.fetchrow(
        "SELECT * FROM events.membership_out_of_band WHERE user_id = $1 AND room_id = $2",
        user_id,
        room_id,
    )
    return OutOfBand(**dict(row)) if row is not None else None


async def list_for(conn: asyncpg.Connection, user_id: str) -> list[OutOfBand]:
    if user_id:
        rows = await conn.fetch(
            "SELECT * FROM events.membership_out_of_band WHERE user_id = $1 ORDER BY received_ts",
            user_id,
        )
    else:
        rows = await conn.fetch("SELECT * FROM events.membership_out_of_band ORDER BY received_ts")
    return [OutOfBand(**dict(row)) for row in rows]


async def delete(conn: asyncpg.Connection, user_id: str, room_id: str) -> None:
    await conn.execute(
        "DELETE FROM events.membership_out_of_band WHERE user_id = $1 AND room_id = $2",
        user_id,
        room_id,
    )
