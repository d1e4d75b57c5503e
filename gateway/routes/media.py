"""Authenticated federation media: ``/media/download/{mediaId}`` and ``/media/thumbnail/{mediaId}``.

Spec: https://spec.matrix.org/v1.19/server-server-api/#content-repository.
X-Matrix is required (401 without). The answer is ``multipart/mixed`` with
exactly two parts: ``{}`` as ``application/json`` metadata, then the content
with its ``Content-Type`` and ``Content-Disposition`` (the media service
decides both: the declared type, ``inline`` only where the spec allows it and
the bytes agree). Only our own media is served here.

The content is streamed from the media service's gRPC stream into the HTTP
answer chunk by chunk (uvicorn's flow control holds us back when the peer
reads slowly), with ``Content-Length`` known up front. Errors known before
the first byte are Matrix errors: 404 ``M_NOT_FOUND``, 504
``M_NOT_YET_UPLOADED`` (reserved media still without content after
``timeout_ms``), 502 ``M_TOO_LARGE`` (download) / 413 ``M_TOO_LARGE`` (local
content too large to thumbnail), 400 ``M_UNKNOWN`` (cannot thumbnail, bad
dimensions), 429 ``M_LIMIT_EXCEEDED`` beyond ``media_downloads_per_origin``
concurrent downloads per requesting server. A failure after the first byte
cuts the connection, so a peer never mistakes a truncated file for a whole one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.errors import MatrixError, from_grpc_error
from gateway.xmatrix_auth import require_origin
from matrix_protocol.media import is_valid_media_id
from matrix_protocol.multipart import (
    encode_content_head,
    encode_tail,
    multipart_content_type,
    new_boundary,
)
from mxfed_api.media.v1 import media_pb2, media_pb2_grpc

router = APIRouter()

_V1 = "/_matrix/federation/v1/media"
# A whole download may take long on a slow link; the deadline bounds a stuck one.
STREAM_DEADLINE = 3600.0
MAX_TIMEOUT_MS = 60_000

_METHODS = {"scale": media_pb2.THUMBNAIL_METHOD_SCALE, "crop": media_pb2.THUMBNAIL_METHOD_CROP}


class DownloadSlots:
    """Concurrent media downloads per requesting server (they hold a connection for long)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active: defaultdict[str, int] = defaultdict(int)

    def take(self, origin: str) -> None:
        if self.active[origin] >= self.limit:
            raise MatrixError(
                429,
                "M_LIMIT_EXCEEDED",
                "Too many concurrent media downloads from your server",
                headers={"Retry-After": "1"},
                retry_after_ms=1000,
            )
        self.active[origin] += 1

    def give_back(self, origin: str) -> None:
        self.active[origin] -= 1
        if not self.active[origin]:
            del self.active[origin]


def _slots(request: Request) -> DownloadSlots:
    slots: DownloadSlots = request.app.state.media_download_slots
    return slots


def _stub(request: Request) -> media_pb2_grpc.MediaStub:
    return media_pb2_grpc.MediaStub(request.app.state.services.channel("media"))


def _integer(value: str | None, name: str, *, default: int | None = None) -> int:
    if value is None:
        if default is None:
            raise MatrixError(400, "M_MISSING_PARAM", f"Missing required query parameter {name!r}")
        return default
    try:
        number = int(value)
    except ValueError:
        raise MatrixError(400, "M_INVALID_PARAM", f"{name} must be an integer") from None
    if not -(2**63) <= number < 2**63:
        raise MatrixError(400, "M_INVALID_PARAM", f"{name} is out of range")
    return number


def _timeout_ms(value: str | None) -> int:
    """The wait for content not yet uploaded, capped; 0 (do not wait) goes as 1 ms, since the
    service reads 0 as "the default"."""
    return max(1, min(_integer(value, "timeout_ms", default=20_000), MAX_TIMEOUT_MS))


def _check_media_id(media_id: str) -> None:
    if not is_valid_media_id(media_id):
        raise MatrixError(404, "M_NOT_FOUND", "Media not found")


def media_error(exc: grpc.aio.AioRpcError, too_large_status: int) -> MatrixError:
    error = from_grpc_error(exc)
    status = {
        "M_NOT_YET_UPLOADED": 504,
        "M_TOO_LARGE": too_large_status,
        "M_NOT_FOUND": 404,
        "M_LIMIT_EXCEEDED": 429,
    }.get(error.errcode)
    if status is not None:
        error.status = status
    elif error.errcode == "M_UNKNOWN" and exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
        error.status = 400
    return error


async def _answer(request: Request, origin: str, call: Any, too_large_status: int) -> Response:
    """Read the head before answering, so errors are Matrix errors; then stream the rest."""
    slots = _slots(request)
    slots.take(origin)
    try:
        first = await call.read()
    except grpc.aio.AioRpcError as exc:
        slots.give_back(origin)
        raise media_error(exc, too_large_status) from None
    except BaseException:
        slots.give_back(origin)
        call.cancel()
        raise
    if first is grpc.aio.EOF or not first.HasField("head"):
        slots.give_back(origin)
        call.cancel()
        raise MatrixError(502, "M_UNKNOWN", "The media service sent no content")
    head = first.head
    boundary = new_boundary()
    opening = encode_content_head(
        boundary,
        head.content_type,
        head.content_disposition,
        extra_headers=[("Content-Length", str(head.size))],
    )
    closing = encode_tail(boundary)
    media_type = multipart_content_type(boundary)
    if len(first.data) == head.size:
        # A small file came whole in the first message: one plain answer.
        try:
            end = await call.read()
        except grpc.aio.AioRpcError as exc:
            raise media_error(exc, too_large_status) from None
        finally:
            slots.give_back(origin)
        if end is not grpc.aio.EOF:
            call.cancel()
            raise MatrixError(502, "M_UNKNOWN", "The media service sent more than it announced")
        return Response(opening + first.data + closing, media_type=media_type)

    async def body() -> AsyncIterator[bytes]:
        sent = len(first.data)
        yield opening + first.data
        while (message := await call.read()) is not grpc.aio.EOF:
            sent += len(message.data)
            if sent > head.size:
                raise RuntimeError("the media service sent more than it announced")
            yield message.data
        if sent != head.size:
            raise RuntimeError("the media service sent less than it announced")
        yield closing

    def finished() -> None:
        call.cancel()
        slots.give_back(origin)

    return _StreamedAnswer(
        body(),
        finished,
        media_type=media_type,
        headers={"Content-Length": str(len(opening) + head.size + len(closing))},
    )


class _StreamedAnswer(StreamingResponse):
    """A streamed answer that calls ``finished`` once it is over, however it ends (even
    when the peer went away before the first byte, so the body never started)."""

    def __init__(
        self, body: AsyncIterator[bytes], finished: Callable[[], None], **options: Any
    ) -> None:
        super().__init__(body, **options)
        self._finished = finished

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._finished()


# :path, so an id with an encoded slash is "no such media", not "no such endpoint".
@router.get(_V1 + "/download/{media_id:path}")
async def download(
    media_id: str,
    request: Request,
    timeout_ms: str | None = None,
    origin: str = Depends(require_origin),
) -> Response:
    _check_media_id(media_id)
    call = _stub(request).StreamContent(
        media_pb2.StreamContentRequest(
            server_name=request.app.state.config.server_name,
            media_id=media_id,
            timeout_ms=_timeout_ms(timeout_ms),
        ),
        timeout=STREAM_DEADLINE,
    )
    return await _answer(request, origin, call, too_large_status=502)


@router.get(_V1 + "/thumbnail/{media_id:path}")
async def thumbnail(
    media_id: str,
    request: Request,
    width: str | None = None,
    height: str | None = None,
    method: str | None = None,
    animated: str | None = None,
    timeout_ms: str | None = None,
    origin: str = Depends(require_origin),
) -> Response:
    _check_media_id(media_id)
    sides = (_integer(width, "width"), _integer(height, "height"))
    if not all(0 < side < 2**31 for side in sides):
        raise MatrixError(400, "M_UNKNOWN", "width and height must be positive")
    thumbnail_method = _METHODS.get(method or "scale")
    if thumbnail_method is None:
        raise MatrixError(400, "M_INVALID_PARAM", "method must be crop or scale")
    if animated not in (None, "true", "false"):
        raise MatrixError(400, "M_INVALID_PARAM", "animated must be true or false")
    call = _stub(request).StreamThumbnail(
        media_pb2.StreamThumbnailRequest(
            server_name=request.app.state.config.server_name,
            media_id=media_id,
            width=sides[0],
            height=sides[1],
            method=thumbnail_method,
            animated=animated == "true",
            timeout_ms=_timeout_ms(timeout_ms),
        ),
        timeout=STREAM_DEADLINE,
    )
    return await _answer(request, origin, call, too_large_status=413)
