"""SQL of the directory: the published_rooms table and reads of current state.

Tables are named with their schema (``events``) because pool connections
do not set a search_path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from matrix_protocol.canonical_json import decode_json
from mxfed.clock import now_ms

# The state a room summary is computed from.
SUMMARY_TYPES = (
    "m.room.create",
    "m.room.name",
    "m.room.topic",
    "m.room.canonical_alias",
    "m.room.avatar",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.encryption",
)

StateKey = tuple[str, str]


@dataclass
class StateEvent:
    type: str
    state_key: str
    pdu: dict[str, Any]

    @property
    def content(self) -> dict[str, Any]:
        content = self.pdu.get("content")
        return content if isinstance(content, dict) else {}


@dataclass
class RoomData:
    room_id: str
    room_version: str
    joined_members: int
    state: dict[StateKey, StateEvent]


async def publish(conn: asyncpg.Connection, room_id: str, network_id: str) -> bool:
    """Add the room; return whether it was listed already."""
    previous = await conn.fetchval(
        "SELECT network_id FROM events.published_rooms WHERE room_id = $1", room_id
    )
    await conn.execute(
        "INSERT INTO events.published_rooms (room_id, network_id, published_ts)"
        " VALUES ($1, $2, $3) ON CONFLICT (room_id) DO UPDATE SET network_id = EXCLUDED.network_id",
        room_id,
        network_id,
        now_ms(),
    )
    return previous is not None


async def unpublish(conn: asyncpg.Connection, room_id: str) -> bool:
    deleted = await conn.fetchval(
        "DELETE FROM events.published_rooms WHERE room_id = $1 RETURNING room_id", room_id
    )
    return deleted is not None


async def published_room_ids(
    conn: asyncpg.Connection, network_ids: Sequence[str] | None
) -> list[str]:
    """Published rooms of the given networks (None: every network)."""
    if network_ids is None:
        rows = await conn.fetch("SELECT room_id FROM events.published_rooms")
    else:
        rows = await conn.fetch(
            "SELECT room_id FROM events.published_rooms WHERE network_id = ANY($1::text[])",
            list(network_ids),
        )
    return [row["room_id"] for row in rows]


async def room_exists(conn: asyncpg.Connection, room_id: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM events.rooms WHERE room_id = $1 AND create_event_id IS NOT NULL",
            room_id,
        )
    )


async def load_rooms(
    conn: asyncpg.Connection,
    room_ids: Iterable[str],
    extra_types: Sequence[str] = (),
) -> dict[str, RoomData]:
    """Summary state, joined member counts and versions of the rooms we know."""
    ids = list(dict.fromkeys(room_ids))
    if not ids:
        return {}
    rooms = await conn.fetch(
        "SELECT room_id, room_version FROM events.rooms"
        " WHERE room_id = ANY($1::text[]) AND create_event_id IS NOT NULL",
        ids,
    )
    result = {row["room_id"]: RoomData(row["room_id"], row["room_version"], 0, {}) for row in rooms}
    if not result:
        return {}
    known = list(result)
    counts = await conn.fetch(
        "SELECT room_id, count(*) AS joined FROM events.current_state"
        " WHERE room_id = ANY($1::text[]) AND type = 'm.room.member' AND membership = 'join'"
        " GROUP BY room_id",
        known,
    )
    for row in counts:
        result[row["room_id"]].joined_members = row["joined"]
    state_rows = await conn.fetch(
        "SELECT cs.room_id, cs.type, cs.state_key, e.pdu_json FROM events.current_state cs"
        " JOIN events.events e ON e.event_id = cs.event_id"
        " WHERE cs.room_id = ANY($1::text[]) AND cs.type = ANY($2::text[])",
        known,
        [*SUMMARY_TYPES, *extra_types],
    )
    for row in state_rows:
        try:
            pdu = decode_json(row["pdu_json"])
        except ValueError:
            continue
        if isinstance(pdu, dict):
            result[row["room_id"]].state[(row["type"], row["state_key"])] = StateEvent(
                row["type"], row["state_key"], pdu
            )
    return result


async def server_has_member(
    conn: asyncpg.Connection, room_id: str, server: str, memberships: Sequence[str]
) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM events.current_state WHERE room_id = $1 AND type = 'm.room.member'"
            " AND server = $2 AND membership = ANY($3::text[]) LIMIT 1",
            room_id,
            server,
            list(memberships),
        )
    )


async def server_joined_any(conn: asyncpg.Connection, room_ids: Sequence[str], server: str) -> bool:
    if not room_ids:
        return False
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM events.current_state WHERE room_id = ANY($1::text[])"
            " AND type = 'm.room.member' AND server = $2 AND membership = 'join' LIMIT 1",
            list(room_ids),
            server,
        )
    )


async def rooms_of_user(conn: asyncpg.Connection, user_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT room_id FROM events.current_state"
        " WHERE type = 'm.room.member' AND state_key = $1 AND membership = 'join'"
        " ORDER BY room_id",
        user_id,
    )
    return [row["room_id"] for row in rows]
