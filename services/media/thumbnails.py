"""Thumbnails of local media: the usual sizes made on upload, others on demand, all cached.

Spec: https://spec.matrix.org/v1.19/client-server-api/#thumbnails and the
federation ``/media/thumbnail`` endpoint. A request is answered, in order, by
the exact thumbnail made before; the original, when it is an image no larger
than asked (and not an animation the caller did not ask for); the smallest
usual size that covers the request; or a thumbnail made now. Thumbnails are
keyed by the source's digest, so identical uploads share them.

Rendering runs in a small thread pool (Pillow releases the GIL while it
decodes and resizes). Each source keeps at most ``MAX_ON_DEMAND`` thumbnails
of sizes a requester chose; past that, a thumbnail is made and served but not
kept, so remote requests cannot grow the cache without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from matrix_protocol.media import (
    STANDARD_THUMBNAILS,
    THUMBNAIL_CONTENT_TYPES,
    ThumbnailSpec,
    covering_standard_spec,
    sniff_content_type,
    source_fits,
)
from services.media import imaging
from services.media.errors import CannotThumbnail, ContentTooLarge
from services.media.files import FileStore
from services.media.metrics import THUMBNAILS_MADE
from services.media.storage import MediaStorage, ThumbnailKey, ThumbnailRow

log = logging.getLogger(__name__)

MAX_ON_DEMAND = 16
RENDER_THREADS = 2

T = TypeVar("T")


def thumbnail_key(spec: ThumbnailSpec, animated: bool) -> ThumbnailKey:
    return ThumbnailKey(spec.width, spec.height, str(spec.method), animated)


@dataclass(frozen=True)
class Source:
    """Local content to thumbnail: its digest and first bytes."""

    sha256: str
    head: bytes


@dataclass(frozen=True)
class Answer:
    """What to serve: a stored file (by digest), or ``data`` made for this request only."""

    sha256: str
    content_type: str
    size: int
    data: bytes | None = None


class Thumbnails:
    def __init__(self, storage: MediaStorage, files: FileStore, max_pixels: int) -> None:
        self.storage = storage
        self.files = files
        self.max_pixels = max_pixels
        self._executor = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="thumbnails")
        # One rendering per (source, spec, animated) at a time, whoever asks.
        self._rendering: dict[tuple[str, ThumbnailKey], asyncio.Future[Answer]] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _in_thread(self, function: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    def pregenerate(self, source: Source) -> None:
        """Make the usual sizes of a new image in the background (logged if it fails)."""
        if sniff_content_type(source.head) not in _IMAGE_TYPES:
            return
        task = asyncio.create_task(self._pregenerate(source), name="thumbnails")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _pregenerate(self, source: Source) -> None:
        path = self.files.path_of(source.sha256)
        try:
            info = await self._in_thread(lambda: imaging.probe(path, self.max_pixels))
            # Sizes the original fits in are answered with the original itself: making
            # them would only let a stored copy win over it (see answer()).
            original_serves = (
                not info.animated and sniff_content_type(source.head) in THUMBNAIL_CONTENT_TYPES
            )
            specs = [
                spec
                for spec in STANDARD_THUMBNAILS
                if not (original_serves and source_fits(info.size, spec))
            ]
            if not specs:
                return
            rendered = await self._in_thread(
                lambda: imaging.render(path, specs, animated=False, max_pixels=self.max_pixels)
            )
            for spec, image in zip(specs, rendered, strict=True):
                await self._keep(source.sha256, thumbnail_key(spec, False), image)
        except (imaging.NotAnImage, imaging.ImageTooLarge) as error:
            log.info("no thumbnails", extra={"sha256": source.sha256, "reason": str(error)})
        except Exception:
            log.exception("making thumbnails failed", extra={"sha256": source.sha256})

    async def _keep(self, source_sha256: str, key: ThumbnailKey, image: imaging.Rendered) -> Answer:
        stored = await self.files.store_bytes(image.data)
        row = ThumbnailRow(key, image.content_type, stored.size, stored.sha256)
        await self.storage.store_thumbnail(source_sha256, row)
        THUMBNAILS_MADE.labels("kept").inc()
        return Answer(stored.sha256, image.content_type, stored.size)

    async def answer(
        self, source: Source, size: int, spec: ThumbnailSpec, animated: bool
    ) -> Answer:
        """The thumbnail to serve for ``spec`` (see the module docstring for the order)."""
        sniffed = sniff_content_type(source.head)
        if sniffed not in _IMAGE_TYPES:
            raise CannotThumbnail("Cannot generate thumbnails for this content")
        existing = {row.key: row for row in await self.storage.thumbnails(source.sha256)}
        if row := existing.get(thumbnail_key(spec, animated)):
            return Answer(row.content_sha256, row.content_type, row.size)
        path = self.files.path_of(source.sha256)
        try:
            info = await self._in_thread(lambda: imaging.probe(path, self.max_pixels))
        except imaging.ImageTooLarge as error:
            raise ContentTooLarge(f"Content is too large to thumbnail: {error}") from None
        except imaging.NotAnImage as error:
            raise CannotThumbnail(f"Cannot generate thumbnails for this content: {error}") from None
        animate = animated and info.animated
        if animated and not animate and (row := existing.get(thumbnail_key(spec, False))):
            return Answer(row.content_sha256, row.content_type, row.size)
        if (
            source_fits(info.size, spec)
            and (animate or not info.animated)
            and sniffed in THUMBNAIL_CONTENT_TYPES
        ):
            return Answer(source.sha256, sniffed, size)
        if not animate:
            standard = covering_standard_spec(spec)
            row = existing.get(thumbnail_key(standard, False)) if standard else None
            if row:
                return Answer(row.content_sha256, row.content_type, row.size)
        key = thumbnail_key(spec, animate)
        keep = len(existing) < len(STANDARD_THUMBNAILS) + MAX_ON_DEMAND
        return await self._render_once(source.sha256, key, spec, animate, keep)

    async def _render_once(
        self, sha256: str, key: ThumbnailKey, spec: ThumbnailSpec, animate: bool, keep: bool
    ) -> Answer:
        flight = (sha256, key)
        future = self._rendering.get(flight)
        if future is None:
            future = asyncio.ensure_future(self._render(sha256, key, spec, animate, keep))
            self._rendering[flight] = future
            future.add_done_callback(lambda _: self._rendering.pop(flight, None))
        return await asyncio.shield(future)

    async def _render(
        self, sha256: str, key: ThumbnailKey, spec: ThumbnailSpec, animate: bool, keep: bool
    ) -> Answer:
        path = self.files.path_of(sha256)
        try:
            (image,) = await self._in_thread(
                lambda: imaging.render(path, [spec], animated=animate, max_pixels=self.max_pixels)
            )
        except imaging.ImageTooLarge as error:
            raise ContentTooLarge(f"Content is too large to thumbnail: {error}") from None
        except (imaging.NotAnImage, OSError, ValueError) as error:
            raise CannotThumbnail(f"Cannot generate thumbnails for this content: {error}") from None
        if keep:
            return await self._keep(sha256, key, image)
        THUMBNAILS_MADE.labels("not_kept").inc()
        return Answer("", image.content_type, len(image.data), image.data)


# Content we try to decode (Pillow's formats of imaging.DECODABLE_FORMATS).
_IMAGE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/tiff"}
)
