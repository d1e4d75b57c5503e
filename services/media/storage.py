"""The media service's tables (schema ``media``), always named with the schema.

``local_media`` (our uploads and reservations), ``remote_media`` and
``remote_thumbnails`` (the bounded cache of other servers' media) and
``thumbnails`` (made by us, keyed by the source content's digest).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from mxfed.clock import now_ms
from mxfed.database import keep_session_state
from mxfed.held_connection import CONNECTION_ERRORS


@dataclass(frozen=True)
class LocalMediaRow:
    media_id: str
    uploader: str
    created_ts: int
    unused_expires_ts: int | None
    content_type: str | None
    upload_name: str | None
    size: int | None
    content_sha256: str | None
    head: bytes

    @property
    def uploaded(self) -> bool:
        return self.content_sha256 is not None


@dataclass(frozen=True)
class RemoteMediaRow:
    server_name: str
    media_id: str
    content_type: str | None
    upload_name: str | None
    size: int
    content_sha256: str
    head: bytes
    fetched_ts: int


@dataclass(frozen=True)
class ThumbnailKey:
    width: int
    height: int
    method: str
    animated: bool


@dataclass(frozen=True)
class ThumbnailRow:
    key: ThumbnailKey
    content_type: str
    size: int
    content_sha256: str


def _local(row: asyncpg.Record) -> LocalMediaRow:
    return LocalMediaRow(
        row["media_id"],
        row["uploader"],
        row["created_ts"],
        row["unused_expires_ts"],
        row["content_type"],
        row["upload_name"],
        row["size"],
        row["content_sha256"],
        bytes(row["head"] or b""),
    )


def _thumbnail(row: asyncpg.Record) -> ThumbnailRow:
    return ThumbnailRow(
        ThumbnailKey(row["width"], row["height"], row["method"], row["animated"]),
        row["content_type"],
        row["size"],
        row["content_sha256"],
    )


class MediaStorage:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # Local media ---------------------------------------------------------------------

    async def reserve(self, media_id: str, uploader: str, expires_ts: int) -> None:
        await self.pool.execute(
            "INSERT INTO media.local_media (media_id, uploader, created_ts, unused_expires_ts)"
            " VALUES ($1, $2, $3, $4)",
            media_id,
            uploader,
            now_ms(),
            expires_ts,
        )

    async def pending_reservations(self, uploader: str) -> int:
        return int(
            await self.pool.fetchval(
                "SELECT count(*) FROM media.local_media WHERE uploader = $1"
                " AND content_sha256 IS NULL AND unused_expires_ts > $2",
                uploader,
                now_ms(),
            )
        )

    async def local_media(self, media_id: str) -> LocalMediaRow | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM media.local_media WHERE media_id = $1", media_id
        )
        return _local(row) if row else None

    async def insert_uploaded(
        self,
        media_id: str,
        uploader: str,
        content_type: str | None,
        upload_name: str | None,
        size: int,
        sha256: str,
        head: bytes,
    ) -> None:
        now = now_ms()
        await self.pool.execute(
            "INSERT INTO media.local_media (media_id, uploader, created_ts, uploaded_ts,"
            " content_type, upload_name, size, content_sha256, head)"
            " VALUES ($1, $2, $3, $3, $4, $5, $6, $7, $8)",
            media_id,
            uploader,
            now,
            content_type,
            upload_name,
            size,
            sha256,
            head,
        )

    async def fill_reservation(
        self,
        media_id: str,
        content_type: str | None,
        upload_name: str | None,
        size: int,
        sha256: str,
        head: bytes,
    ) -> bool:
        """Give a reserved, unexpired media id its content; ``False`` if it has content already
        or lapsed (only one upload ever wins)."""
        status = await self.pool.execute(
            "UPDATE media.local_media SET uploaded_ts = $2, content_type = $3,"
            " upload_name = $4, size = $5, content_sha256 = $6, head = $7,"
            " unused_expires_ts = NULL"
            " WHERE media_id = $1 AND content_sha256 IS NULL AND unused_expires_ts > $2",
            media_id,
            now_ms(),
            content_type,
            upload_name,
            size,
            sha256,
            head,
        )
        return bool(status == "UPDATE 1")

    async def drop_lapsed_reservations(self) -> int:
        status = await self.pool.execute(
            "DELETE FROM media.local_media WHERE content_sha256 IS NULL"
            " AND unused_expires_ts <= $1",
            now_ms(),
        )
        return int(status.split()[-1])

    # Remote media --------------------------------------------------------------------

    async def remote_media(self, server_name: str, media_id: str) -> RemoteMediaRow | None:
        row = await self.pool.fetchrow(
            "UPDATE media.remote_media SET last_access_ts = $3"
            " WHERE server_name = $1 AND media_id = $2 RETURNING *",
            server_name,
            media_id,
            now_ms(),
        )
        if row is None:
            return None
        return RemoteMediaRow(
            row["server_name"],
            row["media_id"],
            row["content_type"],
            row["upload_name"],
            row["size"],
            row["content_sha256"],
            bytes(row["head"]),
            row["fetched_ts"],
        )

    async def store_remote_media(self, row: RemoteMediaRow) -> None:
        await self.pool.execute(
            "INSERT INTO media.remote_media (server_name, media_id, content_type, upload_name,"
            " size, content_sha256, head, fetched_ts, last_access_ts)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"
            " ON CONFLICT (server_name, media_id) DO UPDATE SET"
            " content_type = EXCLUDED.content_type, upload_name = EXCLUDED.upload_name,"
            " size = EXCLUDED.size, content_sha256 = EXCLUDED.content_sha256,"
            " head = EXCLUDED.head, fetched_ts = EXCLUDED.fetched_ts,"
            " last_access_ts = EXCLUDED.last_access_ts",
            row.server_name,
            row.media_id,
            row.content_type,
            row.upload_name,
            row.size,
            row.content_sha256,
            row.head,
            row.fetched_ts,
        )

    async def forget_remote_media(self, server_name: str, media_id: str) -> None:
        await self.pool.execute(
            "DELETE FROM media.remote_media WHERE server_name = $1 AND media_id = $2",
            server_name,
            media_id,
        )

    async def remote_thumbnail(
        self, server_name: str, media_id: str, key: ThumbnailKey
    ) -> ThumbnailRow | None:
        row = await self.pool.fetchrow(
            "UPDATE media.remote_thumbnails SET last_access_ts = $7"
            " WHERE server_name = $1 AND media_id = $2 AND width = $3 AND height = $4"
            " AND method = $5 AND animated = $6 RETURNING *",
            server_name,
            media_id,
            key.width,
            key.height,
            key.method,
            key.animated,
            now_ms(),
        )
        return _thumbnail(row) if row else None

    async def store_remote_thumbnail(
        self, server_name: str, media_id: str, row: ThumbnailRow
    ) -> None:
        now = now_ms()
        await self.pool.execute(
            "INSERT INTO media.remote_thumbnails (server_name, media_id, width, height, method,"
            " animated, content_type, size, content_sha256, fetched_ts, last_access_ts)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)"
            " ON CONFLICT (server_name, media_id, width, height, method, animated) DO UPDATE SET"
            " content_type = EXCLUDED.content_type, size = EXCLUDED.size,"
            " content_sha256 = EXCLUDED.content_sha256, fetched_ts = EXCLUDED.fetched_ts,"
            " last_access_ts = EXCLUDED.last_access_ts",
            server_name,
            media_id,
            row.key.width,
            row.key.height,
            row.key.method,
            row.key.animated,
            row.content_type,
            row.size,
            row.content_sha256,
            now,
        )

    async def remote_cache_bytes(self) -> int:
        return int(
            await self.pool.fetchval(
                "SELECT (SELECT coalesce(sum(size), 0) FROM media.remote_media)"
                " + (SELECT coalesce(sum(size), 0) FROM media.remote_thumbnails)"
            )
        )

    async def evict_remote(self, bytes_to_free: int) -> list[str]:
        """Forget the least recently used remote media and thumbnails until at least
        ``bytes_to_free`` bytes are released; the digests whose files nothing names now."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "WITH cached AS ("
                " SELECT 'media' AS kind, server_name, media_id, 0 AS width, 0 AS height,"
                " '' AS method, false AS animated, size, content_sha256, last_access_ts"
                " FROM media.remote_media"
                " UNION ALL SELECT 'thumbnail', server_name, media_id, width, height, method,"
                " animated, size, content_sha256, last_access_ts FROM media.remote_thumbnails),"
                " ordered AS (SELECT *, sum(size) OVER (ORDER BY last_access_ts, server_name,"
                " media_id, width, height, method, animated) - size AS freed_before"
                " FROM cached)"
                " SELECT * FROM ordered WHERE freed_before < $1",
                bytes_to_free,
            )
            media = [(r["server_name"], r["media_id"]) for r in rows if r["kind"] == "media"]
            thumbnails = [
                (r["server_name"], r["media_id"], r["width"], r["height"], r["method"],
                 r["animated"])
                for r in rows
                if r["kind"] == "thumbnail"
            ]  # fmt: skip
            if media:
                await conn.executemany(
                    "DELETE FROM media.remote_media WHERE server_name = $1 AND media_id = $2",
                    media,
                )
            if thumbnails:
                await conn.executemany(
                    "DELETE FROM media.remote_thumbnails WHERE server_name = $1"
                    " AND media_id = $2 AND width = $3 AND height = $4 AND method = $5"
                    " AND animated = $6",
                    thumbnails,
                )
            return await self._unreferenced(conn, {r["content_sha256"] for r in rows})

    async def _unreferenced(self, conn: asyncpg.Connection, digests: set[str]) -> list[str]:
        if not digests:
            return []
        used = await conn.fetch(
            "SELECT content_sha256 FROM media.local_media WHERE content_sha256 = ANY($1::text[])"
            " UNION SELECT content_sha256 FROM media.remote_media"
            " WHERE content_sha256 = ANY($1::text[])"
            " UNION SELECT content_sha256 FROM media.remote_thumbnails"
            " WHERE content_sha256 = ANY($1::text[])"
            " UNION SELECT content_sha256 FROM media.thumbnails"
            " WHERE content_sha256 = ANY($1::text[])",
            list(digests),
        )
        return sorted(digests - {row["content_sha256"] for row in used})

    # Thumbnails we make ----------------------------------------------------------------

    async def thumbnails(self, source_sha256: str) -> list[ThumbnailRow]:
        rows = await self.pool.fetch(
            "SELECT * FROM media.thumbnails WHERE source_sha256 = $1", source_sha256
        )
        return [_thumbnail(row) for row in rows]

    async def store_thumbnail(self, source_sha256: str, row: ThumbnailRow) -> None:
        await self.pool.execute(
            "INSERT INTO media.thumbnails (source_sha256, width, height, method, animated,"
            " content_type, size, content_sha256, created_ts)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
            source_sha256,
            row.key.width,
            row.key.height,
            row.key.method,
            row.key.animated,
            row.content_type,
            row.size,
            row.content_sha256,
            now_ms(),
        )

    # Coordination between replicas ----------------------------------------------------------

    @asynccontextmanager
    async def fetch_lock(self, key: Sequence[str]) -> AsyncIterator[bool]:
        """A session advisory lock on ``key`` (one remote fetch of a media at a time over
        every replica); yields whether it was taken. A lost connection releases it (the
        fetch under it goes on; there is nothing left to unlock)."""
        async with self.pool.acquire() as conn:
            lock = await conn.fetchval("SELECT hashtextextended($1, 0)", "\x1f".join(key))
            keep_session_state(conn)
            taken = await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock)
            try:
                yield bool(taken)
            finally:
                if taken:
                    with contextlib.suppress(*CONNECTION_ERRORS):
                        await conn.execute("SELECT pg_advisory_unlock($1)", lock)
