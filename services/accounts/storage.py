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
