"""PostgreSQL: finding the database, connection pools and per-service migrations.

Where the data lives, in order: ``database_url`` (``DATABASE_URL``; the
value ``embedded`` picks the embedded one); a PostgreSQL answering on
127.0.0.1:5432 (database ``mxfed`` created on first use); an embedded
PostgreSQL from the optional ``pgserver`` package kept in the data dir. Each
service owns one schema and applies its own numbered
``migrations/NNN_name.sql`` files at start, under an advisory lock so that
replicas starting together apply each migration exactly once; tables at a
migration newer than the code knows stop the start (a newer mxfed wrote them).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from mxfed.startup import StartupError

log = logging.getLogger(__name__)

LOCAL_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
EMBEDDED = "embedded"
DEFAULT_DATABASE_NAME = "mxfed"
_MIGRATION_FILE = re.compile(r"^(\d+)_[a-z0-9_]+\.sql$")


@dataclass
class EmbeddedDatabase:
    """An embedded PostgreSQL kept alive for as long as this object is."""

    url: str
    server: Any

    def stop(self) -> None:
        self.server.cleanup()


async def _answers(url: str) -> bool:
    try:
        connection = await asyncpg.connect(url, timeout=2)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await connection.close()
    return True


async def ensure_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server if missing; return its URL."""
    connection = await asyncpg.connect(server_url, timeout=5)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await connection.execute(f'CREATE DATABASE "{name}"')
            except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                pass  # another process created it at the same moment
    finally:
        await connection.close()
    return with_database_name(server_url, name)


def with_database_name(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` (keeps host, credentials and query)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` for its user (a password file's content)."""
    parts = urlsplit(url)
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def describe(url: str) -> str:
    """``url`` without its password, for logs and messages."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, user + host, parts.path, "", ""))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or (urlsplit(url).username or "")


def start_embedded_database(data_dir: Path) -> EmbeddedDatabase:
    try:
        import pgserver
    except ImportError:
        raise StartupError(
            "no database: DATABASE_URL is unset or 'embedded', and the embedded PostgreSQL "
            "(pgserver) is not installed",
            "install it (pip install 'mxfed[embedded]'; ./bootstrap run does) or set "
            "DATABASE_URL to a PostgreSQL server",
        ) from None
    path = data_dir / "postgres"
    path.mkdir(parents=True, exist_ok=True)
    # pgserver logs every initdb and pg_ctl line at INFO; they are not ours to show.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    server = pgserver.get_server(path, cleanup_mode="stop")
    return EmbeddedDatabase(url=server.get_uri(), server=server)


async def resolve_database_url(
    configured_url: str | None, data_dir: Path
) -> tuple[str, EmbeddedDatabase | None]:
    """The database to use, and the embedded server to keep alive if one was started."""
    if configured_url and configured_url != EMBEDDED:
        return configured_url, None
    if configured_url is None and await _answers(LOCAL_SERVER_URL):
        return await ensure_database(LOCAL_SERVER_URL, DEFAULT_DATABASE_NAME), None
    embedded = await asyncio.to_thread(start_embedded_database, data_dir)
    url = await ensure_database(embedded.url, DEFAULT_DATABASE_NAME)
    return url, embedded


# Errors that waiting does not cure.
_REFUSALS = (
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidAuthorizationSpecificationError,
)


def _refusal(url: str, exc: asyncpg.PostgresError) -> StartupError:
    parts = urlsplit(url)
    server = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    name = database_name(url)
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return StartupError(
            f'database "{name}" does not exist on the PostgreSQL at {server} (database_url)',
            f"create it (createdb -h {parts.hostname or 'localhost'} -p {parts.port or 5432} "
            f"{name}) or set DATABASE_URL to an existing database",
        )
    return StartupError(
        f'the PostgreSQL at {server} refused user "{parts.username or ""}": {exc}',
        "fix the user or password in DATABASE_URL (or database_password_file)",
    )


async def wait_for_database(url: str, patience: float) -> None:
    """Return once the database answers; a :class:`StartupError` when it cannot or did not.

    A missing database or refused credentials fail at once; a server that
    does not answer (not started yet, restarting) is retried for ``patience``
    seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    delay = 0.2
    while True:
        try:
            connection = await asyncpg.connect(url, timeout=min(5.0, patience))
        except _REFUSALS as exc:
            raise _refusal(url, exc) from None
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            last = str(exc) or type(exc).__name__
            if loop.time() >= deadline:
                raise StartupError(
                    f"the PostgreSQL at {describe(url)} did not answer within {patience:g} s "
                    f"({last})",
                    "start PostgreSQL or set DATABASE_URL to one that runs "
                    "(database_start_timeout sets how long to wait)",
                ) from None
            log.info("waiting for the database", extra={"database": describe(url), "error": last})
            await asyncio.sleep(max(0.0, min(delay, deadline - loop.time())))
            delay = min(delay * 2, 2.0)
            continue
        await connection.close()
        return


class PooledConnection(asyncpg.Connection):
    """A connection of a pool made by :func:`create_pool`.

    asyncpg resets every released connection with a query (advisory locks, cursors,
    LISTENs, session settings) that the releasing task waits for: a round trip after
    every pooled use. Pooled connections here keep no session state, except where
    :func:`keep_session_state` says so; only those get that reset. An open
    transaction is rolled back at release either way.
    """

    _reset_at_release = False

    def reset_at_release(self) -> None:
        self._reset_at_release = True


def keep_session_state(connection: asyncpg.Connection) -> None:
    """Call before keeping session state (a session advisory lock, say) on a pooled
    connection: it is then reset when released, so a lock that its holder did not get
    to unlock (cancelled, say) is not kept by the pool."""
    mark = getattr(connection, "reset_at_release", None)  # through the pool's proxy
    if mark is not None:
        mark()


async def _reset_kept_session_state(connection: asyncpg.Connection) -> None:
    if isinstance(connection, PooledConnection) and connection._reset_at_release:
        connection._reset_at_release = False
        await connection.execute(connection.get_reset_query())


async def create_pool(url: str, *, max_size: int = 10, timed: bool = True) -> asyncpg.Pool:
    """A pool that times the wait for each connection (``mxfed_db_pool_acquire_seconds``);
    ``timed=False`` for a short-lived one (the supervisor's), which then does not load the
    metrics library into a process that serves none. Releasing a connection costs no
    round trip (:class:`PooledConnection`)."""
    pool_class: type[asyncpg.Pool] = asyncpg.Pool
    if timed:
        from mxfed.pool_metrics import TimedPool

        pool_class = TimedPool
    pool = pool_class(
        url,
        min_size=1,
        max_size=max_size,
        command_timeout=60,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=PooledConnection,
        record_class=asyncpg.Record,
        reset=_reset_kept_session_state,
    )
    await pool
    return pool


def migration_files(directory: Path) -> list[tuple[int, Path]]:
    """The numbered migrations in ``directory`` (none when it doesn't exist)."""
    if not directory.is_dir():
        return []
    files = []
    for path in sorted(directory.iterdir()):
        match = _MIGRATION_FILE.match(path.name)
        if match:
            files.append((int(match.group(1)), path))
    versions = [version for version, _ in files]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration numbers in {directory}")
    return files


async def apply_migrations(pool: asyncpg.Pool, schema: str, directory: Path) -> list[int]:
    """Apply the schema's missing migrations in order; return the versions applied.

    A session-level advisory lock keyed on the schema serialises concurrent
    starters; each migration runs in its own transaction with its bookkeeping
    row, so a crash leaves either all of a migration or none of it.
    """
    applied_now: list[int] = []
    async with pool.acquire() as connection:
        lock_key = await connection.fetchval("SELECT hashtext($1)", f"mxfed.migrations.{schema}")
        keep_session_state(connection)
        await connection.execute("SELECT pg_advisory_lock($1)", lock_key)
        try:
            await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await connection.execute(
                f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
                " version integer PRIMARY KEY,"
                " name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                row["version"]
                for row in await connection.fetch(
                    f'SELECT version FROM "{schema}".schema_migrations'
                )
            }
            files = migration_files(directory)
            known = max((version for version, _ in files), default=0)
            if done and max(done) > known:
                raise StartupError(
                    f"the {schema} tables are at migration {max(done)}, newer than this "
                    f"mxfed knows ({known}): a newer mxfed has used this database",
                    "run that newer mxfed (or restore the database from before it)",
                )
            for version, path in files:
                if version in done:
                    continue
                async with connection.transaction():
                    await connection.execute(f'SET LOCAL search_path TO "{schema}"')
                    await connection.execute(path.read_text())
                    await connection.execute(
                        f'INSERT INTO "{schema}".schema_migrations (version, name) VALUES ($1, $2)',
                        version,
                        path.name,
                    )
                log.info("applied migration", extra={"schema": schema, "migration": path.name})
                applied_now.append(version)
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", lock_key)
    return applied_now
