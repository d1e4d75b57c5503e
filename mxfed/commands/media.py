"""Media from the command line, over the media service's gRPC API.

``mxfed media upload FILE [--user USER]``   store a file; prints its ``mxc://`` URI
``mxfed media create [--user USER]``        reserve an ``mxc://`` URI to upload to later
                                            (``upload --media-id``)
``mxfed media download MXC [-o FILE]``      our media, or another server's (fetched over
                                            federation and cached); ``-o -`` writes to stdout
``mxfed media thumbnail MXC -W W -H H``     a thumbnail (``--method crop|scale``, ``--animated``)
``mxfed media info MXC``                    what we hold about it (``--json``)

Files move in chunks both ways, never whole in memory. Errors the service
reports print as ``M_ERRCODE: message`` on stderr and the command exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import mimetypes
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import grpc

from matrix_protocol.media import filename_from_disposition, is_valid_upload_name, parse_mxc_uri
from mxfed.client import Client
from mxfed.commands.common import add_json_flag, emit, rpc_error_line
from mxfed.config import Config
from mxfed.internal_plane import client_address
from mxfed_api.media.v1 import media_pb2, media_pb2_grpc

CHUNK_BYTES = 256 * 1024
CALL_TIMEOUT = 30.0
# Streams carry whole files (a slow remote may be fetched first): a long deadline.
STREAM_TIMEOUT = 3600.0
_METHODS = {"scale": media_pb2.THUMBNAIL_METHOD_SCALE, "crop": media_pb2.THUMBNAIL_METHOD_CROP}


class CommandError(Exception):
    """Printed as-is on stderr; the command exits 1."""


def register(subparsers: argparse._SubParsersAction) -> None:
    media = subparsers.add_parser("media", help="upload, download and inspect media")
    commands = media.add_subparsers(dest="media_command", required=True)

    upload = commands.add_parser("upload", help="store a file; prints its mxc:// URI")
    upload.add_argument("file", type=Path)
    upload.add_argument("--user", default="", help="the local user uploading it")
    upload.add_argument("--content-type", default="", help="default: guessed from the name")
    upload.add_argument("--name", default=None, help="file name to serve (default: FILE's)")
    upload.add_argument("--media-id", default="", help="a media id reserved with `media create`")
    add_json_flag(upload)
    upload.set_defaults(handler=_run(upload_file))

    create = commands.add_parser("create", help="reserve an mxc:// URI to upload to later")
    create.add_argument("--user", default="", help="the local user who will upload")
    add_json_flag(create)
    create.set_defaults(handler=_run(create_media))

    download = commands.add_parser("download", help="download media (ours or a remote's)")
    download.add_argument("mxc", help="mxc://server/media_id")
    download.add_argument("-o", "--output", help="file to write; - for stdout (default: its name)")
    download.add_argument("--timeout-ms", type=int, default=0, help="wait for a pending upload")
    add_json_flag(download)
    download.set_defaults(handler=_run(download_media))

    thumbnail = commands.add_parser("thumbnail", help="download a thumbnail of media")
    thumbnail.add_argument("mxc", help="mxc://server/media_id")
    thumbnail.add_argument("-W", "--width", type=int, required=True)
    thumbnail.add_argument("-H", "--height", type=int, required=True)
    thumbnail.add_argument("--method", choices=sorted(_METHODS), default="scale")
    thumbnail.add_argument("--animated", action="store_true", help="keep an animation")
    thumbnail.add_argument("-o", "--output", required=True, help="file to write; - for stdout")
    add_json_flag(thumbnail)
    thumbnail.set_defaults(handler=_run(download_thumbnail))

    info = commands.add_parser("info", help="what we hold about some media")
    info.add_argument("mxc", help="mxc://server/media_id")
    add_json_flag(info)
    info.set_defaults(handler=_run(show_info))


Command = Callable[[argparse.Namespace, Config, media_pb2_grpc.MediaStub], Awaitable[None]]


def _run(command: Command) -> Callable[[argparse.Namespace, Config], Awaitable[int]]:
    async def handler(args: argparse.Namespace, config: Config) -> int:
        address = client_address(config.service_address("media"))
        async with Client(config) as client:
            try:
                await command(args, config, client.stub(media_pb2_grpc.MediaStub))
            except grpc.aio.AioRpcError as exc:
                print(rpc_error_line(exc, config, "media", address), file=sys.stderr)
                return 1
            except (CommandError, OSError) as exc:
                print(str(exc), file=sys.stderr)
                return 1
        return 0

    return handler


def _mxc(uri: str) -> tuple[str, str]:
    try:
        return parse_mxc_uri(uri)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


# Upload ---------------------------------------------------------------------------------


async def _file_chunks(handle: BinaryIO) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
        yield chunk


async def upload_file(
    args: argparse.Namespace, config: Config, stub: media_pb2_grpc.MediaStub
) -> None:
    name = args.file.name if args.name is None else args.name
    if name and not is_valid_upload_name(name):
        name = ""
    content_type = args.content_type or mimetypes.guess_type(args.file.name)[0] or ""
    handle = await asyncio.to_thread(open, args.file, "rb")
    try:

        async def requests() -> AsyncIterator[media_pb2.PerformUploadRequest]:
            yield media_pb2.PerformUploadRequest(
                start=media_pb2.UploadStart(
                    uploader=args.user,
                    content_type=content_type,
                    upload_name=name,
                    media_id=args.media_id,
                )
            )
            async for chunk in _file_chunks(handle):
                yield media_pb2.PerformUploadRequest(data=chunk)

        reply = await stub.PerformUpload(requests(), timeout=STREAM_TIMEOUT)
    finally:
        await asyncio.to_thread(handle.close)
    emit(args, {"mxc_uri": reply.mxc_uri}, reply.mxc_uri)


async def create_media(
    args: argparse.Namespace, config: Config, stub: media_pb2_grpc.MediaStub
) -> None:
    reply = await stub.PerformCreateMedia(
        media_pb2.PerformCreateMediaRequest(uploader=args.user), timeout=CALL_TIMEOUT
    )
    emit(
        args,
        {"mxc_uri": reply.mxc_uri, "unused_expires_at": reply.unused_expires_at},
        reply.mxc_uri,
    )
    if not args.json:
        print(f"upload before {reply.unused_expires_at} (ms since the epoch)", file=sys.stderr)


# Download -------------------------------------------------------------------------------


@contextlib.contextmanager
def _output(path: str) -> Iterator[BinaryIO]:
    """stdout, or a temporary file next to ``path`` renamed into place when complete."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    partial = Path(f"{path}.part")
    handle = open(partial, "wb")  # noqa: SIM115 - closed below
    try:
        yield handle
    except BaseException:
        handle.close()
        partial.unlink(missing_ok=True)
        raise
    handle.close()
    os.replace(partial, path)


def _safe_file_name(disposition: str, fallback: str) -> str:
    """The served file name, as a plain name in the current directory (never a path)."""
    name = os.path.basename(filename_from_disposition(disposition) or "")
    return fallback if not name or name.startswith(".") else name


async def _save(
    args: argparse.Namespace,
    call: grpc.aio.UnaryStreamCall,
    output: str | None,
    fallback_name: str,
) -> None:
    first = await call.read()
    if first is grpc.aio.EOF or not first.HasField("head"):
        raise CommandError("the media service sent no content")
    head = first.head
    name = output or _safe_file_name(head.content_disposition, fallback_name)
    received = len(first.data)
    with _output(name) as handle:
        await asyncio.to_thread(handle.write, first.data)
        while (message := await call.read()) is not grpc.aio.EOF:
            received += len(message.data)
            await asyncio.to_thread(handle.write, message.data)
        if received != head.size:
            raise CommandError(f"download cut short: {received} of {head.size} bytes")
    if name == "-":
        return
    if args.json:
        emit(args, {"file": name, "bytes": received, "content_type": head.content_type}, "")
    else:
        print(f"{name}: {received} bytes, {head.content_type}", file=sys.stderr)


async def download_media(
    args: argparse.Namespace, config: Config, stub: media_pb2_grpc.MediaStub
) -> None:
    server_name, media_id = _mxc(args.mxc)
    call = stub.StreamContent(
        media_pb2.StreamContentRequest(
            server_name=server_name,
            media_id=media_id,
            timeout_ms=args.timeout_ms,
            allow_remote=True,
        ),
        timeout=STREAM_TIMEOUT,
    )
    await _save(args, call, args.output, media_id)


async def download_thumbnail(
    args: argparse.Namespace, config: Config, stub: media_pb2_grpc.MediaStub
) -> None:
    server_name, media_id = _mxc(args.mxc)
    call = stub.StreamThumbnail(
        media_pb2.StreamThumbnailRequest(
            server_name=server_name,
            media_id=media_id,
            width=args.width,
            height=args.height,
            method=_METHODS[args.method],
            animated=args.animated,
            allow_remote=True,
        ),
        timeout=STREAM_TIMEOUT,
    )
    await _save(args, call, args.output, f"{media_id}-thumbnail")


async def show_info(
    args: argparse.Namespace, config: Config, stub: media_pb2_grpc.MediaStub
) -> None:
    server_name, media_id = _mxc(args.mxc)
    reply = await stub.QueryMedia(
        media_pb2.QueryMediaRequest(server_name=server_name, media_id=media_id),
        timeout=CALL_TIMEOUT,
    )
    if not reply.found:
        raise CommandError(f"M_NOT_FOUND: {args.mxc} is not known here")
    fields = {
        "mxc_uri": args.mxc,
        "uploaded": reply.uploaded,
        "remote": reply.remote,
        "content_type": reply.content_type,
        "content_disposition": reply.content_disposition,
        "upload_name": reply.upload_name,
        "size": reply.size,
        "sha256": reply.sha256,
        "uploader": reply.uploader,
        "created_ts": reply.created_ts,
    }
    if args.json:
        print(json.dumps(fields))
        return
    for key, value in fields.items():
        print(f"{key}: {value}")
