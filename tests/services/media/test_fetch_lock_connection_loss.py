"""The remote-fetch lock (a session advisory lock) when PostgreSQL ends its connection
mid-fetch: the fetch under it goes on, and another replica can take the lock."""

from __future__ import annotations

import asyncio

import asyncpg

from mxfed.database import apply_migrations, create_pool
from mxfed.service_runtime import migrations_directory
from services.media.storage import MediaStorage
from tests.support.databases import terminate_backends


async def test_fetch_lock_survives_the_loss_of_its_connection(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=2)
    other = await asyncpg.connect(database_url)
    try:
        await apply_migrations(pool, "media", migrations_directory("media"))
        storage = MediaStorage(pool)
        key = ["remote.example", "media-id"]
        lock = await other.fetchval("SELECT hashtextextended($1, 0)", "\x1f".join(key))
        async with storage.fetch_lock(key) as taken:
            assert taken
            assert not await other.fetchval("SELECT pg_try_advisory_lock($1)", lock)
            holders = await other.fetch(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND pid <> pg_backend_pid()"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            assert holders
            await terminate_backends(database_url, [row["pid"] for row in holders])
        # Leaving did not fail; the lock went with the session (once the ended backend has
        # exited): another replica can take it now.
        deadline = asyncio.get_running_loop().time() + 30
        while not await other.fetchval("SELECT pg_try_advisory_lock($1)", lock):
            assert asyncio.get_running_loop().time() < deadline, "the lock was never freed"
            await asyncio.sleep(0.05)
        async with storage.fetch_lock(key) as taken_again:
            assert not taken_again
    finally:
        await other.close()
        await pool.close()
