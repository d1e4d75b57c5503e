"""Helpers for media tests: uploads over gRPC, test images, reading the multipart answer."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from PIL import Image

from matrix_protocol.multipart import MediaResponseReader, boundary_from_content_type
from mxfed_api.media.v1 import media_pb2, media_pb2_grpc

CHUNK = 64 * 1024


async def upload(
    stub: media_pb2_grpc.MediaStub,
    data: bytes,
    content_type: str = "",
    name: str = "",
    *,
    uploader: str = "",
    media_id: str = "",
) -> media_pb2.PerformUploadResponse:
    async def requests() -> AsyncIterator[media_pb2.PerformUploadRequest]:
        yield media_pb2.PerformUploadRequest(
            start=media_pb2.UploadStart(
                uploader=uploader, content_type=content_type, upload_name=name, media_id=media_id
            )
        )
        for start in range(0, len(data), CHUNK):
            yield media_pb2.PerformUploadRequest(data=data[start : start + CHUNK])

    return await stub.PerformUpload(requests(), timeout=60)


async def read_stream(call: object) -> tuple[media_pb2.ContentHead, bytes]:
    """A StreamContent / StreamThumbnail answer: its head and the bytes."""
    head = None
    data = bytearray()
    async for message in call:  # type: ignore[attr-defined]
        if message.HasField("head"):
            assert head is None, "one head per stream"
            head = message.head
        data += message.data
    assert head is not None
    return head, bytes(data)


def png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(out, "JPEG")
    return out.getvalue()


def animated_gif(width: int, height: int, frames: int = 4) -> bytes:
    images = [Image.new("RGB", (width, height), (i * 50, 0, 0)) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=80, loop=0)
    return out.getvalue()


def image_of(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@dataclass
class MediaAnswer:
    metadata: dict
    headers: dict[str, str]
    content: bytes


def parse_media_answer(response: httpx.Response) -> MediaAnswer:
    """Our own reader on a whole two-part answer (fails on anything malformed)."""
    assert response.status_code == 200, response.text
    reader = MediaResponseReader(boundary_from_content_type(response.headers["content-type"]))
    content = reader.feed(response.content)
    reader.finish()
    assert reader.metadata is not None and reader.content_headers is not None
    return MediaAnswer(reader.metadata, reader.content_headers, content)
