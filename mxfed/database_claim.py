"""One database, one server: the database records which server it belongs to.

The runtime's own schema ``mxfed_meta`` holds the server name a database was
first used by and every signing key that server has used (key rotation
records the new key before it takes effect). A part starting against a
database recorded for another server name, or with a signing key that
server never had, is refused: two servers sharing a database would mix
their rooms, queues and keys. The first start against an empty (or older)
database records the server.
"""

from __future__ import annotations

import logging
from pathlib import Path

import asyncpg

from matrix_protocol.signing import encode_verify_key
from mxfed.database import apply_migrations, describe
from mxfed.identity_files import ServerSigningKey
from mxfed.startup import StartupError

log = logging.getLogger(__name__)

SCHEMA = "mxfed_meta"
MIGRATIONS = Path(__file__).parent / "meta_migrations"


async def claim_database(
    pool: asyncpg.Pool, url: str, server_name: str, key: ServerSigningKey | None
) -> None:
    """Record this server in the database, or refuse a database that belongs to another.

    ``key`` is None in a process that holds no signing key: only the server
    name is checked then.
    """
    await apply_migrations(pool, SCHEMA, MIGRATIONS)
    async with pool.acquire() as connection, connection.transaction():
        # Parts starting together: one records, the others then compare.
        await connection.execute("SELECT pg_advisory_xact_lock(hashtext('mxfed_meta.claim'))")
        recorded = await connection.fetchval("SELECT server_name FROM mxfed_meta.server")
        if recorded is None:
            await connection.execute(
                "INSERT INTO mxfed_meta.server (server_name) VALUES ($1)", server_name
            )
            log.info("database claimed", extra={"database": describe(url), "server": server_name})
        elif recorded != server_name:
            raise StartupError(
                f"the database {describe(url)} belongs to the server {recorded!r}, "
                f"not {server_name!r}",
                f"set server_name: {recorded} to run that server, or give this one its own "
                "database (DATABASE_URL, or DATABASE_URL=embedded for one in the data directory)",
            )
        if key is not None:
            await _check_key(connection, url, recorded or server_name, key)


async def _check_key(
    connection: asyncpg.Connection, url: str, server_name: str, key: ServerSigningKey
) -> None:
    verify_key = encode_verify_key(key.signing_key.verify_key)
    rows = await connection.fetch("SELECT key_id, verify_key FROM mxfed_meta.signing_keys")
    known = {row["key_id"]: row["verify_key"] for row in rows}
    if not known:
        await _insert_key(connection, key.key_id, verify_key)
        return
    if known.get(key.key_id) == verify_key:
        return
    raise StartupError(
        f"the signing key {key.key_id} is not one the server {server_name!r} has used with "
        f"the database {describe(url)} (it used {', '.join(sorted(known))})",
        "point signing_key_path at that server's key file, or give this server its own "
        "database (DATABASE_URL)",
    )


async def _insert_key(connection: asyncpg.Connection, key_id: str, verify_key: str) -> None:
    await connection.execute(
        "INSERT INTO mxfed_meta.signing_keys (key_id, verify_key) VALUES ($1, $2)"
        " ON CONFLICT (key_id) DO NOTHING",
        key_id,
        verify_key,
    )


async def record_signing_key(pool: asyncpg.Pool, key: ServerSigningKey) -> None:
    """Record a new signing key of this server (key rotation, before the key is used)."""
    await apply_migrations(pool, SCHEMA, MIGRATIONS)
    async with pool.acquire() as connection:
        await _insert_key(connection, key.key_id, encode_verify_key(key.signing_key.verify_key))
