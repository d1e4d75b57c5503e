"""Other servers' media for local actors: fetched over federation, cached, bounded.

Spec: https://spec.matrix.org/v1.19/server-server-api/#content-repository.
``mxc://{server}/{id}`` is fetched from ``server`` with the authenticated
``GET /_matrix/federation/v1/media/download/{id}`` (or ``/media/thumbnail``);
only when that answers ``404 M_UNRECOGNIZED`` (a server that predates it) do
we fall back to the deprecated, unauthenticated
``/_matrix/media/v3/download/{server}/{id}?allow_remote=false``.

- Every request goes through the federation client: its IP block list, TLS
  policy and server discovery; a ``Location`` part is fetched from that URL
  (https only, block list applied to it and to its redirects, never cached).
- The body is streamed into the file store as it arrives: never held whole.
  It is capped at ``media_max_bytes`` (``Content-Length`` checked first), and
  a remote that sends nothing for ``media_remote_idle_timeout`` seconds, or
  takes longer than ``DOWNLOAD_DEADLINE`` overall, has failed.
- One outbound request per media at a time: concurrent callers in a replica
  share one fetch; replicas take a PostgreSQL advisory lock on the media
  first, and a replica that finds it taken waits for the other's result.
- The cache (``remote_media``, ``remote_thumbnails``) is bounded by
  ``media_remote_cache_max_bytes``: least recently used entries go first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from matrix_protocol.media import (
    ThumbnailSpec,
    filename_from_disposition,
    is_valid_media_id,
    normalize_content_type,
)
from matrix_protocol.multipart import (
    MediaResponseReader,
    MultipartError,
    boundary_from_content_type,
)
from matrix_protocol.server_names import is_valid_server_name
from mxfed.clock import now_ms
from mxfed.federation_client import (
    FederationClient,
    FederationDeniedError,
    FederationError,
    HttpResponseError,
    StreamedResponse,
    federation_path,
)
from mxfed.service_errors import BadRequest, ServiceError
from services.media.errors import (
    CannotThumbnail,
    ContentTooLarge,
    LimitExceeded,
    MediaNotFound,
    NotYetUploaded,
    RemoteFailed,
)
from services.media.files import FileStore, FileWriter, StoredFile, TooLarge
from services.media.local import wait_ms
from services.media.metrics import (
    REMOTE_CACHE_BYTES,
    REMOTE_FETCH_SECONDS,
    REMOTE_FETCH_WAITERS,
    REMOTE_FETCHES,
)
from services.media.storage import MediaStorage, RemoteMediaRow, ThumbnailRow
from services.media.thumbnails import thumbnail_key

log = logging.getLogger(__name__)

T = TypeVar("T")

DOWNLOAD_DEADLINE = 600.0
# Outbound fetches at once per replica (each holds a database connection for its lock).
MAX_CONCURRENT_FETCHES = 4
# What a multipart answer may add to the content (metadata part, headers, delimiters).
_MULTIPART_OVERHEAD = 80 * 1024
# While another replica fetches a media, how often we look for its result.
_LOCK_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Fetched:
    stored: StoredFile
    content_type: str | None
    upload_name: str | None


class RemoteMedia:
    def __init__(
        self,
        storage: MediaStorage,
        files: FileStore,
        client: FederationClient,
        *,
        max_bytes: int,
        cache_max_bytes: int,
        idle_timeout: float,
    ) -> None:
        self.storage = storage
        self.files = files
        self.client = client
        self.max_bytes = max_bytes
        self.cache_max_bytes = cache_max_bytes
        self.idle_timeout = idle_timeout
        self._flights: dict[tuple[object, ...], asyncio.Future[Any]] = {}
        self._fetching = asyncio.Semaphore(MAX_CONCURRENT_FETCHES)

    # Entry points -----------------------------------------------------------------------

    async def media(self, server_name: str, media_id: str, timeout_ms: int) -> RemoteMediaRow:
        """The cached copy of ``mxc://server_name/media_id``, fetched first if need be."""
        _check(server_name, media_id)
        row = await self.storage.remote_media(server_name, media_id)
        if row and await self.files.exists(row.content_sha256):
            return row
        key = ("content", server_name, media_id)

        async def cached() -> RemoteMediaRow | None:
            row = await self.storage.remote_media(server_name, media_id)
            return row if row and await self.files.exists(row.content_sha256) else None

        async def fetch() -> RemoteMediaRow:
            fetched = await self._fetch_content(server_name, media_id, timeout_ms)
            row = RemoteMediaRow(
                server_name,
                media_id,
                fetched.content_type,
                fetched.upload_name,
                fetched.stored.size,
                fetched.stored.sha256,
                fetched.stored.head,
                now_ms(),
            )
            await self.storage.store_remote_media(row)
            return row

        return await self._once(key, cached, fetch)

    async def thumbnail(
        self,
        server_name: str,
        media_id: str,
        spec: ThumbnailSpec,
        animated: bool,
        timeout_ms: int,
    ) -> ThumbnailRow:
        """A remote thumbnail as its server made it, cached."""
        _check(server_name, media_id)
        key = thumbnail_key(spec, animated)

        async def cached() -> ThumbnailRow | None:
            row = await self.storage.remote_thumbnail(server_name, media_id, key)
            return row if row and await self.files.exists(row.content_sha256) else None

        if row := await cached():
            return row

        async def fetch() -> ThumbnailRow:
            fetched = await self._fetch_thumbnail(server_name, media_id, spec, animated, timeout_ms)
            row = ThumbnailRow(
                key,
                fetched.content_type or "application/octet-stream",
                fetched.stored.size,
                fetched.stored.sha256,
            )
            await self.storage.store_remote_thumbnail(server_name, media_id, row)
            return row

        return await self._once(("thumbnail", server_name, media_id, key), cached, fetch)

    # One fetch per media --------------------------------------------------------------------

    async def _once(
        self,
        key: tuple[object, ...],
        cached: Callable[[], Awaitable[T | None]],
        fetch: Callable[[], Awaitable[T]],
    ) -> T:
        """Run ``fetch`` once for every concurrent caller asking for ``key``.

        The fetch is a task of its own: a caller that goes away does not stop
        it for the others, and what it stores is there for the next caller.
        """
        flight = self._flights.get(key)
        if flight is None:
            task: asyncio.Future[Any] = asyncio.ensure_future(self._locked(key, cached, fetch))
            task.add_done_callback(lambda done: self._landed(key, done))
            self._flights[key] = flight = task
        REMOTE_FETCH_WAITERS.inc()
        try:
            return cast(T, await asyncio.shield(flight))
        finally:
            REMOTE_FETCH_WAITERS.dec()

    def _landed(self, key: tuple[object, ...], flight: asyncio.Future[Any]) -> None:
        self._flights.pop(key, None)
        if not flight.cancelled():
            flight.exception()  # retrieved here when every caller has gone

    async def _locked(
        self,
        key: tuple[object, ...],
        cached: Callable[[], Awaitable[T | None]],
        fetch: Callable[[], Awaitable[T]],
    ) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DOWNLOAD_DEADLINE
        async with self._fetching:
            while True:
                lock: AbstractAsyncContextManager[bool] = self.storage.fetch_lock(
                    [str(part) for part in key]
                )
                async with lock as taken:
                    if row := await cached():
                        return row
                    if taken:
                        started = time.monotonic()
                        try:
                            result = await fetch()
                        except ServiceError as error:
                            log.info(
                                "remote media fetch failed",
                                extra={
                                    "media": list(map(str, key)),
                                    "error": f"{error.errcode}: {error.message}",
                                },
                            )
                            raise
                        REMOTE_FETCH_SECONDS.labels(str(key[0])).observe(time.monotonic() - started)
                        await self._evict()
                        return result
                if loop.time() > deadline:
                    raise RemoteFailed("Another replica's fetch of this media did not finish")
                await asyncio.sleep(_LOCK_POLL_SECONDS)

    async def _evict(self) -> None:
        cached = await self.storage.remote_cache_bytes()
        if cached > self.cache_max_bytes:
            unused = await self.storage.evict_remote(cached - self.cache_max_bytes)
            for sha256 in unused:
                await self.files.delete(sha256)
            cached = await self.storage.remote_cache_bytes()
            log.info("remote media evicted", extra={"files": len(unused), "cached": cached})
        REMOTE_CACHE_BYTES.set(cached)

    # Requests -----------------------------------------------------------------------------

    async def _fetch_content(self, server_name: str, media_id: str, timeout_ms: int) -> Fetched:
        wait = wait_ms(timeout_ms)
        try:
            return await self._download(
                "content",
                server_name,
                federation_path("_matrix", "federation", "v1", "media", "download", media_id),
                {"timeout_ms": wait},
                legacy_path=federation_path(
                    "_matrix", "media", "v3", "download", server_name, media_id
                ),
                legacy_query={"allow_remote": "false", "timeout_ms": wait},
                wait_seconds=wait / 1000,
            )
        except FederationError as error:
            raise _failure(server_name, error) from None

    async def _fetch_thumbnail(
        self,
        server_name: str,
        media_id: str,
        spec: ThumbnailSpec,
        animated: bool,
        timeout_ms: int,
    ) -> Fetched:
        wait = wait_ms(timeout_ms)
        query: dict[str, object] = {
            "width": spec.width,
            "height": spec.height,
            "method": str(spec.method),
            "timeout_ms": wait,
            "animated": animated,
        }
        try:
            return await self._download(
                "thumbnail",
                server_name,
                federation_path("_matrix", "federation", "v1", "media", "thumbnail", media_id),
                query,
                legacy_path=federation_path(
                    "_matrix", "media", "v3", "thumbnail", server_name, media_id
                ),
                legacy_query={**query, "allow_remote": "false"},
                wait_seconds=wait / 1000,
            )
        except FederationError as error:
            raise _failure(server_name, error) from None

    async def _download(
        self,
        kind: str,
        server_name: str,
        path: str,
        query: dict[str, object],
        *,
        legacy_path: str,
        legacy_query: dict[str, object],
        wait_seconds: float,
    ) -> Fetched:
        # The remote may hold its answer for up to timeout_ms (content not yet uploaded).
        head_timeout = self.client.options.request_timeout + wait_seconds
        async with self.client.stream(
            server_name, path, query=query, timeout=head_timeout
        ) as response:
            if response.ok:
                fetched = await self._read_multipart(response)
                REMOTE_FETCHES.labels(kind, "fetched").inc()
                return fetched
            error = await response.error()
        if not (error.status == 404 and error.errcode == "M_UNRECOGNIZED"):
            REMOTE_FETCHES.labels(kind, "failed").inc()
            raise _remote_error(server_name, error)
        # A server without the authenticated endpoints: the deprecated ones, unsigned.
        async with self.client.stream(
            server_name, legacy_path, query=legacy_query, sign=False, timeout=head_timeout
        ) as response:
            if not response.ok:
                REMOTE_FETCHES.labels(kind, "failed").inc()
                raise _remote_error(server_name, await response.error())
            fetched = await self._read_plain(response)
            REMOTE_FETCHES.labels(kind, "fallback").inc()
            return fetched

    def _check_length(self, response: StreamedResponse, overhead: int) -> None:
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.max_bytes + overhead:
            raise ContentTooLarge(
                f"Remote content is too large ({length} bytes; the limit is {self.max_bytes})"
            )

    async def _copy(
        self,
        response: StreamedResponse,
        writer: FileWriter,
        transform: Callable[[bytes], bytes] | None = None,
    ) -> None:
        """Body bytes (through ``transform``) into ``writer``, bounded in size and time."""
        async with asyncio.timeout(DOWNLOAD_DEADLINE):
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        chunk = await response.content.readany()
                except TimeoutError:
                    raise RemoteFailed(
                        f"{response.destination} sent nothing for {self.idle_timeout} s"
                    ) from None
                if not chunk:
                    return
                await writer.write(transform(chunk) if transform else chunk)

    async def _read_multipart(self, response: StreamedResponse) -> Fetched:
        self._check_length(response, _MULTIPART_OVERHEAD)
        writer = self.files.writer(self.max_bytes)
        try:
            reader = MediaResponseReader(
                boundary_from_content_type(response.headers.get("Content-Type"))
            )
            await self._copy(response, writer, reader.feed)
            reader.finish()
            if reader.location is None:
                stored = await writer.commit()
        except TooLarge:
            await writer.abort()
            raise self._too_large() from None
        except MultipartError as error:
            await writer.abort()
            raise RemoteFailed(f"{response.destination} sent a malformed answer: {error}") from None
        except BaseException:
            await writer.abort()
            raise
        if reader.location is not None:
            await writer.abort()
            return await self._follow_location(reader.location)
        headers = reader.content_headers or {}
        return Fetched(
            stored,
            normalize_content_type(headers.get("content-type")),
            filename_from_disposition(headers.get("content-disposition")),
        )

    def _too_large(self) -> ContentTooLarge:
        return ContentTooLarge(f"Remote content is larger than the limit of {self.max_bytes} bytes")

    async def _follow_location(self, location: str) -> Fetched:
        """The content part named a URL: fetch the bytes from there (not cached: it may expire)."""
        async with self.client.stream_url(location) as response:
            if not response.ok:
                raise RemoteFailed(f"{location} answered HTTP {response.status}")
            return await self._read_plain(response)

    async def _read_plain(self, response: StreamedResponse) -> Fetched:
        self._check_length(response, 0)
        writer = self.files.writer(self.max_bytes)
        try:
            await self._copy(response, writer)
            stored = await writer.commit()
        except TooLarge:
            await writer.abort()
            raise self._too_large() from None
        except BaseException:
            await writer.abort()
            raise
        return Fetched(
            stored,
            normalize_content_type(response.headers.get("Content-Type")),
            filename_from_disposition(response.headers.get("Content-Disposition")),
        )


def _check(server_name: str, media_id: str) -> None:
    if not is_valid_server_name(server_name):
        raise BadRequest(f"invalid server name {server_name!r}")
    if not is_valid_media_id(media_id):
        raise MediaNotFound("Media not found")


def _remote_error(server_name: str, error: HttpResponseError) -> Exception:
    """A remote's error answer as ours, for the local actor who asked."""
    if error.errcode == "M_NOT_YET_UPLOADED" or error.status == 504:
        return NotYetUploaded(f"{server_name}: content has not yet been uploaded")
    if error.status == 404:
        return MediaNotFound(f"{server_name} does not have this media")
    if error.errcode == "M_TOO_LARGE" or error.status == 413:
        return ContentTooLarge(f"{server_name}: {error.error or 'content is too large'}")
    if error.status == 429:
        return LimitExceeded(f"{server_name} is rate-limiting us")
    if error.status == 400:
        return CannotThumbnail(f"{server_name}: {error.error or 'cannot thumbnail this media'}")
    return RemoteFailed(f"{server_name} answered HTTP {error.status} {error.errcode or ''}".strip())


def _failure(server_name: str, error: FederationError) -> Exception:
    if isinstance(error, FederationDeniedError):
        return RemoteFailed(f"refused to contact {server_name}: {error}")
    return RemoteFailed(f"fetching from {server_name} failed: {error}")
