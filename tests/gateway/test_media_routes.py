"""Federation media over HTTP against a whole running mxfed: ``/media/download`` and
``/media/thumbnail``, signed by a fake remote server, answers read with our own multipart
reader. Uploads go through the media service's gRPC API, as a local actor's would.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest

from gateway.routes.media import media_error
from mxfed_api.media.v1 import media_pb2, media_pb2_grpc
from tests.support.media import (
    animated_gif,
    image_of,
    jpeg,
    parse_media_answer,
    png,
    read_stream,
    upload,
)
from tests.support.scene import Scene, start_scene, stop_scene
from tests.support.service_errors import errcode, typed_rpc_error

pytestmark = pytest.mark.whole_stack

V1 = "/_matrix/federation/v1/media"
MAX_BYTES = 24 * 1024 * 1024
MAX_PIXELS = 4_000_000
DOWNLOADS_PER_ORIGIN = 3


@pytest.fixture(scope="module")
async def scene(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scene]:
    started, database_url = await start_scene(
        tmp_path_factory.mktemp("media_routes"),
        {
            "media_max_bytes": MAX_BYTES,
            "media_thumbnail_max_pixels": MAX_PIXELS,
            "media_downloads_per_origin": DOWNLOADS_PER_ORIGIN,
        },
    )
    yield started
    await stop_scene(started, database_url)


@pytest.fixture(scope="module")
async def media(scene: Scene) -> AsyncIterator[media_pb2_grpc.MediaStub]:
    async with scene.mxfed.channel("media") as channel:
        yield media_pb2_grpc.MediaStub(channel)


async def download(scene: Scene, media_id: str, query: str = "") -> httpx.Response:
    return await scene.get(f"{V1}/download/{media_id}{'?' + query if query else ''}")


async def thumbnail(scene: Scene, media_id: str, query: str) -> httpx.Response:
    return await scene.get(f"{V1}/thumbnail/{media_id}?{query}")


def waiting_for_upload(scene: Scene) -> float:
    """The media process's gauge of downloads waiting for reserved content."""
    port = scene.mxfed.metrics_ports["media"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    match = re.search(r"^mxfed_media_waiting_for_upload (\S+)$", text, re.MULTILINE)
    assert match, "the media process exports mxfed_media_waiting_for_upload"
    return float(match.group(1))


async def wait_until_waiting(scene: Scene, count: int) -> None:
    for _ in range(300):
        if await asyncio.to_thread(waiting_for_upload, scene) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} downloads never started waiting")


# Downloads ---------------------------------------------------------------------------------


async def test_download_answers_two_parts_with_the_content(
    scene: Scene, media: media_pb2_grpc.MediaStub
) -> None:
    data = png(300, 200)
    uploaded = await upload(media, data, "image/png", "cat.png")
    assert uploaded.mxc_uri == f"mxc://{scene.mxfed.server_name}/{uploaded.media_id}"
    assert uploaded.sha256 == hashlib.sha256(data).hexdigest() and uploaded.size == len(data)
    response = await download(scene, uploaded.media_id)
    assert response.headers["content-type"].startswith("multipart/mixed; boundary=")
    assert int(response.headers["content-length"]) == len(response.content)
    answer = parse_media_answer(response)
    assert answer.metadata == {}
    assert answer.content == data
    assert answer.headers["content-type"] == "image/png"
    assert answer.headers["content-disposition"] == "inline; filename=cat.png"


async def test_a_large_file_streams_through_whole(
    scene: Scene, media: media_pb2_grpc.MediaStub
) -> None:
    data = os.urandom(20 * 1024 * 1024)
    uploaded = await upload(media, data, "application/octet-stream")
    answer = parse_media_answer(await download(scene, uploaded.media_id))
    assert hashlib.sha256(answer.content).digest() == hashlib.sha256(data).digest()
    assert answer.headers["content-disposition"] == "attachment"


async def test_download_needs_x_matrix(scene: Scene, media: media_pb2_grpc.MediaStub) -> None:
    uploaded = await upload(media, b"secret", "text/plain")
    url = f"{scene.mxfed.federation_url}{V1}/download/{uploaded.media_id}"
    async with httpx.AsyncClient(verify=False, timeout=10) as client:
        for headers in ({}, {"Authorization": "X-Matrix origin=nope,key=x,sig=y"}):
            response = await client.get(url, headers=headers)
            assert response.status_code in (400, 401), response.text
            assert response.json()["errcode"] == "M_UNAUTHORIZED"
            assert b"secret" not in response.content
        response = await client.get(url)
        assert response.status_code == 401
        thumb = await client.get(f"{scene.mxfed.federation_url}{V1}/thumbnail/x?width=1&height=1")
        assert thumb.status_code == 401


async def test_unknown_media_is_404(scene: Scene) -> None:
    for media_id in ("doesNotExist", "bad.id", "a%2Fb"):
        response = await download(scene, media_id)
        assert (response.status_code, response.json()["errcode"]) == (404, "M_NOT_FOUND")
    response = await thumbnail(scene, "doesNotExist", "width=32&height=32")
    assert (response.status_code, response.json()["errcode"]) == (404, "M_NOT_FOUND")


async def test_declared_types_cannot_smuggle_html(
    scene: Scene, media: media_pb2_grpc.MediaStub
) -> None:
    html = b"<!DOCTYPE html><html><script>alert(document.cookie)</script></html>"
    for declared in ("image/png", "text/plain", "text/html"):
        uploaded = await upload(media, html, declared, "page.html")
        answer = parse_media_answer(await download(scene, uploaded.media_id))
        assert answer.headers["content-disposition"] == "attachment; filename=page.html"
        assert answer.headers["content-type"] == declared
    text = await upload(media, b"plain words\n", "text/plain; charset=utf-8", "notes.txt")
    answer = parse_media_answer(await download(scene, text.media_id))
    assert answer.headers["content-disposition"] == "inline; filename=notes.txt"
    unnamed = await upload(media, png(2, 2), "", "")  # no declared type: sniffed, attachment
    answer = parse_media_answer(await download(scene, unnamed.media_id))
    assert (answer.headers["content-type"], answer.headers["content-disposition"]) == (
        "image/png",
        "attachment",
    )
    odd = await upload(media, b"x", "text/plain", 'na"me ☃.txt')
    answer = parse_media_answer(await download(scene, odd.media_id))
    assert answer.headers["content-disposition"] == (
        "inline; filename*=utf-8''na%22me%20%E2%98%83.txt"
    )


async def test_uploads_over_the_limit_are_refused_and_leave_nothing(
    scene: Scene, media: media_pb2_grpc.MediaStub
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await upload(media, b"z" * (MAX_BYTES + 1), "application/octet-stream")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errcode(refused.value) == "M_TOO_LARGE"
    assert not list((scene.mxfed.data_dir / "media" / "tmp").iterdir())
    exactly = await upload(media, b"z" * MAX_BYTES, "application/octet-stream")
    assert exactly.size == MAX_BYTES


async def test_bad_uploads_are_refused(media: media_pb2_grpc.MediaStub) -> None:
    for kwargs in (
        {"name": "two\nlines"},
        {"uploader": "@someone:elsewhere.example"},
        {"media_id": "neverReserved"},
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await upload(media, b"x", "text/plain", **kwargs)  # type: ignore[arg-type]
        assert refused.value.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
        )


# Media created before its content (async upload) ------------------------------------------------


async def test_pending_media_is_waited_for_then_served(
    scene: Scene, media: media_pb2_grpc.MediaStub
) -> None:
    uploader = f"@bob:{scene.mxfed.server_name}"
    created = await media.PerformCreateMedia(
        media_pb2.PerformCreateMediaRequest(uploader=uploader), timeout=10
    )
    response = await download(scene, created.media_id, "timeout_ms=50")
    assert (response.status_code, response.json()["errcode"]) == (504, "M_NOT_YET_UPLOADED")

    waiting = asyncio.create_task(download(scene, created.media_id, "timeout_ms=30000"))
    await wait_until_waiting(scene, 1)
    with pytest.raises(grpc.aio.AioRpcError) as wrong_user:
        await upload(
            media, b"late", media_id=created.media_id, uploader=f"@eve:{scene.mxfed.server_name}"
        )
    assert wrong_user.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await upload(media, b"late content", "text/plain", media_id=created.media_id, uploader=uploader)
    answer = parse_media_answer(await waiting)
    assert answer.content == b"late content"
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await upload(media, b"other", "text/plain", media_id=created.media_id, uploader=uploader)
    assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_concurrent_downloads_per_server_are_limited(
    scene: Scene, media: media_pb2_grpc.MediaStub
) -> None:
    created = await media.PerformCreateMedia(media_pb2.PerformCreateMediaRequest(), timeout=10)
    held = [
        asyncio.create_task(download(scene, created.media_id, "timeout_ms=30000"))
        for _ in range(DOWNLOADS_PER_ORIGIN)
    ]
    await wait_until_waiting(scene, DOWNLOADS_PER_ORIGIN)
    refused = await download(scene, created.media_id)
    assert (refused.status_code, refused.json()["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    assert refused.headers["retry-after"] == "1"
    await upload(media, b"now here", "text/plain", media_id=created.media_id)
    for response in await asyncio.gather(*held):
        assert parse_media_answer(response).content == b"now here"
    assert (await download(scene, created.media_id)).status_code == 200  # slots given back


async def test_slots_come_back_when_peers_hang_up_mid_download(
    scene: Scene, media: media_pb2_grpc.MediaStub
) -> None:
    data = os.urandom(8 * 1024 * 1024)
    uploaded = await upload(media, data, "application/octet-stream")
    uri = f"{V1}/download/{uploaded.media_id}"
    # More hang-ups than there are slots: one slot lost per hang-up would lock us out.
    for _ in range(DOWNLOADS_PER_ORIGIN + 1):
        headers = {"Authorization": scene.remote.authorization("GET", scene.mxfed.server_name, uri)}
        async with (
            httpx.AsyncClient(verify=False, timeout=30) as client,
            client.stream("GET", scene.mxfed.federation_url + uri, headers=headers) as response,
        ):
            assert response.status_code == 200
            async for _ in response.aiter_raw():
                break  # a first piece, then the connection goes away
    for _ in range(400):  # the gateway notices each hang-up soon after it happens
        response = await download(scene, uploaded.media_id)
        if response.status_code != 429:
            break
        await asyncio.sleep(0.05)
    assert parse_media_answer(response).content == data


def test_service_errors_become_the_spec_statuses() -> None:
    def error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
        errcode, typed, message = details.partition(": ")
        if typed:
            return typed_rpc_error(code, errcode, message)
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)

    cases = [
        (grpc.StatusCode.NOT_FOUND, "M_NOT_YET_UPLOADED: later", 502, (504, "M_NOT_YET_UPLOADED")),
        (grpc.StatusCode.NOT_FOUND, "M_NOT_FOUND: no", 502, (404, "M_NOT_FOUND")),
        (grpc.StatusCode.FAILED_PRECONDITION, "M_TOO_LARGE: big", 502, (502, "M_TOO_LARGE")),
        (grpc.StatusCode.FAILED_PRECONDITION, "M_TOO_LARGE: big", 413, (413, "M_TOO_LARGE")),
        (grpc.StatusCode.FAILED_PRECONDITION, "M_UNKNOWN: cannot", 413, (400, "M_UNKNOWN")),
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "M_LIMIT_EXCEEDED: slow",
            413,
            (429, "M_LIMIT_EXCEEDED"),
        ),
        (grpc.StatusCode.UNAVAILABLE, "connection refused", 502, (502, "M_UNKNOWN")),
    ]
    for code, details, too_large, expected in cases:
        matrix_error = media_error(error(code, details), too_large)
        assert (matrix_error.status, matrix_error.errcode) == expected, details


async def test_query_parameters_are_checked(scene: Scene, media: media_pb2_grpc.MediaStub) -> None:
    uploaded = await upload(media, png(64, 64), "image/png")
    cases = {
        "height=32": (400, "M_MISSING_PARAM"),
        "width=32": (400, "M_MISSING_PARAM"),
        "width=x&height=32": (400, "M_INVALID_PARAM"),
        "width=0&height=32": (400, "M_UNKNOWN"),
        "width=-5&height=32": (400, "M_UNKNOWN"),
        "width=32&height=32&method=stretch": (400, "M_INVALID_PARAM"),
        "width=32&height=32&animated=maybe": (400, "M_INVALID_PARAM"),
        "width=99999999999999999999&height=32": (400, "M_INVALID_PARAM"),
    }
    for query, expected in cases.items():
        response = await thumbnail(scene, uploaded.media_id, query)
        assert (response.status_code, response.json()["errcode"]) == expected, query
    response = await download(scene, uploaded.media_id, "timeout_ms=soon")
    assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM")


# Thumbnails --------------------------------------------------------------------------------------


async def test_thumbnails_scale_and_crop(scene: Scene, media: media_pb2_grpc.MediaStub) -> None:
    uploaded = await upload(media, png(1000, 700), "image/png", "big.png")
    expectations = {
        "width=96&height=96&method=crop": (96, 96),
        "width=32&height=32&method=crop": (32, 32),
        "width=320&height=240&method=scale": (320, 224),
        "width=300&height=200": (320, 224),  # served from the usual 320x240
        "width=100&height=50&method=crop": (100, 50),  # made on demand
        "width=150&height=150&method=scale": (320, 224),  # larger than asked is allowed
        "width=900&height=900&method=scale": (900, 630),  # beyond the usual sizes: made now
    }
    for query, size in expectations.items():
        answer = parse_media_answer(await thumbnail(scene, uploaded.media_id, query))
        assert answer.headers["content-type"] == "image/png", query
        assert answer.headers["content-disposition"] == "inline"
        assert image_of(answer.content).size == size, query
    photo = await upload(media, jpeg(800, 600), "image/jpeg")
    answer = parse_media_answer(
        await thumbnail(scene, photo.media_id, "width=96&height=96&method=crop")
    )
    assert answer.headers["content-type"] == "image/jpeg"
    assert image_of(answer.content).size == (96, 96)


async def test_small_images_are_their_own_thumbnail(
    scene: Scene, media: media_pb2_grpc.MediaStub
) -> None:
    data = png(40, 30)
    uploaded = await upload(media, data, "image/png")
    answer = parse_media_answer(await thumbnail(scene, uploaded.media_id, "width=320&height=240"))
    assert answer.content == data  # never upscaled


async def test_animation_only_when_asked(scene: Scene, media: media_pb2_grpc.MediaStub) -> None:
    uploaded = await upload(media, animated_gif(200, 200), "image/gif")
    still = parse_media_answer(
        await thumbnail(scene, uploaded.media_id, "width=96&height=96&method=crop&animated=false")
    )
    assert getattr(image_of(still.content), "n_frames", 1) == 1
    default = parse_media_answer(await thumbnail(scene, uploaded.media_id, "width=96&height=96"))
    assert getattr(image_of(default.content), "n_frames", 1) == 1
    moving = parse_media_answer(
        await thumbnail(scene, uploaded.media_id, "width=96&height=96&method=crop&animated=true")
    )
    assert moving.headers["content-type"] == "image/webp"
    image = image_of(moving.content)
    assert image.size == (96, 96) and image.n_frames == 4  # type: ignore[attr-defined]
    small = await upload(media, animated_gif(20, 20), "image/gif")
    answer = parse_media_answer(await thumbnail(scene, small.media_id, "width=96&height=96"))
    assert getattr(image_of(answer.content), "n_frames", 1) == 1  # the original would animate


async def test_what_cannot_be_thumbnailed(scene: Scene, media: media_pb2_grpc.MediaStub) -> None:
    text = await upload(media, b"not an image", "text/plain")
    response = await thumbnail(scene, text.media_id, "width=32&height=32")
    assert (response.status_code, response.json()["errcode"]) == (400, "M_UNKNOWN")
    liar = await upload(media, b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png")
    response = await thumbnail(scene, liar.media_id, "width=32&height=32")
    assert (response.status_code, response.json()["errcode"]) == (400, "M_UNKNOWN")
    # More pixels than media_thumbnail_max_pixels: refused before decoding (a bomb).
    bomb = await upload(media, png(2500, 2000), "image/png")
    response = await thumbnail(scene, bomb.media_id, "width=32&height=32&method=crop")
    assert (response.status_code, response.json()["errcode"]) == (413, "M_TOO_LARGE")
    assert (await download(scene, bomb.media_id)).status_code == 200  # the file itself is fine


async def test_thumbnails_are_made_once_and_kept(
    scene: Scene, media: media_pb2_grpc.MediaStub
) -> None:
    seed = secrets.randbelow(200)
    uploaded = await upload(media, png(500, 500, (seed, 1, 2)), "image/png")
    first = parse_media_answer(await thumbnail(scene, uploaded.media_id, "width=50&height=50"))
    second = parse_media_answer(await thumbnail(scene, uploaded.media_id, "width=50&height=50"))
    assert first.content == second.content
    digests = {
        path.name
        for path in Path(scene.mxfed.data_dir / "media" / "content").rglob("*")
        if path.is_file()
    }
    assert hashlib.sha256(first.content).hexdigest() in digests


async def test_grpc_streams_report_errors_before_any_content(
    scene: Scene, media: media_pb2_grpc.MediaStub
) -> None:
    uploaded = await upload(media, b"hello", "text/plain", "hello.txt")
    head, data = await read_stream(
        media.StreamContent(media_pb2.StreamContentRequest(media_id=uploaded.media_id), timeout=10)
    )
    assert (head.size, head.content_disposition, data) == (
        5,
        "inline; filename=hello.txt",
        b"hello",
    )
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await read_stream(
            media.StreamContent(media_pb2.StreamContentRequest(media_id="nope"), timeout=10)
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    info = await media.QueryMedia(
        media_pb2.QueryMediaRequest(media_id=uploaded.media_id), timeout=10
    )
    assert (info.found, info.uploaded, info.size, info.upload_name) == (True, True, 5, "hello.txt")
