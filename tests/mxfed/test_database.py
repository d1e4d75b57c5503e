import asyncio
from pathlib import Path

import asyncpg

from mxfed.database import (
    apply_migrations,
    create_pool,
    keep_session_state,
    resolve_database_url,
)


def _write_migrations(directory: Path) -> None:
    directory.mkdir()
    (directory / "001_initial.sql").write_text(
        "CREATE TABLE widgets (id bigint PRIMARY KEY, name text NOT NULL);"
    )
    (directory / "002_more.sql").write_text(
        "ALTER TABLE widgets ADD COLUMN colour text; CREATE INDEX widgets_name ON widgets (name);"
    )


async def test_concurrent_migrations_apply_each_once(database_url: str, tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    _write_migrations(migrations)
    pools = [await create_pool(database_url, max_size=2) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(apply_migrations(pool, "racetest", migrations) for pool in pools)
        )
        assert sorted(results, key=len)[-1] == [1, 2]
        assert sum(len(r) for r in results) == 2  # each migration applied exactly once
        again = await apply_migrations(pools[0], "racetest", migrations)
        assert again == []
        async with pools[0].acquire() as connection:
            tables = await connection.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'racetest'"
            )
            assert sorted(r["table_name"] for r in tables) == ["schema_migrations", "widgets"]
            columns = await connection.fetch(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'racetest' AND table_name = 'widgets'"
            )
            assert sorted(r["column_name"] for r in columns) == ["colour", "id", "name"]
    finally:
        for pool in pools:
            await pool.close()


async def test_configured_url_is_used_as_is(tmp_path: Path) -> None:
    url, embedded = await resolve_database_url("postgresql://somewhere/db", tmp_path)
    assert (url, embedded) == ("postgresql://somewhere/db", None)


async def test_local_server_gets_the_mxfed_database(tmp_path: Path) -> None:
    url, embedded = await resolve_database_url(None, tmp_path)
    assert embedded is None
    assert url.endswith("/mxfed")
    connection = await asyncpg.connect(url)
    assert await connection.fetchval("SELECT current_database()") == "mxfed"
    await connection.close()


async def test_embedded_database_when_nothing_answers(tmp_path: Path, monkeypatch) -> None:
    import mxfed.database

    monkeypatch.setattr(mxfed.database, "LOCAL_SERVER_URL", "postgresql://postgres@127.0.0.1:1/x")
    url, embedded = await resolve_database_url(None, tmp_path)
    try:
        assert embedded is not None
        assert (tmp_path / "postgres").is_dir()
        connection = await asyncpg.connect(url)
        assert await connection.fetchval("SELECT current_database()") == "mxfed"
        await connection.close()
    finally:
        if embedded:
            embedded.stop()


async def test_a_released_connection_is_not_reset_unless_it_kept_session_state(
    database_url: str,
) -> None:
    # One connection, so every acquire gets the same one back.
    pool = await create_pool(database_url, max_size=1)
    try:
        async with pool.acquire() as connection:
            backend = await connection.fetchval("SELECT pg_backend_pid()")
            await connection.execute("SET application_name = 'kept'")
        async with pool.acquire() as connection:
            assert await connection.fetchval("SELECT pg_backend_pid()") == backend
            # No reset query ran at release (it would have said RESET ALL).
            assert await connection.fetchval("SHOW application_name") == "kept"
            tx = connection.transaction()
            await tx.start()
            await connection.execute("CREATE TEMP TABLE t (x int)")
        async with pool.acquire() as connection:
            # An open transaction is still rolled back.
            assert await connection.fetchval("SELECT to_regclass('pg_temp.t')") is None
            keep_session_state(connection)
            assert await connection.fetchval("SELECT pg_try_advisory_lock(4242)")
        async with pool.acquire() as connection:
            assert await connection.fetchval("SELECT pg_backend_pid()") == backend
            # Kept session state is reset: the lock (never unlocked) and the settings.
            held = await connection.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1",
                backend,
            )
            assert held == 0
            assert await connection.fetchval("SHOW application_name") == ""
            await connection.execute("SET application_name = 'again'")
        async with pool.acquire() as connection:
            # The mark lasted one release.
            assert await connection.fetchval("SHOW application_name") == "again"
    finally:
        await pool.close()
