"""Our own media: uploads, reserved media ids (async upload), waiting for content.

Spec: https://spec.matrix.org/v1.19/client-server-api/#content-repository
(``POST /_matrix/media/v1/create`` reserves an mxc URI that ``PUT .../upload``
fills later; a reservation lapses after 24 hours; a pending upload is waited
for up to ``timeout_ms``, else ``M_NOT_YET_UPLOADED``).

A download waiting for content hears about an upload on this replica at
once; one made through another replica is seen by polling the row.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from matrix_protocol.media import (
    is_valid_media_id,
    is_valid_upload_name,
    normalize_content_type,
    served_content_type,
)
from matrix_protocol.server_names import is_valid_user_id, server_name_of
from mxfed.clock import now_ms
from mxfed.service_errors import BadRequest
from mxfed.waits import event_set_within
from services.media.errors import (
    CannotOverwrite,
    LimitExceeded,
    MediaNotFound,
    NotYetUploaded,
    UploadForbidden,
    UploadTooLarge,
)
from services.media.files import FileStore, StoredFile, TooLarge
from services.media.metrics import UPLOADED_BYTES, UPLOADS, WAITING_FOR_UPLOAD
from services.media.storage import LocalMediaRow, MediaStorage
from services.media.thumbnails import Source, Thumbnails

log = logging.getLogger(__name__)

RESERVATION_MS = 24 * 3600 * 1000
MAX_PENDING_RESERVATIONS = 10
DEFAULT_TIMEOUT_MS = 20_000
# The spec asks servers to cap timeout_ms; Synapse caps it at a minute too.
MAX_TIMEOUT_MS = 60_000
# How often a waiting download looks for an upload made through another replica.
_POLL_SECONDS = 0.5
# Uploaded media rows never change, so they are kept (the most recently used).
ROW_CACHE_SIZE = 10_000


def new_media_id() -> str:
    """24 characters of ``A-Za-z0-9_-`` (144 random bits)."""
    return secrets.token_urlsafe(18)


@dataclass(frozen=True)
class UploadStart:
    uploader: str
    content_type: str
    upload_name: str
    media_id: str


@dataclass(frozen=True)
class Uploaded:
    media_id: str
    stored: StoredFile
    content_type: str


def wait_ms(timeout_ms: int) -> int:
    """The caller's ``timeout_ms`` (0 or less: the default), capped."""
    return min(timeout_ms if timeout_ms > 0 else DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS)


class LocalMedia:
    def __init__(
        self,
        server_name: str,
        storage: MediaStorage,
        files: FileStore,
        thumbnails: Thumbnails,
        max_bytes: int,
    ) -> None:
        self.server_name = server_name
        self.storage = storage
        self.files = files
        self.thumbnails = thumbnails
        self.max_bytes = max_bytes
        # Downloads waiting for a reserved media id's content (event, number of
        # waiters), woken by an upload here. An entry lives while someone waits.
        self._waiting: dict[str, tuple[asyncio.Event, int]] = {}
        self._rows: OrderedDict[str, LocalMediaRow] = OrderedDict()

    def _check_uploader(self, uploader: str) -> None:
        if uploader and not (
            is_valid_user_id(uploader, historical=False)
            and server_name_of(uploader) == self.server_name
        ):
            raise BadRequest(f"{uploader!r} is not a user of this server")

    async def create(self, uploader: str) -> tuple[str, int]:
        """Reserve a media id; its content comes later. Returns (media id, expiry ms)."""
        self._check_uploader(uploader)
        if uploader and await self.storage.pending_reservations(uploader) >= (
            MAX_PENDING_RESERVATIONS
        ):
            raise LimitExceeded(f"{uploader} has {MAX_PENDING_RESERVATIONS} pending uploads")
        media_id, expires = new_media_id(), now_ms() + RESERVATION_MS
        await self.storage.reserve(media_id, uploader, expires)
        return media_id, expires

    async def upload(self, start: UploadStart, chunks: AsyncIterator[bytes]) -> Uploaded:
        """Store the bytes of ``chunks`` as new media (or a reserved id's content)."""
        self._check_uploader(start.uploader)
        if start.upload_name and not is_valid_upload_name(start.upload_name):
            raise BadRequest("upload_name must be 1-255 characters without control characters")
        declared = normalize_content_type(start.content_type)
        if start.media_id:
            await self._check_reservation(start.media_id, start.uploader)
        writer = self.files.writer(self.max_bytes)
        try:
            async for chunk in chunks:
                await writer.write(chunk)
            stored = await writer.commit()
        except TooLarge:
            await writer.abort()
            UPLOADS.labels("too_large").inc()
            raise UploadTooLarge(f"Uploads are limited to {self.max_bytes} bytes") from None
        except BaseException:
            await writer.abort()
            raise
        name = start.upload_name or None
        if start.media_id:
            media_id = start.media_id
            filled = await self.storage.fill_reservation(
                media_id, declared, name, stored.size, stored.sha256, stored.head
            )
            if not filled:
                UPLOADS.labels("refused").inc()
                raise CannotOverwrite("Media already uploaded (or the reservation lapsed)")
            if media_id in self._waiting:
                self._waiting[media_id][0].set()
        else:
            media_id = new_media_id()
            await self.storage.insert_uploaded(
                media_id, start.uploader, declared, name, stored.size, stored.sha256, stored.head
            )
        UPLOADS.labels("stored").inc()
        UPLOADED_BYTES.inc(stored.size)
        log.info(
            "media uploaded",
            extra={"media_id": media_id, "size": stored.size, "uploader": start.uploader},
        )
        self.thumbnails.pregenerate(Source(stored.sha256, stored.head))
        return Uploaded(media_id, stored, served_content_type(declared, stored.head))

    async def _check_reservation(self, media_id: str, uploader: str) -> None:
        row = await self.storage.local_media(media_id) if is_valid_media_id(media_id) else None
        if row is None or (not row.uploaded and (row.unused_expires_ts or 0) <= now_ms()):
            raise MediaNotFound(f"No reserved media id {media_id}")
        if row.uploaded:
            raise CannotOverwrite("Media already uploaded")
        if row.uploader != uploader:
            raise UploadForbidden("This media id was reserved by another user")

    async def info(self, media_id: str) -> LocalMediaRow | None:
        if row := self._rows.get(media_id):
            self._rows.move_to_end(media_id)
            return row
        row = await self.storage.local_media(media_id) if is_valid_media_id(media_id) else None
        if row is not None and row.uploaded:
            self._rows[media_id] = row
            if len(self._rows) > ROW_CACHE_SIZE:
                self._rows.popitem(last=False)
        return row

    async def content(self, media_id: str, timeout_ms: int) -> LocalMediaRow:
        """The uploaded media, waiting up to ``timeout_ms`` for a reserved id's content."""
        row = await self.info(media_id)
        if row is None:
            raise MediaNotFound("Media not found")
        if row.uploaded:
            return row
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms(timeout_ms) / 1000
        event, waiters = self._waiting.get(media_id, (asyncio.Event(), 0))
        self._waiting[media_id] = (event, waiters + 1)
        WAITING_FOR_UPLOAD.inc()
        try:
            while loop.time() < deadline:
                await event_set_within(event, min(_POLL_SECONDS, deadline - loop.time()))
                row = await self.storage.local_media(media_id)
                if row is None:
                    raise MediaNotFound("Media not found")
                if row.uploaded:
                    return row
        finally:
            WAITING_FOR_UPLOAD.dec()
            event, waiters = self._waiting[media_id]
            if waiters == 1:
                del self._waiting[media_id]
            else:
                self._waiting[media_id] = (event, waiters - 1)
        raise NotYetUploaded("Content has not yet been uploaded")
