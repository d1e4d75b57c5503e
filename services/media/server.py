"""Builds the media service inside the common service runtime."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import asyncpg

from mxfed.service_runtime import ServiceContext
from mxfed_api.media.v1 import media_pb2_grpc
from services.media.files import FileStore
from services.media.local import LocalMedia
from services.media.servicer import MediaServicer
from services.media.storage import MediaStorage
from services.media.thumbnails import Thumbnails

if TYPE_CHECKING:
    from services.media.remote import RemoteMedia

log = logging.getLogger(__name__)

# Lapsed reservations (async uploads never completed) are dropped this often.
RESERVATION_SWEEP_SECONDS = 3600.0


async def setup(context: ServiceContext) -> None:
    """Register the media servicer on ``context.server``."""
    config = context.config
    files = FileStore(config.media_store)
    await asyncio.to_thread(files.prepare)
    storage = MediaStorage(context.pool)
    thumbnails = Thumbnails(storage, files, config.media_thumbnail_max_pixels)
    context.on_stop(thumbnails.close)
    local = LocalMedia(config.server_name, storage, files, thumbnails, config.media_max_bytes)

    def remote() -> RemoteMedia:
        # Imported here: the outbound HTTP client costs ~10 MB a process needs only
        # once it fetches remote media.
        from mxfed.federation_client.from_config import federation_client_from_config
        from services.media.remote import RemoteMedia

        client = federation_client_from_config(config)
        context.on_stop(client.close)
        return RemoteMedia(
            storage,
            files,
            client,
            max_bytes=config.media_max_bytes,
            cache_max_bytes=config.media_remote_cache_max_bytes,
            idle_timeout=config.media_remote_idle_timeout,
        )

    media_pb2_grpc.add_MediaServicer_to_server(
        MediaServicer(config.server_name, files, storage, local, remote, thumbnails),
        context.server,
    )
    context.spawn(lambda: _sweep_reservations(storage), "media-reservation-sweep")
    log.info("media store", extra={"path": str(config.media_store)})


async def _sweep_reservations(storage: MediaStorage) -> None:
    while True:
        try:
            dropped = await storage.drop_lapsed_reservations()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
            log.warning("sweeping media reservations failed", extra={"error": str(error)})
        else:
            if dropped:
                log.info("lapsed media reservations dropped", extra={"count": dropped})
        await asyncio.sleep(RESERVATION_SWEEP_SECONDS)
