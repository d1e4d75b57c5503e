"""Throw-away PostgreSQL databases on the local server (127.0.0.1:5432, trust auth)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from mxfed.database import LOCAL_SERVER_URL, with_database_name


async def create_database(prefix: str = "mxfed_test", *, c_locale: bool = False) -> str:
    """A fresh database; ``c_locale``: UTF-8 with the C collation, as Synapse requires."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    options = " TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'" if c_locale else ""
    connection = await asyncpg.connect(LOCAL_SERVER_URL)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"{options}')
    finally:
        await connection.close()
    return with_database_name(LOCAL_SERVER_URL, name)


async def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1].split("?", 1)[0]
    connection = await asyncpg.connect(LOCAL_SERVER_URL)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def backends(
    url: str, *, query_like: str = "%", exclude: set[int] | None = None
) -> list[int]:
    """Server pids of the other sessions on ``url``'s database whose last statement is like
    ``query_like`` (``'LISTEN %channel%'`` finds a channel's listeners)."""
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND query LIKE $1",
            query_like,
        )
    finally:
        await connection.close()
    return [row["pid"] for row in rows if row["pid"] not in (exclude or set())]


async def terminate_backends(url: str, pids: list[int] | None = None) -> int:
    """``pg_terminate_backend`` the given sessions (every other session on ``url``'s
    database if None), as a failover or a pooler would; returns how many were ended."""
    if pids is None:
        pids = await backends(url)
    connection = await asyncpg.connect(url)
    try:
        ended = await connection.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
            " FROM unnest($1::int[]) AS pid",
            pids,
        )
    finally:
        await connection.close()
    return int(ended)


async def truncate(pool: asyncpg.Pool, tables: str, *, lock_timeout: str = "20s") -> None:
    """``TRUNCATE tables`` for a test's clean start. A session still holding a lock on one
    of them (something of an earlier test left running, or idle in a transaction) makes
    it fail after ``lock_timeout`` with those sessions described, rather than hang until
    the statement's timeout with nothing to go on."""
    async with pool.acquire() as connection:
        try:
            async with connection.transaction():
                await connection.execute(
                    "SELECT set_config('lock_timeout', $1, true)", lock_timeout
                )
                await connection.execute(f"TRUNCATE {tables}")
        except asyncpg.LockNotAvailableError:
            holders = await pool.fetch(
                "SELECT a.pid, a.application_name, a.state, a.xact_start, left(a.query, 200)"
                " AS query, array_agg(DISTINCT l.relation::regclass::text) AS tables"
                " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE a.datname = current_database() AND l.granted AND l.relation IS NOT NULL"
                " AND a.pid <> ALL($1::int[])"
                " GROUP BY a.pid, a.application_name, a.state, a.xact_start, a.query",
                [connection.get_server_pid()],
            )
            described = "; ".join(str(dict(row)) for row in holders) or "none left by now"
            raise AssertionError(
                f"TRUNCATE {tables} waited for locks held by: {described}"
            ) from None


async def explain_from_now(connection: asyncpg.Connection) -> list[dict[str, Any]]:
    """From now on, the plan of every statement ``connection`` runs (those inside its
    PL/pgSQL functions too) as PostgreSQL executed it (``auto_explain``, JSON, with row
    counts): the list returned fills as they run."""
    plans: list[dict[str, Any]] = []
    connection.add_log_listener(
        lambda _, message: plans.append(json.loads(message.message.split("plan:", 1)[1]))
    )
    await connection.execute(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
        " SET auto_explain.log_nested_statements = on; SET auto_explain.log_analyze = on;"
        " SET auto_explain.log_timing = off; SET auto_explain.log_format = json;"
        " SET auto_explain.log_level = notice"
    )
    return plans


@dataclass(frozen=True)
class ExaminedScan:
    """A scan of a table in an executed plan (:func:`rows_examined`)."""

    table: str
    rows: int  # examined over all its loops, those a filter removed included
    shown: Any  # the scan and its statement's text, to show when ``rows`` is too many


def rows_examined(plans: list[dict[str, Any]], tables: set[str]) -> Iterator[ExaminedScan]:
    """Each scan of one of ``tables`` in ``plans`` (writes to them left out)."""

    def scans(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if node.get("Relation Name") in tables and node["Node Type"] != "ModifyTable":
            yield node
        for child in node.get("Plans", []):
            yield from scans(child)

    for plan in plans:
        for scan in scans(plan["Plan"]):
            examined = scan["Actual Rows"] + scan.get("Rows Removed by Filter", 0)
            yield ExaminedScan(
                scan["Relation Name"],
                examined * scan["Actual Loops"],
                (scan, plan["Query Text"]),
            )
