"""The backfill service's tables: failed pulls per (room, event) and failing servers.

Backoff doubles per failure: events from ``event_base_ms`` up to
``event_cap_ms``, servers from ``server_base_ms`` up to ``server_cap_ms``.
Tables are in schema ``backfill`` and always named with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from mxfed.clock import now_ms


@dataclass
class Backoff:
    event_base_ms: int = 60_000
    event_cap_ms: int = 24 * 3600_000
    server_base_ms: int = 30_000
    server_cap_ms: int = 3600_000

    def event_delay(self, failures: int) -> int:
        return min(self.event_base_ms * 2 ** max(failures - 1, 0), self.event_cap_ms)

    def server_delay(self, failures: int) -> int:
        return min(self.server_base_ms * 2 ** max(failures - 1, 0), self.server_cap_ms)


class BackfillStore:
    def __init__(self, pool: asyncpg.Pool, backoff: Backoff | None = None) -> None:
        self.pool = pool
        self.backoff = backoff or Backoff()

    async def events_backing_off(self, room_id: str, event_ids: Sequence[str]) -> set[str]:
        rows = await self.pool.fetch(
            "SELECT event_id FROM backfill.failed_pulls"
            " WHERE room_id = $1 AND event_id = ANY($2::text[]) AND next_attempt_ts > $3",
            room_id,
            list(event_ids),
            now_ms(),
        )
        return {row["event_id"] for row in rows}

    async def record_pull_failures(
        self, room_id: str, event_ids: Sequence[str], error: str
    ) -> None:
        if not event_ids:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT event_id, failures FROM backfill.failed_pulls"
                " WHERE room_id = $1 AND event_id = ANY($2::text[]) FOR UPDATE",
                room_id,
                list(event_ids),
            )
            failures = {row["event_id"]: row["failures"] for row in rows}
            now = now_ms()
            records = []
            for event_id in dict.fromkeys(event_ids):
                count = failures.get(event_id, 0) + 1
                records.append(
                    (room_id, event_id, count, now, now + self.backoff.event_delay(count), error)
                )
            await conn.executemany(
                "INSERT INTO backfill.failed_pulls (room_id, event_id, failures,"
                " last_attempt_ts, next_attempt_ts, last_error) VALUES ($1, $2, $3, $4, $5, $6)"
                " ON CONFLICT (room_id, event_id) DO UPDATE SET failures = EXCLUDED.failures,"
                " last_attempt_ts = EXCLUDED.last_attempt_ts,"
                " next_attempt_ts = EXCLUDED.next_attempt_ts, last_error = EXCLUDED.last_error",
                records,
            )

    async def clear_pull_failures(self, room_id: str, event_ids: Sequence[str]) -> None:
        await self.pool.execute(
            "DELETE FROM backfill.failed_pulls WHERE room_id = $1 AND event_id = ANY($2::text[])",
            room_id,
            list(event_ids),
        )

    async def pull_failures(self, room_id: str) -> dict[str, int]:
        rows = await self.pool.fetch(
            "SELECT event_id, failures FROM backfill.failed_pulls WHERE room_id = $1", room_id
        )
        return {row["event_id"]: row["failures"] for row in rows}

    async def servers_backing_off(self, servers: Sequence[str]) -> set[str]:
        rows = await self.pool.fetch(
            "SELECT server_name FROM backfill.failed_servers"
            " WHERE server_name = ANY($1::text[]) AND next_attempt_ts > $2",
            list(servers),
            now_ms(),
        )
        return {row["server_name"] for row in rows}

    async def record_server_failure(self, server: str, error: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            failures = await conn.fetchval(
                "SELECT failures FROM backfill.failed_servers WHERE server_name = $1 FOR UPDATE",
                server,
            )
            count = (failures or 0) + 1
            await conn.execute(
                "INSERT INTO backfill.failed_servers (server_name, failures, next_attempt_ts,"
                " last_error) VALUES ($1, $2, $3, $4) ON CONFLICT (server_name) DO UPDATE SET"
                " failures = EXCLUDED.failures, next_attempt_ts = EXCLUDED.next_attempt_ts,"
                " last_error = EXCLUDED.last_error",
                server,
                count,
                now_ms() + self.backoff.server_delay(count),
                error[:500],
            )

    async def clear_server_failures(self, server: str) -> None:
        await self.pool.execute(
            "DELETE FROM backfill.failed_servers WHERE server_name = $1", server
        )
