"""Remote media for local actors: a whole running mxfed fetches from a scripted remote server.

The remote (a FakeHomeserver with media routes) answers each media id the way
a test scripted it: a normal two-part answer, a ``Location`` part, 404
``M_UNRECOGNIZED`` (then the deprecated endpoint), slowly, too large, broken.
It records every request, so the tests can count outbound requests and check
their X-Matrix signature.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from matrix_protocol.multipart import encode_content_head, encode_tail, multipart_content_type
from matrix_protocol.xmatrix import parse_xmatrix_header, verify_request
from mxfed.config import load_config
from mxfed.database import create_pool
from mxfed.identity_files import current_signing_key
from mxfed.internal_plane import bind_port, new_server
from mxfed.service_runtime import ServiceContext
from mxfed_api.media.v1 import media_pb2, media_pb2_grpc
from services.media.server import setup as setup_media
from tests.support.databases import create_database, drop_database
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.media import png, read_stream
from tests.support.mxfed_process import MxfedProcess
from tests.support.polling import wait_until
from tests.support.service_errors import errcode as errcode_of

pytestmark = pytest.mark.whole_stack

MAX_BYTES = 256 * 1024
CACHE_BYTES = 600 * 1024
IDLE_TIMEOUT = 1.0

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Recorded:
    path: str
    query: dict[str, str]
    authorization: str | None


@dataclass
class MediaRemote:
    """A remote homeserver whose media answers are scripted per media id."""

    server: FakeHomeserver
    downloads: dict[str, Behaviour] = field(default_factory=dict)
    thumbnails: dict[str, Behaviour] = field(default_factory=dict)
    legacy: dict[str, Behaviour] = field(default_factory=dict)
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.server.server_name

    def mxc(self, media_id: str) -> str:
        return f"mxc://{self.name}/{media_id}"

    def requests_for(self, media_id: str) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/" + media_id)]

    def _record(self, request: web.Request) -> None:
        self.requests.append(
            Recorded(request.path, dict(request.query), request.headers.get("Authorization"))
        )

    async def _dispatch(
        self, table: dict[str, Behaviour], request: web.Request
    ) -> web.StreamResponse:
        self._record(request)
        behaviour = table.get(request.match_info["media_id"])
        if behaviour is None:
            return web.json_response(
                {"errcode": "M_NOT_FOUND", "error": "no such media"}, status=404
            )
        return await behaviour(request)

    async def serve_file(self, request: web.Request) -> web.Response:
        self._record(request)
        data, content_type = self.files[request.match_info["name"]]
        return web.Response(body=data, content_type=content_type)

    def install(self) -> None:
        async def download(request: web.Request) -> web.StreamResponse:
            return await self._dispatch(self.downloads, request)

        async def thumbnail(request: web.Request) -> web.StreamResponse:
            return await self._dispatch(self.thumbnails, request)

        async def legacy(request: web.Request) -> web.StreamResponse:
            return await self._dispatch(self.legacy, request)

        base = "/_matrix/federation/v1/media"
        self.server.route("GET", base + "/download/{media_id}", download)
        self.server.route("GET", base + "/thumbnail/{media_id}", thumbnail)
        self.server.route("GET", "/_matrix/media/v3/download/{server}/{media_id}", legacy)
        self.server.route("GET", "/cdn/{name}", self.serve_file)


def two_parts(
    content: bytes, content_type: str = "application/octet-stream", disposition: str = "attachment"
) -> Behaviour:
    async def answer(request: web.Request) -> web.Response:
        boundary = secrets.token_hex(8)
        body = (
            encode_content_head(boundary, content_type, disposition)
            + content
            + encode_tail(boundary)
        )
        return web.Response(body=body, headers={"Content-Type": multipart_content_type(boundary)})

    return answer


def matrix_error(status: int, errcode: str) -> Behaviour:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"errcode": errcode, "error": errcode}, status=status)

    return answer


def streamed(parts: list[bytes], pause: float, content_length: int | None = None) -> Behaviour:
    """A multipart answer written piece by piece with a pause between pieces (a slow link)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        boundary = "slowboundary"
        response = web.StreamResponse(headers={"Content-Type": multipart_content_type(boundary)})
        if content_length is not None:
            response.content_length = content_length
        await response.prepare(request)
        await response.write(
            encode_content_head(boundary, "application/octet-stream", "attachment")
        )
        for part in parts:
            await asyncio.sleep(pause)
            await response.write(part)
        await response.write(encode_tail(boundary))
        await response.write_eof()
        return response

    return answer


@pytest.fixture(scope="module")
async def remote() -> AsyncIterator[MediaRemote]:
    media_remote = MediaRemote(FakeHomeserver(key_version="media1"))
    media_remote.install()
    await media_remote.server.start()
    yield media_remote
    await media_remote.server.stop()


@pytest.fixture(scope="module")
def mxfed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MxfedProcess]:
    database_url = asyncio.run(create_database("mxfed_remote_media"))
    process = MxfedProcess(
        tmp_path_factory.mktemp("remote-media") / "data",
        database_url,
        extra_config={
            "media_max_bytes": MAX_BYTES,
            "media_remote_cache_max_bytes": CACHE_BYTES,
            "media_remote_idle_timeout": IDLE_TIMEOUT,
        },
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()
        asyncio.run(drop_database(database_url))


@pytest.fixture(scope="module")
async def media(mxfed: MxfedProcess) -> AsyncIterator[media_pb2_grpc.MediaStub]:
    async with mxfed.channel("media") as channel:
        yield media_pb2_grpc.MediaStub(channel)


def content_call(stub: media_pb2_grpc.MediaStub, remote: MediaRemote, media_id: str):  # noqa: ANN201
    return stub.StreamContent(
        media_pb2.StreamContentRequest(
            server_name=remote.name, media_id=media_id, allow_remote=True
        ),
        timeout=60,
    )


async def fetch(stub: media_pb2_grpc.MediaStub, remote: MediaRemote, media_id: str):  # noqa: ANN201
    return await read_stream(content_call(stub, remote, media_id))


async def refused(
    stub: media_pb2_grpc.MediaStub, remote: MediaRemote, media_id: str
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await fetch(stub, remote, media_id)
    return error.value


def new_id() -> str:
    return secrets.token_urlsafe(12)


def gauge(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


async def waiters_in(mxfed: MxfedProcess) -> float:
    """Callers waiting on a remote fetch in the mxfed media process."""
    port = mxfed.metrics_ports["media"]
    return await asyncio.to_thread(gauge, port, "mxfed_media_remote_fetch_waiters")


def waiters_here() -> float:
    """The same, in a media replica running inside this test process."""
    return REGISTRY.get_sample_value("mxfed_media_remote_fetch_waiters") or 0.0


# The happy path ----------------------------------------------------------------------------


async def test_fetches_with_x_matrix_caches_and_serves_from_the_cache(
    mxfed: MxfedProcess, remote: MediaRemote, media: media_pb2_grpc.MediaStub
) -> None:
    media_id, data = new_id(), os.urandom(100_000)
    remote.downloads[media_id] = two_parts(data, "image/png", 'inline; filename="photo.png"')
    head, content = await fetch(media, remote, media_id)
    assert content == data and head.size == len(data)
    assert head.upload_name == "photo.png"
    (request,) = remote.requests_for(media_id)
    assert request.path == f"/_matrix/federation/v1/media/download/{media_id}"
    assert request.query["timeout_ms"] == "20000"
    # Signed by mxfed for the remote, over exactly this request.
    assert request.authorization is not None
    credentials = parse_xmatrix_header(request.authorization)
    assert credentials.origin == mxfed.server_name and credentials.destination == remote.name
    key = current_signing_key(mxfed.data_dir / "signing.key")
    verify_request(
        credentials,
        "GET",
        f"{request.path}?timeout_ms=20000",
        remote.name,
        None,
        key.signing_key.verify_key,
    )
    # Cached: served again without another request.
    assert (await fetch(media, remote, media_id))[1] == data
    assert len(remote.requests_for(media_id)) == 1
    info = await media.QueryMedia(
        media_pb2.QueryMediaRequest(server_name=remote.name, media_id=media_id)
    )
    assert (info.found, info.remote, info.size, info.sha256) == (
        True,
        True,
        len(data),
        hashlib.sha256(data).hexdigest(),
    )


async def test_concurrent_fetches_make_one_request(
    remote: MediaRemote, media: media_pb2_grpc.MediaStub, mxfed: MxfedProcess
) -> None:
    media_id, data = new_id(), os.urandom(50_000)
    release = asyncio.Event()
    answer = two_parts(data)

    async def held(request: web.Request) -> web.Response:
        await release.wait()
        return await answer(request)

    remote.downloads[media_id] = held
    calls = [asyncio.create_task(fetch(media, remote, media_id)) for _ in range(10)]

    async def all_waiting() -> bool:
        return await waiters_in(mxfed) >= 10

    await wait_until(all_waiting, 20, what="ten callers waiting on one fetch")
    release.set()
    for _, content in await asyncio.gather(*calls):
        assert content == data
    assert len(remote.requests_for(media_id)) == 1


async def test_replicas_share_one_fetch(
    remote: MediaRemote, media: media_pb2_grpc.MediaStub, mxfed: MxfedProcess
) -> None:
    """A second media replica (in this process, same database and store): callers on both
    replicas get the media from one outbound request."""
    config = load_config(mxfed.config_path, environ={})
    pool = await create_pool(mxfed.database_url, max_size=5)
    # On this mxfed's internal plane (its CA), as its own replicas are.
    server = new_server(config, "media")
    context = ServiceContext("media", config, pool, server)
    await setup_media(context)
    address = f"127.0.0.1:{bind_port(server, config, 'media', '127.0.0.1:0')}"
    await server.start()
    media_id, data = new_id(), os.urandom(30_000)
    release = asyncio.Event()
    answer = two_parts(data)

    async def held(request: web.Request) -> web.Response:
        await release.wait()
        return await answer(request)

    remote.downloads[media_id] = held
    try:
        async with mxfed.channel("media", address=address) as channel:
            second = media_pb2_grpc.MediaStub(channel)
            calls = [
                asyncio.create_task(fetch(stub, remote, media_id)) for stub in [media, second] * 3
            ]

            async def everyone_waiting() -> bool:
                return (
                    await waiters_in(mxfed) >= 3
                    and waiters_here() >= 3
                    and len(remote.requests_for(media_id)) == 1
                )

            await wait_until(
                everyone_waiting, 20, what="callers on both replicas waiting on one request"
            )
            release.set()
            for _, content in await asyncio.gather(*calls):
                assert content == data
    finally:
        await server.stop(None)
        await context.close()
        await pool.close()
    assert len(remote.requests_for(media_id)) == 1


# Fallback to the deprecated endpoint --------------------------------------------------------


async def test_falls_back_only_on_404_m_unrecognized(
    remote: MediaRemote, media: media_pb2_grpc.MediaStub
) -> None:
    media_id, data = new_id(), b"old server content"
    remote.downloads[media_id] = matrix_error(404, "M_UNRECOGNIZED")

    async def legacy(request: web.Request) -> web.Response:
        return web.Response(
            body=data,
            content_type="text/plain",
            headers={"Content-Disposition": "attachment; filename=old.txt"},
        )

    remote.legacy[media_id] = legacy
    head, content = await fetch(media, remote, media_id)
    assert content == data and head.upload_name == "old.txt"
    first, second = remote.requests_for(media_id)
    assert first.path.startswith("/_matrix/federation/v1/media/download/")
    assert second.path == f"/_matrix/media/v3/download/{remote.name}/{media_id}"
    assert second.query["allow_remote"] == "false"
    assert second.authorization is None

    for status, errcode, code, expected in [
        (404, "M_NOT_FOUND", grpc.StatusCode.NOT_FOUND, "M_NOT_FOUND"),
        (504, "M_NOT_YET_UPLOADED", grpc.StatusCode.NOT_FOUND, "M_NOT_YET_UPLOADED"),
        (429, "M_LIMIT_EXCEEDED", grpc.StatusCode.RESOURCE_EXHAUSTED, "M_LIMIT_EXCEEDED"),
        (502, "M_TOO_LARGE", grpc.StatusCode.FAILED_PRECONDITION, "M_TOO_LARGE"),
        (405, "M_UNRECOGNIZED", grpc.StatusCode.ABORTED, "M_UNKNOWN"),
    ]:
        other = new_id()
        remote.downloads[other] = matrix_error(status, errcode)
        remote.legacy[other] = legacy
        error = await refused(media, remote, other)
        assert (error.code(), errcode_of(error)) == (code, expected)
        assert len(remote.requests_for(other)) == 1, "no fallback but on 404 M_UNRECOGNIZED"


# Location parts ---------------------------------------------------------------------------------


async def test_follows_a_location_part_unsigned(
    remote: MediaRemote, media: media_pb2_grpc.MediaStub
) -> None:
    media_id, data = new_id(), os.urandom(20_000)
    blob = f"blob-{media_id}"
    remote.files[blob] = (data, "application/pdf")

    async def redirect(request: web.Request) -> web.Response:
        boundary = secrets.token_hex(8)
        location = f"https://{remote.name}/cdn/{blob}"
        body = (
            f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n"
            f"--{boundary}\r\nLocation: {location}\r\n\r\n\r\n--{boundary}--\r\n"
        ).encode()
        return web.Response(body=body, headers={"Content-Type": multipart_content_type(boundary)})

    remote.downloads[media_id] = redirect
    head, content = await fetch(media, remote, media_id)
    assert content == data and head.content_type == "application/pdf"
    (cdn,) = remote.requests_for(blob)
    assert cdn.authorization is None  # a plain URL, not a federation request


async def test_a_location_in_a_blocked_range_is_not_fetched(
    remote: MediaRemote, media: media_pb2_grpc.MediaStub
) -> None:
    for location in (
        "https://10.20.30.40/secret",
        "http://127.0.0.1:1/plain",
        "file:///etc/passwd",
    ):
        media_id = new_id()

        async def redirect(request: web.Request, location: str = location) -> web.Response:
            boundary = "b"
            body = (
                b"--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b\r\nLocation: "
                + location.encode()
                + b"\r\n\r\n\r\n--b--\r\n"
            )
            return web.Response(
                body=body, headers={"Content-Type": multipart_content_type(boundary)}
            )

        remote.downloads[media_id] = redirect
        error = await refused(media, remote, media_id)
        assert error.code() == grpc.StatusCode.ABORTED, location
        assert "refus" in (error.details() or "") or "only https" in (error.details() or "")


# Slow, large and broken remotes --------------------------------------------------------------


async def test_a_remote_that_stalls_fails_and_nothing_is_cached(
    remote: MediaRemote, media: media_pb2_grpc.MediaStub
) -> None:
    media_id = new_id()
    remote.downloads[media_id] = streamed([b"a" * 1000, b"b" * 1000], pause=IDLE_TIMEOUT * 3)
    error = await refused(media, remote, media_id)
    assert error.code() == grpc.StatusCode.ABORTED and "sent nothing" in (error.details() or "")
    info = await media.QueryMedia(
        media_pb2.QueryMediaRequest(server_name=remote.name, media_id=media_id)
    )
    assert not info.found
    # A slow but steady remote (each piece within the idle timeout) is fine.
    remote.downloads[media_id] = streamed([b"x" * 10_000] * 6, pause=IDLE_TIMEOUT / 4)
    _, content = await fetch(media, remote, media_id)
    assert content == b"x" * 60_000


async def test_remote_content_over_the_limit_is_refused(
    remote: MediaRemote, media: media_pb2_grpc.MediaStub, mxfed: MxfedProcess
) -> None:
    declared = new_id()
    remote.downloads[declared] = streamed([b"y" * 1000], pause=0, content_length=10 * MAX_BYTES)
    chunked = new_id()
    remote.downloads[chunked] = streamed([b"z" * 64 * 1024] * 5, pause=0)
    for media_id in (declared, chunked):
        error = await refused(media, remote, media_id)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert errcode_of(error) == "M_TOO_LARGE"
    assert not list((mxfed.data_dir / "media" / "tmp").iterdir())


async def test_malformed_answers_are_refused(
    remote: MediaRemote, media: media_pb2_grpc.MediaStub
) -> None:
    async def not_multipart(request: web.Request) -> web.Response:
        return web.Response(body=b"raw bytes", content_type="application/octet-stream")

    async def truncated(request: web.Request) -> web.Response:
        body = encode_content_head("b", "text/plain", "inline") + b"no close delimiter"
        return web.Response(body=body, headers={"Content-Type": multipart_content_type("b")})

    for behaviour in (not_multipart, truncated):
        media_id = new_id()
        remote.downloads[media_id] = behaviour
        error = await refused(media, remote, media_id)
        assert error.code() == grpc.StatusCode.ABORTED and "malformed" in (error.details() or "")


async def test_unreachable_servers_and_bad_names(media: media_pb2_grpc.MediaStub) -> None:
    call = media.StreamContent(
        media_pb2.StreamContentRequest(
            server_name="10.0.0.1:8448", media_id="abc", allow_remote=True
        ),
        timeout=30,
    )
    with pytest.raises(grpc.aio.AioRpcError) as blocked:
        await read_stream(call)
    assert blocked.value.code() == grpc.StatusCode.ABORTED
    for server_name, media_id in (("bad name", "abc"), ("example.org", "../etc")):
        call = media.StreamContent(
            media_pb2.StreamContentRequest(
                server_name=server_name, media_id=media_id, allow_remote=True
            ),
            timeout=30,
        )
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await read_stream(call)
        assert bad.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)


# Thumbnails, the CLI, the cache bound ---------------------------------------------------------


async def test_remote_thumbnails_are_fetched_with_their_parameters_and_cached(
    remote: MediaRemote, media: media_pb2_grpc.MediaStub
) -> None:
    media_id, thumb = new_id(), png(32, 32)
    remote.thumbnails[media_id] = two_parts(thumb, "image/png", "inline")

    def call() -> object:
        return media.StreamThumbnail(
            media_pb2.StreamThumbnailRequest(
                server_name=remote.name,
                media_id=media_id,
                width=32,
                height=32,
                method=media_pb2.THUMBNAIL_METHOD_CROP,
                allow_remote=True,
            ),
            timeout=30,
        )

    head, content = await read_stream(call())
    assert content == thumb and head.content_type == "image/png"
    head, content = await read_stream(call())
    assert content == thumb
    (request,) = remote.requests_for(media_id)
    assert request.path == f"/_matrix/federation/v1/media/thumbnail/{media_id}"
    assert {k: request.query[k] for k in ("width", "height", "method", "animated")} == {
        "width": "32",
        "height": "32",
        "method": "crop",
        "animated": "false",
    }


def cli(mxfed: MxfedProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mxfed.cli", "--config", str(mxfed.config_path), "media", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_cli_downloads_remote_media_to_a_file(
    remote: MediaRemote, mxfed: MxfedProcess, tmp_path: Path
) -> None:
    media_id, data = new_id(), os.urandom(70_000)
    remote.downloads[media_id] = two_parts(data, "application/zip", "attachment; filename=a.zip")
    target = tmp_path / "out.bin"
    done = await asyncio.to_thread(cli, mxfed, "download", remote.mxc(media_id), "-o", str(target))
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == data
    info = await asyncio.to_thread(cli, mxfed, "info", remote.mxc(media_id), "--json")
    assert '"remote": true' in info.stdout and '"upload_name": "a.zip"' in info.stdout
    missing = await asyncio.to_thread(
        cli, mxfed, "download", remote.mxc(new_id()), "-o", str(target)
    )
    assert missing.returncode == 1 and "M_NOT_FOUND" in missing.stderr
    assert target.read_bytes() == data  # a failed download leaves the old file alone
    bad = await asyncio.to_thread(cli, mxfed, "download", "mxc://x/../../etc")
    assert bad.returncode == 1 and "invalid" in bad.stderr


async def test_the_cache_is_bounded_least_recently_used_first(
    remote: MediaRemote, media: media_pb2_grpc.MediaStub, mxfed: MxfedProcess
) -> None:
    ids = [new_id() for _ in range(3)]
    blobs = {media_id: os.urandom(250 * 1024) for media_id in ids}
    for media_id in ids:
        remote.downloads[media_id] = two_parts(blobs[media_id])
        assert (await fetch(media, remote, media_id))[1] == blobs[media_id]
    found = {}
    for media_id in ids:
        info = await media.QueryMedia(
            media_pb2.QueryMediaRequest(server_name=remote.name, media_id=media_id)
        )
        found[media_id] = info.found
    assert found == {ids[0]: False, ids[1]: True, ids[2]: True}
    store = mxfed.data_dir / "media" / "content"
    digest = hashlib.sha256(blobs[ids[0]]).hexdigest()
    assert not (store / digest[:2] / digest[2:4] / digest).exists()
    # Evicted media is fetched again when asked for.
    assert (await fetch(media, remote, ids[0]))[1] == blobs[ids[0]]
    assert len(remote.requests_for(ids[0])) == 2
