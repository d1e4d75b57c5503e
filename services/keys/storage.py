"""The keys service's tables (schema ``keys``, see ``migrations/``).

* ``server_key_responses``: the newest key response of each remote server as
  it published it, for serving as a notary;
* ``server_verify_keys``: every remote verify key seen, with its validity;
* ``own_old_keys``: our rotated-out keys, published in ``old_verify_keys``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import asyncpg
import nacl.signing

from matrix_protocol.signing import decode_verify_key

# Room v5+ (https://spec.matrix.org/v1.19/rooms/v5/#signing-key-validity-period):
# a key counts as valid for at most 7 days after we
# learnt of it, whatever valid_until_ts it was published with.
MAX_KEY_VALIDITY_MS = 7 * 24 * 3600 * 1000


@dataclass
class RemoteKey:
    server_name: str
    key_id: str
    verify_key: str  # unpadded base64
    valid_until_ts: int
    expired_ts: int | None  # set for old_verify_keys
    fetched_at: int
    source: str

    @cached_property
    def nacl_key(self) -> nacl.signing.VerifyKey:
        return decode_verify_key(self.verify_key)

    @property
    def usable_until_ts(self) -> int:
        """Until when the key verifies under the room v5+ rules."""
        if self.expired_ts is not None:
            return self.expired_ts
        return min(self.valid_until_ts, self.fetched_at + MAX_KEY_VALIDITY_MS)


@dataclass(frozen=True)
class StoredResponse:
    server_name: str
    key_json: bytes
    valid_until_ts: int
    fetched_at: int
    source: str


@dataclass(frozen=True)
class OwnOldKey:
    key_id: str
    verify_key: str
    expired_ts: int


class KeysStorage:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def load_remote_keys(self, server_names: Iterable[str]) -> dict[str, list[RemoteKey]]:
        rows = await self.pool.fetch(
            "SELECT server_name, key_id, verify_key, valid_until_ts, expired_ts, fetched_at,"
            " source FROM keys.server_verify_keys WHERE server_name = ANY($1::text[])",
            list(server_names),
        )
        found: dict[str, list[RemoteKey]] = {}
        for row in rows:
            found.setdefault(row["server_name"], []).append(RemoteKey(**dict(row)))
        return found

    async def load_responses(self, server_names: Iterable[str]) -> dict[str, StoredResponse]:
        rows = await self.pool.fetch(
            "SELECT server_name, key_json, valid_until_ts, fetched_at, source"
            " FROM keys.server_key_responses WHERE server_name = ANY($1::text[])",
            list(server_names),
        )
        return {row["server_name"]: StoredResponse(**dict(row)) for row in rows}

    async def store_response(self, response: StoredResponse, keys: list[RemoteKey]) -> bool:
        """Keep ``response`` and its keys unless we hold a newer response; True if kept.

        A response older than the stored one (a notary with a stale cache)
        still contributes keys we have never seen.
        """
        async with self.pool.acquire() as connection, connection.transaction():
            kept = await connection.fetchval(
                "INSERT INTO keys.server_key_responses AS stored"
                " (server_name, key_json, valid_until_ts, fetched_at, source)"
                " VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (server_name) DO UPDATE SET key_json = excluded.key_json,"
                " valid_until_ts = excluded.valid_until_ts, fetched_at = excluded.fetched_at,"
                " source = excluded.source"
                " WHERE excluded.valid_until_ts >= stored.valid_until_ts"
                " RETURNING true",
                response.server_name,
                response.key_json,
                response.valid_until_ts,
                response.fetched_at,
                response.source,
            )
            conflict = (
                " ON CONFLICT (server_name, key_id) DO UPDATE SET"
                " verify_key = excluded.verify_key, valid_until_ts = excluded.valid_until_ts,"
                " expired_ts = excluded.expired_ts, fetched_at = excluded.fetched_at,"
                " source = excluded.source"
                if kept
                else " ON CONFLICT (server_name, key_id) DO NOTHING"
            )
            await connection.executemany(
                "INSERT INTO keys.server_verify_keys (server_name, key_id, verify_key,"
                " valid_until_ts, expired_ts, fetched_at, source)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)" + conflict,
                [
                    (
                        key.server_name,
                        key.key_id,
                        key.verify_key,
                        key.valid_until_ts,
                        key.expired_ts,
                        key.fetched_at,
                        key.source,
                    )
                    for key in keys
                ],
            )
        return bool(kept)

    async def own_old_keys(self) -> list[OwnOldKey]:
        rows = await self.pool.fetch(
            "SELECT key_id, verify_key, expired_ts FROM keys.own_old_keys ORDER BY key_id"
        )
        return [OwnOldKey(**dict(row)) for row in rows]

    async def add_own_old_key(self, key: OwnOldKey) -> None:
        await self.pool.execute(
            "INSERT INTO keys.own_old_keys (key_id, verify_key, expired_ts) VALUES ($1, $2, $3)"
            " ON CONFLICT (key_id) DO NOTHING",
            key.key_id,
            key.verify_key,
            key.expired_ts,
        )
