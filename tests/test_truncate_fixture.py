"""The test fixtures' clean start (``tests.support.databases.truncate``): a lock left
held on a table by another session fails the fixture at once, naming that session."""

from __future__ import annotations

import asyncpg
import pytest

from mxfed.database import create_pool
from tests.support.databases import truncate


async def test_a_held_lock_fails_the_truncate_naming_its_holder(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=2)
    holder = await asyncpg.connect(database_url, server_settings={"application_name": "leftover"})
    try:
        await pool.execute("CREATE TABLE IF NOT EXISTS public.truncated (n int)")
        await pool.execute("INSERT INTO public.truncated VALUES (1)")
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT count(*) FROM public.truncated")  # idle in transaction
        with pytest.raises(
            AssertionError, match=r"public\.truncated.*'leftover'|'leftover'.*truncated"
        ):
            await truncate(pool, "public.truncated", lock_timeout="200ms")
        await transaction.rollback()
        await truncate(pool, "public.truncated", lock_timeout="200ms")
        assert await pool.fetchval("SELECT count(*) FROM public.truncated") == 0
    finally:
        await holder.close()
        await pool.execute("DROP TABLE IF EXISTS public.truncated")
        await pool.close()
