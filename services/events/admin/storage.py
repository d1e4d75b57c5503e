"""SQL of the administrative actions: the policy tables and the audit records.

The purges, which delete from the room tables, live with the other room-table
SQL in :mod:`services.events.storage` (``purge_history``, ``purge_room``).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class ServerRuleRow:
    pattern: str
    allow: bool
    reason: str
    created_by: str
    created_ts: int


@dataclass(frozen=True)
class BlockedRoomRow:
    room_id: str
    reason: str
    created_by: str
    created_ts: int


@dataclass(frozen=True)
class AuditRow:
    id: int
    ts: int
    caller: str
    action: str
    target: str
    details_json: str


@dataclass(frozen=True)
class PolicyRows:
    version: int
    allow_list_mode: bool
    rules: list[ServerRuleRow]
    blocked_rooms: list[BlockedRoomRow]


async def policy_version(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    return int(await conn.fetchval("SELECT version FROM events.admin_policy WHERE id = 1"))


async def load_policy(conn: asyncpg.Connection) -> PolicyRows:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        head = await conn.fetchrow(
            "SELECT version, allow_list_mode FROM events.admin_policy WHERE id = 1"
        )
        rules = await conn.fetch(
            "SELECT pattern, allow, reason, created_by, created_ts FROM events.server_rules"
            " ORDER BY allow, pattern"
        )
        rooms = await conn.fetch(
            "SELECT room_id, reason, created_by, created_ts FROM events.blocked_rooms"
            " ORDER BY room_id"
        )
    return PolicyRows(
        version=head["version"],
        allow_list_mode=head["allow_list_mode"],
        rules=[ServerRuleRow(**dict(row)) for row in rules],
        blocked_rooms=[BlockedRoomRow(**dict(row)) for row in rooms],
    )


async def _bump(conn: asyncpg.Connection) -> None:
    await conn.execute("UPDATE events.admin_policy SET version = version + 1 WHERE id = 1")


async def add_server_rule(conn: asyncpg.Connection, rule: ServerRuleRow) -> bool:
    status = await conn.execute(
        "INSERT INTO events.server_rules (pattern, allow, reason, created_by, created_ts)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        rule.pattern,
        rule.allow,
        rule.reason,
        rule.created_by,
        rule.created_ts,
    )
    added = status.endswith(" 1")
    if added:
        await _bump(conn)
    return added


async def remove_server_rule(conn: asyncpg.Connection, pattern: str, allow: bool) -> bool:
    status = await conn.execute(
        "DELETE FROM events.server_rules WHERE pattern = $1 AND allow = $2", pattern, allow
    )
    removed = not status.endswith(" 0")
    if removed:
        await _bump(conn)
    return removed


async def set_allow_list_mode(conn: asyncpg.Connection, enabled: bool) -> bool:
    """Set the mode; returns what it was."""
    was = bool(
        await conn.fetchval(
            "SELECT allow_list_mode FROM events.admin_policy WHERE id = 1 FOR UPDATE"
        )
    )
    if was != enabled:
        await conn.execute(
            "UPDATE events.admin_policy SET allow_list_mode = $1, version = version + 1"
            " WHERE id = 1",
            enabled,
        )
    return was


async def block_room(conn: asyncpg.Connection, row: BlockedRoomRow) -> bool:
    status = await conn.execute(
        "INSERT INTO events.blocked_rooms (room_id, reason, created_by, created_ts)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        row.room_id,
        row.reason,
        row.created_by,
        row.created_ts,
    )
    added = status.endswith(" 1")
    if added:
        await _bump(conn)
    return added


async def unblock_room(conn: asyncpg.Connection, room_id: str) -> bool:
    status = await conn.execute("DELETE FROM events.blocked_rooms WHERE room_id = $1", room_id)
    removed = not status.endswith(" 0")
    if removed:
        await _bump(conn)
    return removed


async def add_audit(
    conn: asyncpg.Connection | asyncpg.Pool,
    ts: int,
    caller: str,
    action: str,
    target: str,
    details_json: str,
) -> int:
    return int(
        await conn.fetchval(
            "INSERT INTO events.audit_log (ts, caller, action, target, details_json)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING id",
            ts,
            caller,
            action,
            target,
            details_json,
        )
    )


async def audit_log(conn: asyncpg.Connection | asyncpg.Pool, limit: int) -> list[AuditRow]:
    rows = await conn.fetch(
        "SELECT id, ts, caller, action, target, details_json FROM events.audit_log"
        " ORDER BY id DESC LIMIT $1",
        limit,
    )
    return [AuditRow(**dict(row)) for row in rows]


async def room_known(conn: asyncpg.Connection | asyncpg.Pool, room_id: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM events.rooms WHERE room_id = $1", room_id))


async def local_joined_members(
    conn: asyncpg.Connection | asyncpg.Pool, room_id: str, server_name: str
) -> list[str]:
    rows = await conn.fetch(
        "SELECT state_key FROM events.current_state WHERE room_id = $1"
        " AND type = 'm.room.member' AND membership = 'join' AND server = $2"
        " ORDER BY state_key",
        room_id,
        server_name,
    )
    return [row["state_key"] for row in rows]


async def event_depth(
    conn: asyncpg.Connection | asyncpg.Pool, room_id: str, event_id: str
) -> int | None:
    value = await conn.fetchval(
        "SELECT depth FROM events.events WHERE room_id = $1 AND event_id = $2", room_id, event_id
    )
    return None if value is None else int(value)
