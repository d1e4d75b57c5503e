"""One database, one server: claims, refusals, key rotation, newer tables, waiting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from mxfed.database import (
    apply_migrations,
    create_pool,
    describe,
    wait_for_database,
    with_database_name,
    with_password,
)
from mxfed.database_claim import claim_database, record_signing_key
from mxfed.identity_files import new_signing_key
from mxfed.startup import StartupError


@pytest.fixture
async def pool(own_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(own_database_url, max_size=4)
    yield pool
    await pool.close()


async def test_the_first_server_claims_and_keeps_the_database(
    pool: asyncpg.Pool, own_database_url: str
) -> None:
    key = new_signing_key()
    await claim_database(pool, own_database_url, "one.example", key)
    await claim_database(pool, own_database_url, "one.example", key)  # again: fine
    await claim_database(pool, own_database_url, "one.example", None)  # no key here: fine

    with pytest.raises(StartupError) as other_name:
        await claim_database(pool, own_database_url, "two.example", key)
    assert "belongs to the server 'one.example', not 'two.example'" in other_name.value.cause
    assert describe(own_database_url) in other_name.value.cause
    assert "server_name: one.example" in other_name.value.fix

    with pytest.raises(StartupError) as other_key:
        await claim_database(pool, own_database_url, "one.example", new_signing_key())
    assert key.key_id in other_key.value.cause


async def test_a_rotated_key_is_accepted_and_the_old_one_still(
    pool: asyncpg.Pool, own_database_url: str
) -> None:
    old = new_signing_key()
    await claim_database(pool, own_database_url, "one.example", old)
    new = new_signing_key()
    await record_signing_key(pool, new)
    await claim_database(pool, own_database_url, "one.example", new)
    await claim_database(pool, own_database_url, "one.example", old)


async def test_parts_starting_together_agree_on_one_claim(
    pool: asyncpg.Pool, own_database_url: str
) -> None:
    key = new_signing_key()
    outcomes = await asyncio.gather(
        *(claim_database(pool, own_database_url, "one.example", key) for _ in range(4)),
        return_exceptions=True,
    )
    assert outcomes == [None] * 4
    rows = await pool.fetch("SELECT server_name FROM mxfed_meta.server")
    assert [row["server_name"] for row in rows] == ["one.example"]


async def test_tables_newer_than_the_code_stop_the_start(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "001_initial.sql").write_text("CREATE TABLE widgets (id bigint);")
    assert await apply_migrations(pool, "newer", migrations) == [1]
    await pool.execute(
        "INSERT INTO newer.schema_migrations (version, name) VALUES (7, '007_future.sql')"
    )
    with pytest.raises(StartupError) as refused:
        await apply_migrations(pool, "newer", migrations)
    assert "the newer tables are at migration 7, newer than this mxfed knows (1)" in str(
        refused.value.cause
    )


async def test_a_missing_database_fails_at_once(own_database_url: str) -> None:
    missing = with_database_name(own_database_url, "mxfed_absent_database")
    with pytest.raises(StartupError) as refused:
        await wait_for_database(missing, patience=300)  # no waiting for what will not come
    assert 'database "mxfed_absent_database" does not exist' in refused.value.cause
    assert "createdb" in refused.value.fix


async def test_a_silent_server_is_waited_for_then_given_up(refused_port: int) -> None:
    url = f"postgresql://postgres@127.0.0.1:{refused_port}/mxfed"
    with pytest.raises(StartupError) as refused:
        await wait_for_database(url, patience=0.5)
    assert f"127.0.0.1:{refused_port}" in refused.value.cause
    assert "database_start_timeout" in refused.value.fix


def test_passwords_go_into_the_url_and_never_into_messages() -> None:
    url = with_password("postgresql://mxfed@db:5432/mxfed?sslmode=require", "p@ss/w:rd")
    assert url == "postgresql://mxfed:p%40ss%2Fw%3Ard@db:5432/mxfed?sslmode=require"
    assert describe(url) == "postgresql://mxfed@db:5432/mxfed"
