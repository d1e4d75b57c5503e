"""The room directory, profiles and devices from the command line, over gRPC.

``mxfed publish ROOM``        list a room in our public room directory
``mxfed unpublish ROOM``      take it out again
``mxfed directory``           our public rooms, or ``--server NAME``'s read over federation
``mxfed profile set USER``    set ``--display-name``/``--avatar-url``/``--field k=JSON``
``mxfed profile get USER``    print a local user's profile
``mxfed devices upload USER DEVICE``  create a device with fresh E2E keys (tests, demos)
``mxfed devices list USER``   a user's device list (ours, or another server's through the cache)

These are top-level commands because ``mxfed room`` belongs to the rooms
commands. A room may be given by ID or alias. Output is human lines, or one
JSON object per line with ``--json``. Service errors print
``M_ERRCODE: message`` on stderr and the command exits 1.
"""

from __future__ import annotations

import argparse
import json
import secrets
from typing import Any

import nacl.public
import nacl.signing

from matrix_protocol.canonical_json import decode_json
from matrix_protocol.encoding import encode_base64
from matrix_protocol.signing import sign_json
from mxfed.client import Client
from mxfed.commands.client_commands import CommandError, with_client
from mxfed.commands.common import add_json_flag


def _run(command: Any) -> Any:
    return with_client(command)


def register(subparsers: argparse._SubParsersAction) -> None:
    publish = subparsers.add_parser("publish", help="list a room in our public room directory")
    publish.add_argument("room", help="room id or alias")
    publish.add_argument("--network", default="", help="appservice network id (default: ours)")
    add_json_flag(publish)
    publish.set_defaults(handler=_run(publish_room))

    unpublish = subparsers.add_parser("unpublish", help="remove a room from our directory")
    unpublish.add_argument("room", help="room id or alias")
    add_json_flag(unpublish)
    unpublish.set_defaults(handler=_run(unpublish_room))

    directory = subparsers.add_parser("directory", help="list public rooms")
    directory.add_argument("--server", default="", help="another server's directory")
    directory.add_argument("--limit", type=int, default=0)
    directory.add_argument("--since", default="", help="next_batch/prev_batch token")
    directory.add_argument("--search", default="", help="generic search term")
    add_json_flag(directory)
    directory.set_defaults(handler=_run(list_directory))

    profile = subparsers.add_parser("profile", help="local users' profiles")
    profile_commands = profile.add_subparsers(dest="profile_command", required=True)
    set_profile = profile_commands.add_parser("set", help="set profile fields")
    set_profile.add_argument("user", help="local user id")
    # --displayname: the old spelling, still accepted.
    set_profile.add_argument("--display-name", "--displayname", dest="displayname")
    set_profile.add_argument("--avatar-url", help="mxc:// URI")
    set_profile.add_argument(
        "--field", action="append", default=[], help="KEY=JSON (null removes; repeatable)"
    )
    set_profile.add_argument("--replace", action="store_true", help="drop fields not given")
    add_json_flag(set_profile)
    set_profile.set_defaults(handler=_run(set_user_profile))
    get_profile = profile_commands.add_parser("get", help="print a profile")
    get_profile.add_argument("user", help="local user id")
    get_profile.add_argument("--field", default="")
    add_json_flag(get_profile)
    get_profile.set_defaults(handler=_run(get_user_profile))

    devices = subparsers.add_parser("devices", help="users' devices and E2E keys")
    device_commands = devices.add_subparsers(dest="devices_command", required=True)
    upload = device_commands.add_parser("upload", help="create a device with fresh E2E keys")
    upload.add_argument("user", help="local user id")
    upload.add_argument("device", help="device id")
    upload.add_argument("--display-name", "--displayname", dest="display_name")
    upload.add_argument("--one-time-keys", type=int, default=5, help="signed_curve25519 keys")
    upload.add_argument("--fallback-key", action="store_true")
    add_json_flag(upload)
    upload.set_defaults(handler=_run(upload_device))
    list_devices = device_commands.add_parser("list", help="a user's device list")
    list_devices.add_argument("user", help="user id (ours or another server's)")
    list_devices.add_argument("--resync", action="store_true", help="refetch a remote list")
    add_json_flag(list_devices)
    list_devices.set_defaults(handler=_run(show_devices))


def _emit(args: argparse.Namespace, value: Any, text: str) -> None:
    print(json.dumps(value, ensure_ascii=False) if args.json else text, flush=True)


async def _room_id(client: Client, room: str) -> str:
    return await client.resolve_room(room)


# Directory ------------------------------------------------------------------------


async def publish_room(args: argparse.Namespace, client: Client) -> None:
    room_id = await _room_id(client, args.room)
    was_published = await client.publish_room(room_id, args.network)
    note = " (already published)" if was_published else ""
    _emit(args, {"room_id": room_id, "published": True}, f"published {room_id}{note}")


async def unpublish_room(args: argparse.Namespace, client: Client) -> None:
    room_id = await _room_id(client, args.room)
    was_published = await client.unpublish_room(room_id)
    note = "" if was_published else " (was not published)"
    _emit(args, {"room_id": room_id, "published": False}, f"unpublished {room_id}{note}")


async def list_directory(args: argparse.Namespace, client: Client) -> None:
    rooms = await client.public_rooms(
        server=args.server, limit=args.limit, since=args.since, search=args.search
    )
    if args.json:
        print(json.dumps(rooms.body, ensure_ascii=False), flush=True)
        return
    for room in rooms.chunk:
        label = room.get("canonical_alias") or room.get("name") or ""
        topic = f" - {room['topic']}" if room.get("topic") else ""
        members = room.get("num_joined_members", 0)
        print(f"{room.get('room_id')}\t{members}\t{label}{topic}", flush=True)
    print(f"{len(rooms.chunk)} of ~{rooms.total_room_count_estimate} rooms", flush=True)
    if rooms.next_batch:
        print(f"next: --since {rooms.next_batch}", flush=True)


# Profiles -------------------------------------------------------------------------


async def set_user_profile(args: argparse.Namespace, client: Client) -> None:
    fields: dict[str, Any] = {}
    if args.displayname is not None:
        fields["displayname"] = args.displayname
    if args.avatar_url is not None:
        fields["avatar_url"] = args.avatar_url
    for item in args.field:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CommandError(f"--field takes KEY=JSON, not {item!r}")
        try:
            fields[key] = decode_json(raw.encode())
        except ValueError:
            fields[key] = raw  # a bare string
    profile = await client.set_profile(args.user, fields, replace=args.replace)
    _emit(args, profile, _profile_text(args.user, profile))


async def get_user_profile(args: argparse.Namespace, client: Client) -> None:
    profile = await client.profile(args.user, args.field)
    if profile is None:
        raise CommandError(
            f"M_NOT_FOUND: no profile{' field' if args.field else ''} for {args.user}"
        )
    _emit(args, profile, _profile_text(args.user, profile))


def _profile_text(user: str, profile: dict[str, Any]) -> str:
    lines = [user]
    lines += [f"  {key}: {json.dumps(value, ensure_ascii=False)}" for key, value in profile.items()]
    return "\n".join(lines)


# Devices --------------------------------------------------------------------------


def _unpadded(raw: bytes) -> str:
    return encode_base64(raw)


def new_device_keys(
    user_id: str, device_id: str, one_time_keys: int, fallback: bool
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Device keys signed by a fresh ed25519 key, and signed curve25519 one-time keys."""
    signing = nacl.signing.SigningKey.generate()
    key_id = f"ed25519:{device_id}"
    identity = nacl.public.PrivateKey.generate()
    device_keys = {
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            f"curve25519:{device_id}": _unpadded(bytes(identity.public_key)),
            key_id: _unpadded(bytes(signing.verify_key)),
        },
    }
    device_keys = sign_json(device_keys, signing, user_id, key_id)

    def signed_curve_key(extra: dict[str, Any]) -> dict[str, Any]:
        key = {"key": _unpadded(bytes(nacl.public.PrivateKey.generate().public_key)), **extra}
        return sign_json(key, signing, user_id, key_id)

    otks = {
        f"signed_curve25519:{secrets.token_hex(4)}": signed_curve_key({})
        for _ in range(one_time_keys)
    }
    fallbacks = (
        {f"signed_curve25519:{secrets.token_hex(4)}": signed_curve_key({"fallback": True})}
        if fallback
        else {}
    )
    return device_keys, otks, fallbacks


async def upload_device(args: argparse.Namespace, client: Client) -> None:
    if args.one_time_keys < 0:
        raise CommandError("--one-time-keys must not be negative")
    device_keys, otks, fallbacks = new_device_keys(
        args.user, args.device, args.one_time_keys, args.fallback_key
    )
    reply = await client.upload_keys(
        args.user,
        args.device,
        device_keys=device_keys,
        one_time_keys=otks,
        fallback_keys=fallbacks,
        display_name=args.display_name,
    )
    counts = reply.one_time_key_counts
    _emit(
        args,
        {"device_keys": device_keys, "one_time_key_counts": counts, "stream_id": reply.stream_id},
        f"uploaded keys of {args.user} {args.device}: {counts} one-time keys,"
        f" stream_id {reply.stream_id}",
    )


async def show_devices(args: argparse.Namespace, client: Client) -> None:
    body = await client.devices(args.user, force_resync=args.resync)
    lines = [f"{body['user_id']} stream_id {body['stream_id']}"]
    for device in body["devices"]:
        name = device.get("device_display_name", "")
        keys = ", ".join(sorted(device.get("keys", {}).get("keys", {}))) or "no keys"
        lines.append(f"  {device['device_id']}\t{name}\t{keys}")
    _emit(args, body, "\n".join(lines))
