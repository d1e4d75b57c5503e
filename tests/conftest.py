"""Fixtures shared by the whole suite: a fresh PostgreSQL database per test session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.databases import create_database, drop_database


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    url = await create_database()
    yield url
    await drop_database(url)
