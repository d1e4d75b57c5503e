"""The Accounts tables live in the accounts schema; a database from before the move keeps
its rows (keys migrations 100-102 made the tables in the keys schema)."""

from __future__ import annotations

from mxfed.database import apply_migrations, create_pool
from mxfed.service_runtime import migrations_directory
from tests.support.databases import create_database, drop_database


async def test_rows_made_in_the_keys_schema_move_to_the_accounts_schema() -> None:
    url = await create_database("mxfed_accounts_schema")
    pool = await create_pool(url, max_size=2)
    try:
        await apply_migrations(pool, "keys", migrations_directory("keys"))
        await pool.execute(
            "INSERT INTO keys.profiles (user_id, fields_json, updated_ts) VALUES ($1, $2, $3)",
            "@alice:example.org",
            '{"displayname": "Alice"}',
            1,
        )
        applied = await apply_migrations(pool, "accounts", migrations_directory("accounts"))
        assert applied[0] == 1
        assert (
            await pool.fetchval(
                "SELECT fields_json FROM accounts.profiles WHERE user_id = $1", "@alice:example.org"
            )
            == '{"displayname": "Alice"}'
        )
        in_keys = await pool.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'keys'"
        )
        names = {row["table_name"] for row in in_keys}
        assert "profiles" not in names and "to_device_inbox" not in names
        assert "server_verify_keys" in names  # the keys service's own tables stay
        # Applying again does nothing (a second start, another replica).
        assert await apply_migrations(pool, "accounts", migrations_directory("accounts")) == []
    finally:
        await pool.close()
        await drop_database(url)
