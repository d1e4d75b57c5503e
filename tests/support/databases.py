"""Throw-away PostgreSQL databases on the local server (127.0.0.1:5432, trust auth)."""

from __future__ import annotations

import uuid

import asyncpg

from mxfed.database import LOCAL_SERVER_URL, with_database_name


async def create_database(prefix: str = "mxfed_test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    connection = await asyncpg.connect(LOCAL_SERVER_URL)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
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
