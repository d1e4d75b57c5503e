"""Thumbnails of local media, in process: what the usual sizes made on upload may answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from matrix_protocol.media import STANDARD_THUMBNAILS, ThumbnailSpec, source_fits
from mxfed.database import apply_migrations, create_pool
from mxfed.service_runtime import migrations_directory
from services.media.files import FileStore
from services.media.storage import MediaStorage
from services.media.thumbnails import Source, Thumbnails
from tests.support.media import png

MAX_PIXELS = 32_000_000


@pytest.fixture
async def media_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=3)
    await apply_migrations(pool, "media", migrations_directory("media"))
    yield pool
    await pool.close()


@pytest.fixture
async def thumbnails(media_pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[Thumbnails]:
    files = FileStore(tmp_path / "media")
    files.prepare()
    made = Thumbnails(MediaStorage(media_pool), files, MAX_PIXELS)
    yield made
    await made.close()


async def _uploaded(thumbnails: Thumbnails, data: bytes) -> Source:
    stored = await thumbnails.files.store_bytes(data)
    source = Source(stored.sha256, data[:64])
    thumbnails.pregenerate(source)
    await asyncio.gather(*list(thumbnails._background))
    return source


async def test_a_small_image_is_its_own_thumbnail_after_the_usual_sizes_are_made(
    thumbnails: Thumbnails,
) -> None:
    data = png(40, 30, color=(1, 2, 3))
    source = await _uploaded(thumbnails, data)
    fitting = [spec for spec in STANDARD_THUMBNAILS if source_fits((40, 30), spec)]
    assert len(fitting) == len(STANDARD_THUMBNAILS) - 1  # all but 32x32
    for spec in fitting:
        answer = await thumbnails.answer(source, len(data), spec, animated=False)
        assert answer.sha256 == source.sha256, spec  # the original, never a copy of it
    kept = await thumbnails.storage.thumbnails(source.sha256)
    assert [(row.key.width, row.key.height) for row in kept] == [(32, 32)]


async def test_the_usual_sizes_smaller_than_the_image_are_made_on_upload(
    thumbnails: Thumbnails,
) -> None:
    data = png(640, 480, color=(4, 5, 6))
    source = await _uploaded(thumbnails, data)
    kept = {
        (row.key.width, row.key.height)
        for row in await thumbnails.storage.thumbnails(source.sha256)
    }
    assert kept == {
        (spec.width, spec.height)
        for spec in STANDARD_THUMBNAILS
        if spec.width < 640 or spec.height < 480
    }
    small = ThumbnailSpec(32, 32, STANDARD_THUMBNAILS[0].method)
    answer = await thumbnails.answer(source, len(data), small, animated=False)
    assert answer.sha256 != source.sha256
