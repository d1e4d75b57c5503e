"""``mxfed.media.v1.Media``: uploads in, content and thumbnails out, all streamed in chunks.

Errors are reported as in every mxfed service (:mod:`mxfed.service_errors`,
see ``protos/mxfed_api/media/v1/media.proto``); a streamed answer reports them
before its first message, so a caller knows the outcome before any byte.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import grpc

from matrix_protocol.media import (
    Disposition,
    ThumbnailMethod,
    ThumbnailSpec,
    content_disposition,
    disposition_for,
    mxc_uri,
    served_content_type,
)
from mxfed.service_errors import (
    BadRequest,
    reports_service_errors,
    reports_stream_errors,
)
from mxfed_api.media.v1 import media_pb2, media_pb2_grpc
from services.media.errors import ContentTooLarge, MediaNotFound, StoredContentDamaged
from services.media.files import CHUNK_BYTES, FileStore
from services.media.local import LocalMedia, UploadStart
from services.media.metrics import SERVED, SERVED_BYTES
from services.media.storage import MediaStorage
from services.media.thumbnails import Answer, Source, Thumbnails

if TYPE_CHECKING:
    from services.media.remote import RemoteMedia

log = logging.getLogger(__name__)

# Requested thumbnail sides beyond this are not sensible (and not cached by size).
MAX_THUMBNAIL_SIDE = 10_000

_METHODS = {
    media_pb2.THUMBNAIL_METHOD_UNSPECIFIED: ThumbnailMethod.SCALE,
    media_pb2.THUMBNAIL_METHOD_SCALE: ThumbnailMethod.SCALE,
    media_pb2.THUMBNAIL_METHOD_CROP: ThumbnailMethod.CROP,
}

Chunks = AsyncIterator[media_pb2.ContentChunk]


class MediaServicer(media_pb2_grpc.MediaServicer):
    def __init__(
        self,
        server_name: str,
        files: FileStore,
        storage: MediaStorage,
        local: LocalMedia,
        remote: Callable[[], RemoteMedia],
        thumbnails: Thumbnails,
    ) -> None:
        self.server_name = server_name
        self.files = files
        self.storage = storage
        self.local = local
        # Built on the first remote request: most of the time a media process
        # serves only local media and need not carry the HTTP client.
        self._remote_factory = remote
        self._remote: RemoteMedia | None = None
        self.thumbnails = thumbnails

    @property
    def remote(self) -> RemoteMedia:
        if self._remote is None:
            self._remote = self._remote_factory()
        return self._remote

    def _is_local(self, server_name: str) -> bool:
        return not server_name or server_name == self.server_name

    # Uploads ---------------------------------------------------------------------------------

    @reports_service_errors
    async def PerformUpload(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[media_pb2.PerformUploadRequest],
        context: grpc.aio.ServicerContext,
    ) -> media_pb2.PerformUploadResponse:
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        if first is None or first.WhichOneof("part") != "start":
            raise BadRequest("The first message of an upload must be `start`")
        start = UploadStart(
            first.start.uploader,
            first.start.content_type,
            first.start.upload_name,
            first.start.media_id,
        )

        async def data() -> AsyncIterator[bytes]:
            async for message in messages:
                if message.WhichOneof("part") != "data":
                    raise BadRequest("Only `data` may follow `start` in an upload")
                yield message.data

        uploaded = await self.local.upload(start, data())
        return media_pb2.PerformUploadResponse(
            mxc_uri=mxc_uri(self.server_name, uploaded.media_id),
            media_id=uploaded.media_id,
            size=uploaded.stored.size,
            sha256=uploaded.stored.sha256,
            content_type=uploaded.content_type,
        )

    @reports_service_errors
    async def PerformCreateMedia(  # noqa: N802
        self, request: media_pb2.PerformCreateMediaRequest, context: grpc.aio.ServicerContext
    ) -> media_pb2.PerformCreateMediaResponse:
        media_id, expires = await self.local.create(request.uploader)
        return media_pb2.PerformCreateMediaResponse(
            mxc_uri=mxc_uri(self.server_name, media_id),
            media_id=media_id,
            unused_expires_at=expires,
        )

    # Reads -------------------------------------------------------------------------------------

    @reports_service_errors
    async def QueryMedia(  # noqa: N802
        self, request: media_pb2.QueryMediaRequest, context: grpc.aio.ServicerContext
    ) -> media_pb2.QueryMediaResponse:
        if self._is_local(request.server_name):
            row = await self.local.info(request.media_id)
            if row is None:
                return media_pb2.QueryMediaResponse(found=False)
            answer = media_pb2.QueryMediaResponse(
                found=True,
                uploaded=row.uploaded,
                uploader=row.uploader,
                created_ts=row.created_ts,
            )
            if row.uploaded:
                _describe(answer, row.content_type, row.head, row.upload_name)
                answer.size, answer.sha256 = row.size or 0, row.content_sha256 or ""
            return answer
        remote = await self.storage.remote_media(request.server_name, request.media_id)
        if remote is None:
            return media_pb2.QueryMediaResponse(found=False)
        answer = media_pb2.QueryMediaResponse(
            found=True,
            uploaded=True,
            remote=True,
            size=remote.size,
            sha256=remote.content_sha256,
            created_ts=remote.fetched_ts,
        )
        _describe(answer, remote.content_type, remote.head, remote.upload_name)
        return answer

    @reports_stream_errors
    async def StreamContent(  # noqa: N802
        self, request: media_pb2.StreamContentRequest, context: grpc.aio.ServicerContext
    ) -> Chunks:
        if self._is_local(request.server_name):
            row = await self.local.content(request.media_id, request.timeout_ms)
            assert row.content_sha256 is not None and row.size is not None
            sha256, size = row.content_sha256, row.size
            content_type, head, name, origin = row.content_type, row.head, row.upload_name, "local"
        else:
            if not request.allow_remote:
                raise MediaNotFound("Media not found (remote media not allowed)")
            remote = await self.remote.media(
                request.server_name, request.media_id, request.timeout_ms
            )
            sha256, size = remote.content_sha256, remote.size
            content_type, head, name = remote.content_type, remote.head, remote.upload_name
            origin = "remote"
        if size > self.local.max_bytes:
            raise ContentTooLarge("Content is too large to serve")
        head_message = media_pb2.ContentHead(
            content_type=served_content_type(content_type, head),
            content_disposition=content_disposition(disposition_for(content_type, head), name),
            size=size,
            upload_name=name or "",
        )
        async for chunk in self._stream(sha256, head_message):
            yield chunk
        SERVED.labels("content", origin).inc()

    @reports_stream_errors
    async def StreamThumbnail(  # noqa: N802
        self, request: media_pb2.StreamThumbnailRequest, context: grpc.aio.ServicerContext
    ) -> Chunks:
        if not (
            0 < request.width <= MAX_THUMBNAIL_SIDE and 0 < request.height <= MAX_THUMBNAIL_SIDE
        ):
            raise BadRequest(
                f"width and height must be between 1 and {MAX_THUMBNAIL_SIDE}", "M_UNKNOWN"
            )
        method = _METHODS.get(request.method)
        if method is None:
            raise BadRequest("method must be crop or scale")
        spec = ThumbnailSpec(request.width, request.height, method)
        if self._is_local(request.server_name):
            row = await self.local.content(request.media_id, request.timeout_ms)
            assert row.content_sha256 is not None and row.size is not None
            answer = await self.thumbnails.answer(
                Source(row.content_sha256, row.head), row.size, spec, request.animated
            )
            origin = "local"
        else:
            if not request.allow_remote:
                raise MediaNotFound("Media not found (remote media not allowed)")
            remote = await self.remote.thumbnail(
                request.server_name, request.media_id, spec, request.animated, request.timeout_ms
            )
            answer = Answer(remote.content_sha256, remote.content_type, remote.size)
            origin = "remote"
        # Local thumbnails are images we made or whose bytes we sniffed; a remote's
        # are taken on trust only to be written to a file.
        disposition = Disposition.INLINE if origin == "local" else Disposition.ATTACHMENT
        head_message = media_pb2.ContentHead(
            content_type=answer.content_type,
            content_disposition=content_disposition(disposition, None),
            size=answer.size,
        )
        if answer.data is not None:
            yield media_pb2.ContentChunk(head=head_message, data=answer.data)
            SERVED_BYTES.inc(answer.size)
        else:
            async for chunk in self._stream(answer.sha256, head_message):
                yield chunk
        SERVED.labels("thumbnail", origin).inc()

    async def _stream(self, sha256: str, head: media_pb2.ContentHead) -> Chunks:
        """The head with the first bytes (a small file whole), then the rest of the file."""
        try:
            if head.size <= CHUNK_BYTES:
                data = await self.files.read_small(sha256, CHUNK_BYTES)
                reader = None
            else:
                reader = await self.files.open(sha256)
        except FileNotFoundError:
            log.error("stored content is missing", extra={"sha256": sha256})
            raise MediaNotFound("Media content is missing from the store") from None
        if reader is None:
            sent = len(data)
            yield media_pb2.ContentChunk(head=head, data=data)
        else:
            sent = 0
            try:
                chunks = reader.chunks()
                first = await anext(chunks, b"")
                sent += len(first)
                yield media_pb2.ContentChunk(head=head, data=first)
                async for data in chunks:
                    sent += len(data)
                    yield media_pb2.ContentChunk(data=data)
            finally:
                await reader.close()
        SERVED_BYTES.inc(sent)
        if sent != head.size:
            log.error("stored content changed size", extra={"sha256": sha256, "sent": sent})
            raise StoredContentDamaged("Stored content does not have the expected size")


def _describe(
    answer: media_pb2.QueryMediaResponse, content_type: str | None, head: bytes, name: str | None
) -> None:
    answer.content_type = served_content_type(content_type, head)
    answer.content_disposition = content_disposition(disposition_for(content_type, head), name)
    answer.upload_name = name or ""
