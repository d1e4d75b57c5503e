"""The accounts service's tables (schema ``accounts``, see ``migrations/``).

Every function takes what to run on: a connection when the caller holds a
transaction (the statement must run in it), else the pool. Tables are always
named with their schema: pool connections do not set a search_path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import asyncpg

# A pool (one statement, its own connection) or a connection (the caller's transaction).
Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection

# ------------------------------------------------------------ remote presence


async def upsert_remote_presence(db: Executor, rows: Sequence[tuple[Any, ...]]) -> None:
    """Record each (user_id, presence, last_active_ts, status_msg, currently_active,
    received_ts) row as that remote user's latest presence."""
    await db.executemany(
        "INSERT INTO accounts.remote_presence (user_id, presence, last_active_ts,"
        " status_msg, currently_active, received_ts) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (user_id) DO UPDATE SET presence = EXCLUDED.presence,"
        " last_active_ts = EXCLUDED.last_active_ts, status_msg = EXCLUDED.status_msg,"
        " currently_active = EXCLUDED.currently_active,"
        " received_ts = EXCLUDED.received_ts",
        rows,
    )


async def remote_presence(db: Executor, user_ids: Sequence[str]) -> list[asyncpg.Record]:
    """The stored presence rows of these users, by user id."""
    return await db.fetch(
        "SELECT user_id, presence, last_active_ts, status_msg, currently_active, received_ts"
        " FROM accounts.remote_presence WHERE user_id = ANY($1::text[]) ORDER BY user_id",
        user_ids,
    )


# ------------------------------------------------------------ to-device

TO_DEVICE_INBOX_COLUMNS = (
    "user_id",
    "device_id",
    "position",
    "sender",
    "type",
    "content_json",
    "origin",
    "message_id",
    "received_ts",
)


async def record_to_device_message_id(
    db: Executor, origin: str, message_id: str, received_ts: int
) -> bool:
    """Record that ``origin``'s to-device ``message_id`` arrived; False when it was
    recorded before (a duplicate)."""
    return bool(
        await db.fetchval(
            "INSERT INTO accounts.to_device_dedupe (origin, message_id, received_ts)"
            " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING true",
            origin,
            message_id,
            received_ts,
        )
    )


async def lock_devices_of(db: Executor, user_ids: Sequence[str]) -> list[asyncpg.Record]:
    """(user_id, device_id) of these users' devices, locked FOR SHARE in sorted order."""
    return await db.fetch(
        "SELECT user_id, device_id FROM accounts.devices WHERE user_id = ANY($1::text[])"
        " ORDER BY user_id, device_id FOR SHARE",
        user_ids,
    )


async def advance_to_device_stream(db: Executor, user_id: str, device_id: str, count: int) -> int:
    """Reserve ``count`` positions of the device's to-device stream (its row locked to
    commit); the last one reserved."""
    last: int = await db.fetchval(
        "INSERT INTO accounts.to_device_streams (user_id, device_id, position)"
        " VALUES ($1, $2, $3) ON CONFLICT (user_id, device_id) DO UPDATE"
        " SET position = accounts.to_device_streams.position + EXCLUDED.position"
        " RETURNING position",
        user_id,
        device_id,
        count,
    )
    return last


async def insert_to_device_messages(
    conn: asyncpg.Connection, records: Sequence[tuple[Any, ...]]
) -> None:
    """Copy rows (in :data:`TO_DEVICE_INBOX_COLUMNS` order) into the inboxes."""
    await conn.copy_records_to_table(
        "to_device_inbox",
        schema_name="accounts",
        records=records,
        columns=list(TO_DEVICE_INBOX_COLUMNS),
    )


async def notify(db: Executor, channel: str, payload: str) -> None:
    """NOTIFY ``channel`` (at commit, when in a transaction)."""
    await db.execute("SELECT pg_notify($1, $2)", channel, payload)


async def prune_to_device_dedupe(db: Executor, before_ts: int) -> None:
    """Forget the to-device message ids received before ``before_ts``."""
    await db.execute("DELETE FROM accounts.to_device_dedupe WHERE received_ts < $1", before_ts)


async def to_device_messages_after(
    db: Executor, user_id: str, device_id: str, after: int, limit: int
) -> list[asyncpg.Record]:
    """The device's inbox rows after position ``after``, oldest first, at most ``limit``."""
    return await db.fetch(
        "SELECT position, sender, type, content_json, origin, message_id, received_ts"
        " FROM accounts.to_device_inbox WHERE user_id = $1 AND device_id = $2 AND position > $3"
        " ORDER BY position LIMIT $4",
        user_id,
        device_id,
        after,
        limit,
    )


async def delete_to_device_messages(db: Executor, user_id: str, device_id: str, up_to: int) -> int:
    """Delete the device's inbox rows up to position ``up_to``; how many there were."""
    result = await db.execute(
        "DELETE FROM accounts.to_device_inbox WHERE user_id = $1 AND device_id = $2"
        " AND position <= $3",
        user_id,
        device_id,
        up_to,
    )
    return int(result.split()[-1])


# ------------------------------------------------------------ device lists on joins
# All run on the connection holding the device-list-joins leader lock.


async def join_cursor_position(conn: asyncpg.Connection) -> int:
    """How far the device-list join follower has read the events stream."""
    position: int = await conn.fetchval(
        "SELECT stream_position FROM accounts.device_list_join_cursor"
    )
    return position


async def set_join_cursor_position(conn: asyncpg.Connection, position: int) -> None:
    """Move the device-list join follower's cursor to ``position``."""
    await conn.execute(
        "UPDATE accounts.device_list_join_cursor SET stream_position = $1",
        position,
    )


async def insert_partial_join(
    conn: asyncpg.Connection,
    event_id: str,
    user_id: str,
    room_id: str,
    sent_to: Sequence[str],
    created_ts: int,
) -> None:
    """Remember a join to a partial-state room and the servers it went to (once per event)."""
    await conn.execute(
        "INSERT INTO accounts.device_list_partial_joins"
        " (event_id, user_id, room_id, sent_to, created_ts)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
        event_id,
        user_id,
        room_id,
        sent_to,
        created_ts,
    )


async def partial_joins(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    """The oldest remembered partial-state joins (event_id, user_id, room_id, sent_to)."""
    return await conn.fetch(
        "SELECT event_id, user_id, room_id, sent_to"
        " FROM accounts.device_list_partial_joins ORDER BY created_ts LIMIT $1",
        limit,
    )


async def delete_partial_join(conn: asyncpg.Connection, event_id: str) -> None:
    """Forget a remembered partial-state join."""
    await conn.execute(
        "DELETE FROM accounts.device_list_partial_joins WHERE event_id = $1",
        event_id,
    )


async def insert_join_outbox(
    conn: asyncpg.Connection,
    user_id: str,
    room_id: str,
    event_id: str,
    destinations: Sequence[str],
    created_ts: int,
) -> None:
    """Queue the user's device list for ``destinations`` (once per ``event_id``)."""
    await conn.execute(
        "INSERT INTO accounts.device_list_join_outbox"
        " (user_id, room_id, event_id, destinations, created_ts)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
        user_id,
        room_id,
        event_id,
        destinations,
        created_ts,
    )


async def join_outbox(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    """The oldest queued device lists (seq, user_id, destinations)."""
    return await conn.fetch(
        "SELECT seq, user_id, destinations FROM accounts.device_list_join_outbox"
        " ORDER BY seq LIMIT $1",
        limit,
    )


async def delete_join_outbox_row(conn: asyncpg.Connection, seq: int) -> None:
    """Drop a queued device list once the sender has it."""
    await conn.execute("DELETE FROM accounts.device_list_join_outbox WHERE seq = $1", seq)


# ------------------------------------------------------------ remote device lists


async def remote_device_list(conn: asyncpg.Connection, user_id: str) -> asyncpg.Record | None:
    """The cached device list's header row (stream_id, stale, synced_ts, master_key_json,
    self_signing_key_json) of a remote user, if tracked."""
    return await conn.fetchrow(
        "SELECT stream_id, stale, synced_ts, master_key_json, self_signing_key_json"
        " FROM accounts.remote_device_lists WHERE user_id = $1",
        user_id,
    )


async def remote_devices(conn: asyncpg.Connection, user_id: str) -> list[asyncpg.Record]:
    """The cached devices (device_id, display_name, keys_json) of a remote user."""
    return await conn.fetch(
        "SELECT device_id, display_name, keys_json FROM accounts.remote_devices"
        " WHERE user_id = $1 ORDER BY device_id",
        user_id,
    )


async def latest_applied_remote_stream_id(conn: asyncpg.Connection, user_id: str) -> int | None:
    """The highest stream_id of the user's device-list EDUs applied since the last resync."""
    latest: int | None = await conn.fetchval(
        "SELECT max(stream_id) FROM accounts.remote_device_stream_ids WHERE user_id = $1",
        user_id,
    )
    return latest


async def delete_remote_devices(conn: asyncpg.Connection, user_id: str) -> None:
    """Drop every cached device of a remote user."""
    await conn.execute("DELETE FROM accounts.remote_devices WHERE user_id = $1", user_id)


async def delete_remote_stream_ids(conn: asyncpg.Connection, user_id: str, up_to: int) -> None:
    """Forget the user's applied EDU stream ids up to ``up_to`` (a resync covers them)."""
    await conn.execute(
        "DELETE FROM accounts.remote_device_stream_ids WHERE user_id = $1 AND stream_id <= $2",
        user_id,
        up_to,
    )


async def insert_remote_devices(
    conn: asyncpg.Connection, rows: Sequence[tuple[str, str, str | None, str | None]]
) -> None:
    """Cache (user_id, device_id, display_name, keys_json) rows."""
    await conn.executemany(
        "INSERT INTO accounts.remote_devices (user_id, device_id, display_name, keys_json)"
        " VALUES ($1, $2, $3, $4)",
        rows,
    )


async def upsert_remote_device_list(
    conn: asyncpg.Connection,
    user_id: str,
    stream_id: int,
    synced_ts: int,
    master_key_json: str | None,
    self_signing_key_json: str | None,
) -> None:
    """Record a remote user's list as freshly synced (not stale) at ``stream_id``."""
    await conn.execute(
        "INSERT INTO accounts.remote_device_lists (user_id, stream_id, stale, synced_ts,"
        " master_key_json, self_signing_key_json) VALUES ($1, $2, false, $3, $4, $5)"
        " ON CONFLICT (user_id) DO UPDATE SET stream_id = EXCLUDED.stream_id,"
        " stale = false, synced_ts = EXCLUDED.synced_ts,"
        " master_key_json = EXCLUDED.master_key_json,"
        " self_signing_key_json = EXCLUDED.self_signing_key_json",
        user_id,
        stream_id,
        synced_ts,
        master_key_json,
        self_signing_key_json,
    )


async def lock_remote_device_list(conn: asyncpg.Connection, user_id: str) -> int | None:
    """The stream_id of the user's last resync, its row locked FOR UPDATE (None: not
    tracked)."""
    row = await conn.fetchrow(
        "SELECT stream_id FROM accounts.remote_device_lists WHERE user_id = $1 FOR UPDATE",
        user_id,
    )
    return None if row is None else int(row["stream_id"])


async def applied_remote_stream_ids(conn: asyncpg.Connection, user_id: str) -> set[int]:
    """The stream ids of the user's device-list EDUs applied since the last resync."""
    return {
        r["stream_id"]
        for r in await conn.fetch(
            "SELECT stream_id FROM accounts.remote_device_stream_ids WHERE user_id = $1",
            user_id,
        )
    }


async def mark_remote_device_list_stale(conn: asyncpg.Connection, user_id: str) -> None:
    """Mark the user's cached list as needing a resync."""
    await conn.execute(
        "UPDATE accounts.remote_device_lists SET stale = true WHERE user_id = $1",
        user_id,
    )


async def delete_remote_device(conn: asyncpg.Connection, user_id: str, device_id: str) -> None:
    """Drop one cached device of a remote user."""
    await conn.execute(
        "DELETE FROM accounts.remote_devices WHERE user_id = $1 AND device_id = $2",
        user_id,
        device_id,
    )


async def upsert_remote_device(
    conn: asyncpg.Connection,
    user_id: str,
    device_id: str,
    display_name: str | None,
    keys_json: str | None,
) -> None:
    """Cache one device of a remote user, replacing what was cached for it."""
    await conn.execute(
        "INSERT INTO accounts.remote_devices"
        " (user_id, device_id, display_name, keys_json)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, device_id) DO UPDATE"
        " SET display_name = EXCLUDED.display_name, keys_json = EXCLUDED.keys_json",
        user_id,
        device_id,
        display_name,
        keys_json,
    )


async def insert_remote_stream_id(conn: asyncpg.Connection, user_id: str, stream_id: int) -> None:
    """Record that the user's device-list EDU ``stream_id`` was applied."""
    await conn.execute(
        "INSERT INTO accounts.remote_device_stream_ids (user_id, stream_id) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING",
        user_id,
        stream_id,
    )


async def update_remote_cross_signing_keys(
    conn: asyncpg.Connection, user_id: str, updates: dict[str, str]
) -> bool:
    """Set the given ``*_key_json`` columns of a tracked user's list; False when the user
    is not tracked. Column names come from the caller's fixed set, never from input."""
    columns = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(updates))
    result = await conn.execute(
        f"UPDATE accounts.remote_device_lists SET {columns} WHERE user_id = $1",
        user_id,
        *updates.values(),
    )
    return bool(result != "UPDATE 0")


# ------------------------------------------------------------ local profiles


async def lock_profile(conn: asyncpg.Connection, user_id: str) -> str | None:
    """The user's profile JSON, its row locked FOR UPDATE (None: no profile)."""
    text: str | None = await conn.fetchval(
        "SELECT fields_json FROM accounts.profiles WHERE user_id = $1 FOR UPDATE", user_id
    )
    return text


async def upsert_profile(
    conn: asyncpg.Connection, user_id: str, fields_json: str, updated_ts: int
) -> None:
    """Store the user's whole profile."""
    await conn.execute(
        "INSERT INTO accounts.profiles (user_id, fields_json, updated_ts)"
        " VALUES ($1, $2, $3)"
        " ON CONFLICT (user_id) DO UPDATE SET fields_json = EXCLUDED.fields_json,"
        " updated_ts = EXCLUDED.updated_ts",
        user_id,
        fields_json,
        updated_ts,
    )


async def profile(conn: asyncpg.Connection, user_id: str) -> str | None:
    """The user's profile JSON (None: no profile)."""
    text: str | None = await conn.fetchval(
        "SELECT fields_json FROM accounts.profiles WHERE user_id = $1", user_id
    )
    return text


# ------------------------------------------------------------ local device-list streams


async def bump_device_list_stream(conn: asyncpg.Connection, user_id: str) -> int:
    """Advance the user's device-list stream by one (its row locked to commit); the new
    stream_id."""
    stream_id: int = await conn.fetchval(
        "INSERT INTO accounts.device_list_streams (user_id, stream_id) VALUES ($1, 1)"
        " ON CONFLICT (user_id) DO UPDATE"
        " SET stream_id = accounts.device_list_streams.stream_id + 1"
        " RETURNING stream_id",
        user_id,
    )
    return stream_id


async def device_list_stream_id(conn: asyncpg.Connection, user_id: str) -> int | None:
    """The user's device-list stream_id (None: never changed)."""
    value: int | None = await conn.fetchval(
        "SELECT stream_id FROM accounts.device_list_streams WHERE user_id = $1", user_id
    )
    return value


# ------------------------------------------------------------ local devices and keys


async def lock_device(
    conn: asyncpg.Connection, user_id: str, device_id: str
) -> asyncpg.Record | None:
    """The device's (display_name, keys_json), its row locked FOR UPDATE (None: no such
    device)."""
    return await conn.fetchrow(
        "SELECT display_name, keys_json FROM accounts.devices"
        " WHERE user_id = $1 AND device_id = $2 FOR UPDATE",
        user_id,
        device_id,
    )


async def upsert_device(
    conn: asyncpg.Connection,
    user_id: str,
    device_id: str,
    display_name: str | None,
    keys_json: str | None,
    created_ts: int,
) -> None:
    """Store a device's display name and keys (``created_ts`` only for a new device)."""
    await conn.execute(
        "INSERT INTO accounts.devices"
        " (user_id, device_id, display_name, keys_json, created_ts)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, device_id) DO UPDATE"
        " SET display_name = EXCLUDED.display_name, keys_json = EXCLUDED.keys_json",
        user_id,
        device_id,
        display_name,
        keys_json,
        created_ts,
    )


async def one_time_key(
    conn: asyncpg.Connection, user_id: str, device_id: str, algorithm: str, key_id: str
) -> str | None:
    """The JSON of the device's one-time key ``algorithm:key_id`` (None: not uploaded)."""
    key_json: str | None = await conn.fetchval(
        "SELECT key_json FROM accounts.one_time_keys WHERE user_id = $1"
        " AND device_id = $2 AND algorithm = $3 AND key_id = $4",
        user_id,
        device_id,
        algorithm,
        key_id,
    )
    return key_json


async def insert_one_time_key(
    conn: asyncpg.Connection,
    user_id: str,
    device_id: str,
    algorithm: str,
    key_id: str,
    key_json: str,
) -> None:
    """Store a new one-time key of the device."""
    await conn.execute(
        "INSERT INTO accounts.one_time_keys"
        " (user_id, device_id, algorithm, key_id, key_json)"
        " VALUES ($1, $2, $3, $4, $5)",
        user_id,
        device_id,
        algorithm,
        key_id,
        key_json,
    )


async def upsert_fallback_key(
    conn: asyncpg.Connection,
    user_id: str,
    device_id: str,
    algorithm: str,
    key_id: str,
    key_json: str,
) -> None:
    """Store the device's fallback key for ``algorithm``; a different key is unused again."""
    await conn.execute(
        "INSERT INTO accounts.fallback_keys"
        " (user_id, device_id, algorithm, key_id, key_json, used)"
        " VALUES ($1, $2, $3, $4, $5, false)"
        " ON CONFLICT (user_id, device_id, algorithm) DO UPDATE"
        " SET key_id = EXCLUDED.key_id, key_json = EXCLUDED.key_json, used = false"
        " WHERE accounts.fallback_keys.key_json <> EXCLUDED.key_json"
        " OR accounts.fallback_keys.key_id <> EXCLUDED.key_id",
        user_id,
        device_id,
        algorithm,
        key_id,
        key_json,
    )


async def unclaimed_one_time_key_counts(
    conn: asyncpg.Connection, user_id: str, device_id: str
) -> dict[str, int]:
    """How many unclaimed one-time keys the device has, per algorithm."""
    rows = await conn.fetch(
        "SELECT algorithm, count(*) AS n FROM accounts.one_time_keys"
        " WHERE user_id = $1 AND device_id = $2 AND claimed_ts IS NULL GROUP BY algorithm",
        user_id,
        device_id,
    )
    return {row["algorithm"]: row["n"] for row in rows}


async def delete_device(conn: asyncpg.Connection, user_id: str, device_id: str) -> bool:
    """Delete the device's row; False when there was none."""
    deleted = await conn.fetchval(
        "DELETE FROM accounts.devices WHERE user_id = $1 AND device_id = $2 RETURNING device_id",
        user_id,
        device_id,
    )
    return deleted is not None


async def delete_device_rows(conn: asyncpg.Connection, user_id: str, device_id: str) -> None:
    """Delete what a deleted device leaves: its one-time and fallback keys, its inbox."""
    for table in ("one_time_keys", "fallback_keys", "to_device_inbox"):
        await conn.execute(
            f"DELETE FROM accounts.{table} WHERE user_id = $1 AND device_id = $2",
            user_id,
            device_id,
        )


async def lock_cross_signing_key(conn: asyncpg.Connection, user_id: str, usage: str) -> str | None:
    """The JSON of the user's ``usage`` cross-signing key, its row locked FOR UPDATE."""
    key_json: str | None = await conn.fetchval(
        "SELECT key_json FROM accounts.cross_signing_keys"
        " WHERE user_id = $1 AND usage = $2 FOR UPDATE",
        user_id,
        usage,
    )
    return key_json


async def upsert_cross_signing_key(
    conn: asyncpg.Connection, user_id: str, usage: str, key_json: str, updated_ts: int
) -> None:
    """Store the user's ``usage`` cross-signing key."""
    await conn.execute(
        "INSERT INTO accounts.cross_signing_keys (user_id, usage, key_json, updated_ts)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, usage) DO UPDATE"
        " SET key_json = EXCLUDED.key_json, updated_ts = EXCLUDED.updated_ts",
        user_id,
        usage,
        key_json,
        updated_ts,
    )


async def devices(conn: asyncpg.Connection, user_id: str) -> list[asyncpg.Record]:
    """The user's devices (device_id, display_name, keys_json) by device id."""
    return await conn.fetch(
        "SELECT device_id, display_name, keys_json FROM accounts.devices"
        " WHERE user_id = $1 ORDER BY device_id",
        user_id,
    )


async def cross_signing_keys(
    conn: asyncpg.Connection, user_ids: Sequence[str], usages: Sequence[str]
) -> list[asyncpg.Record]:
    """The (user_id, usage, key_json) rows of these users' keys of these usages."""
    return await conn.fetch(
        "SELECT user_id, usage, key_json FROM accounts.cross_signing_keys"
        " WHERE user_id = ANY($1::text[]) AND usage = ANY($2::text[])",
        list(user_ids),
        list(usages),
    )


async def devices_with_keys(
    conn: asyncpg.Connection, user_id: str, device_ids: Sequence[str]
) -> list[asyncpg.Record]:
    """The user's devices that have keys (device_id, display_name, keys_json), only
    ``device_ids`` unless it is empty."""
    return await conn.fetch(
        "SELECT device_id, display_name, keys_json FROM accounts.devices"
        " WHERE user_id = $1 AND keys_json IS NOT NULL"
        " AND (cardinality($2::text[]) = 0 OR device_id = ANY($2::text[]))"
        " ORDER BY device_id",
        user_id,
        device_ids,
    )


async def claim_one_time_key(
    conn: asyncpg.Connection, user_id: str, device_id: str, algorithm: str, claimed_ts: int
) -> asyncpg.Record | None:
    """Claim the device's oldest unclaimed ``algorithm`` one-time key (key_id, key_json);
    concurrent claims skip each other's."""
    return await conn.fetchrow(
        "UPDATE accounts.one_time_keys SET claimed_ts = $4 WHERE seq = ("
        " SELECT seq FROM accounts.one_time_keys WHERE user_id = $1 AND device_id = $2"
        " AND algorithm = $3 AND claimed_ts IS NULL ORDER BY seq LIMIT 1"
        " FOR UPDATE SKIP LOCKED) AND claimed_ts IS NULL RETURNING key_id, key_json",
        user_id,
        device_id,
        algorithm,
        claimed_ts,
    )


async def use_fallback_key(
    conn: asyncpg.Connection, user_id: str, device_id: str, algorithm: str
) -> asyncpg.Record | None:
    """Mark the device's ``algorithm`` fallback key used; its (key_id, key_json)."""
    return await conn.fetchrow(
        "UPDATE accounts.fallback_keys SET used = true WHERE user_id = $1"
        " AND device_id = $2 AND algorithm = $3 RETURNING key_id, key_json",
        user_id,
        device_id,
        algorithm,
    )


async def device_exists(conn: asyncpg.Connection, user_id: str, device_id: str) -> bool:
    """Does the user have this device?"""
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM accounts.devices WHERE user_id = $1 AND device_id = $2",
            user_id,
            device_id,
        )
    )


# ------------------------------------------------------------ OpenID tokens


async def delete_expired_openid_tokens(conn: asyncpg.Connection, now: int) -> None:
    """Drop the OpenID tokens expired before ``now``."""
    await conn.execute("DELETE FROM accounts.openid_tokens WHERE expires_ts < $1", now)


async def insert_openid_token(
    conn: asyncpg.Connection, token_hash: str, user_id: str, expires_ts: int
) -> None:
    """Store a minted OpenID token (its hash)."""
    await conn.execute(
        "INSERT INTO accounts.openid_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)",
        token_hash,
        user_id,
        expires_ts,
    )


async def openid_token_user(conn: asyncpg.Connection, token_hash: str, now: int) -> str | None:
    """The user of an OpenID token not expired at ``now`` (None: unknown or expired)."""
    user_id: str | None = await conn.fetchval(
        "SELECT user_id FROM accounts.openid_tokens WHERE token_hash = $1 AND expires_ts > $2",
        token_hash,
        now,
    )
    return user_id
