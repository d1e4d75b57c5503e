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

from matrix_protocol.media import filename_from_disposition, is_valid_upload_name, parse_mxc_uri
from mxfed.client import Client
from mxfed.commands.client_commands import CommandError, with_client
from mxfed.commands.common import add_json_flag, emit
from mxfed.config import Config
from mxfed_api.media.v1 import media_pb2

CHUNK_BYTES = 256 * 1024
CALL_TIMEOUT = 30.0
# Streams carry whole files (a slow remote may be fetched first): a long deadline.
STREAM_TIMEOUT = 3600.0
_METHODS = ("crop", "scale")


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
    thumbnail.add_argument("--method", choices=_METHODS, default="scale")
    thumbnail.add_argument("--animated", action="store_true", help="keep an animation")
    thumbnail.add_argument("-o", "--output", required=True, help="file to write; - for stdout")
    add_json_flag(thumbnail)
    thumbnail.set_defaults(handler=_run(download_thumbnail))

    info = commands.add_parser("info", help="what we hold about some media")
    info.add_argument("mxc", help="mxc://server/media_id")
    add_json_flag(info)
    info.set_defaults(handler=_run(show_info))


Command = Callable[[argparse.Namespace, Client], Awaitable[None]]


def _run(command: Command) -> Callable[[argparse.Namespace, Config], Awaitable[int]]:
    return with_client(command, extra_errors=(OSError,))


def _mxc(uri: str) -> tuple[str, str]:
    try:
        return parse_mxc_uri(uri)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


# Upload ---------------------------------------------------------------------------------


async def upload_file(args: argparse.Namespace, client: Client) -> None:
    name = args.file.name if args.name is None else args.name
    if name and not is_valid_upload_name(name):
        name = ""
    content_type = args.content_type or mimetypes.guess_type(args.file.name)[0] or ""
    handle = await asyncio.to_thread(open, args.file, "rb")
    try:
        uploaded = await client.upload(
            handle,
            content_type=content_type,
            upload_name=name,
            uploader=args.user,
            media_id=args.media_id,
        )
    finally:
        await asyncio.to_thread(handle.close)
    emit(args, {"mxc_uri": uploaded.mxc_uri}, uploaded.mxc_uri)


async def create_media(args: argparse.Namespace, client: Client) -> None:
    mxc_uri, unused_expires_at = await client.create_media(args.user)
    emit(args, {"mxc_uri": mxc_uri, "unused_expires_at": unused_expires_at}, mxc_uri)
    if not args.json:
        print(f"upload before {unused_expires_at} (ms since the epoch)", file=sys.stderr)


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
    head: media_pb2.ContentHead,
    chunks: AsyncIterator[bytes],
    output: str | None,
    fallback_name: str,
) -> None:
    name = output or _safe_file_name(head.content_disposition, fallback_name)
    received = 0
    with _output(name) as handle:
        async for data in chunks:
            received += len(data)
            await asyncio.to_thread(handle.write, data)
        if received != head.size:
            raise CommandError(f"download cut short: {received} of {head.size} bytes")
    if name == "-":
        return
    if args.json:
        emit(args, {"file": name, "bytes": received, "content_type": head.content_type}, "")
    else:
        print(f"{name}: {received} bytes, {head.content_type}", file=sys.stderr)


async def download_media(args: argparse.Namespace, client: Client) -> None:
    _, media_id = _mxc(args.mxc)
    head, chunks = await client.download(
        args.mxc, timeout_ms=args.timeout_ms, deadline=STREAM_TIMEOUT
    )
    await _save(args, head, chunks, args.output, media_id)


async def download_thumbnail(args: argparse.Namespace, client: Client) -> None:
    _, media_id = _mxc(args.mxc)
    head, chunks = await client.download(
        args.mxc,
        thumbnail=(args.width, args.height),
        crop=args.method == "crop",
        animated=args.animated,
        deadline=STREAM_TIMEOUT,
    )
    await _save(args, head, chunks, args.output, f"{media_id}-thumbnail")


async def show_info(args: argparse.Namespace, client: Client) -> None:
    _mxc(args.mxc)
    reply = await client.media_info(args.mxc)
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
