"""Rooms from the command line, over the events service's gRPC API.

``mxfed room create``  create a room (``--creator`` is a local user)
``mxfed room shutdown|block|unblock|blocked|purge``  the operator's actions
                       (:mod:`mxfed.commands.admin`)
``mxfed send``         send an ``m.room.message`` (``m.text``)
``mxfed history``      the latest events of a room, oldest first (``--backfill``:
                       fetch older history from other servers when we hold too little)
``mxfed tail``         follow a room's new events until Ctrl-C

Output is one line per event for people; ``--json`` prints one JSON object
per line instead. A room may be given by ID or by alias (``#name:server``).
Errors the service reports print as ``M_ERRCODE: message`` on stderr and the
command exits 1; a service that does not answer prints what to check.

``room create --alias`` takes the alias as ``#name:our.server`` or just its
localpart ``name``; another server's alias, or a malformed one, is refused
before anything is created.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from matrix_protocol.server_names import is_valid_room_alias
from mxfed.client import Client, Event, EventStatus
from mxfed.commands.admin import register_room_actions
from mxfed.commands.client_commands import CommandError, with_client
from mxfed.commands.common import add_json_flag, emit

PRESETS = ("public_chat", "private_chat", "trusted_private_chat")

__all__ = ["CommandError", "alias_localpart", "event_json", "event_line", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    room = subparsers.add_parser("room", help="manage rooms")
    room_commands = room.add_subparsers(dest="room_command", required=True)
    create = room_commands.add_parser("create", help="create a room")
    create.add_argument(
        "--creator", "--user", dest="creator", required=True, help="local user id, @user:our.server"
    )
    create.add_argument("--version", dest="room_version", default="", help="room version")
    create.add_argument("--preset", choices=PRESETS, default="private_chat")
    create.add_argument("--name", default="")
    create.add_argument("--topic", default="")
    create.add_argument(
        "--alias", default="", help="#NAME:our.server, or just NAME (its localpart)"
    )
    create.add_argument("--invite", action="append", default=[], help="user id (repeatable)")
    add_json_flag(create)
    create.set_defaults(handler=_run(create_room))
    register_room_actions(room_commands)

    info = room_commands.add_parser(
        "info", help="a room's version, head, our membership and partial-state resync progress"
    )
    info.add_argument("room", help="room id or alias")
    add_json_flag(info)
    info.set_defaults(handler=_run(room_info))

    send = subparsers.add_parser("send", help="send a text message to a room")
    send.add_argument("room", help="room id or alias")
    send.add_argument("text")
    send.add_argument("--sender", "--user", dest="sender", required=True, help="local user id")
    send.add_argument("--notice", action="store_true", help="send m.notice instead of m.text")
    send.add_argument("--txn-id", default="", help="idempotency key (per sender)")
    add_json_flag(send)
    send.set_defaults(handler=_run(send_message))

    history = subparsers.add_parser("history", help="print a room's latest events, oldest first")
    history.add_argument("room", help="room id or alias")
    history.add_argument("--limit", type=int, default=20)
    history.add_argument(
        "--backfill",
        action="store_true",
        help="when we hold fewer than --limit events, fetch older ones from other servers",
    )
    add_json_flag(history)
    history.set_defaults(handler=_run(show_history))

    tail = subparsers.add_parser("tail", help="follow a room's new events (Ctrl-C to stop)")
    tail.add_argument("room", help="room id or alias")
    add_json_flag(tail)
    tail.set_defaults(handler=_run(follow_room))


# Plumbing ----------------------------------------------------------------------


def _run(command: Any) -> Any:
    return with_client(command)


def alias_localpart(value: str, server_name: str) -> str:
    """The localpart of ``--alias``, given as ``#name:server_name`` or ``name``."""
    if not value:
        return ""
    localpart, server = value, server_name
    if value.startswith("#"):
        localpart, colon, server = value[1:].partition(":")
        server = server if colon else server_name
    elif ":" in value:
        raise CommandError(
            f"M_INVALID_PARAM: --alias {value!r}: give #NAME:{server_name} or just NAME"
        )
    if server != server_name:
        raise CommandError(
            f"M_INVALID_PARAM: --alias {value!r} is on {server}; "
            f"this server makes aliases on {server_name} only (#NAME:{server_name})"
        )
    if not is_valid_room_alias(f"#{localpart}:{server_name}"):
        raise CommandError(
            f"M_INVALID_PARAM: --alias {value!r} is not a valid alias "
            f"(#NAME:{server_name}; NAME without ':', at most 255 bytes in all)"
        )
    return localpart


async def _resolve_room(client: Client, room: str, *, must_exist: bool = False) -> str:
    """The room ID of an ID or alias; ``must_exist`` checks that we know the room."""
    if not room.startswith(("!", "#")):
        raise CommandError(
            f"M_INVALID_PARAM: {room!r} is neither a room ID (!...) nor an alias (#name:server)"
        )
    room_id = await client.resolve_room(room)
    if must_exist and not (await client.room_info(room_id)).exists:
        raise CommandError(f"M_NOT_FOUND: unknown room {room_id}")
    return room_id


def event_json(event: Event) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "room_id": event.room_id,
        "status": event.status.value,
        "stream_position": event.stream_position,
        "redacted": event.redacted,
        "pdu": dict(event.pdu),
    }


def event_line(event: Event) -> str:
    """``time  sender  type  body`` for one event."""
    pdu = dict(event.pdu)
    ts = pdu.get("origin_server_ts")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts / 1000))
        if isinstance(ts, int)
        else "?"
    )
    parts = [when, str(pdu.get("sender", "?")), str(pdu.get("type", "?")), _summary(pdu)]
    if event.status in (EventStatus.SOFT_FAILED, EventStatus.REJECTED):
        parts.append(f"[{event.status.value}]")
    if event.redacted:
        parts.append("[redacted]")
    return "  ".join(part for part in parts if part)


def _summary(pdu: dict[str, Any]) -> str:
    content = pdu.get("content")
    if not isinstance(content, dict):
        return ""
    body = content.get("body")
    if isinstance(body, str):
        return body.replace("\n", " ")
    event_type = pdu.get("type")
    state_key = pdu.get("state_key")
    if event_type == "m.room.member":
        return f"{state_key} {content.get('membership')}"
    for key in (
        "name",
        "topic",
        "alias",
        "join_rule",
        "history_visibility",
        "guest_access",
        "room_version",
    ):
        if isinstance(content.get(key), str):
            return f"{key}={content[key]}"
    text = json.dumps(content, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


# Commands ----------------------------------------------------------------------


async def create_room(args: argparse.Namespace, client: Client) -> None:
    localpart = alias_localpart(args.alias, client.server_name)
    created = await client.create_room(
        args.creator,
        room_version=args.room_version,
        preset=args.preset,
        name=args.name,
        topic=args.topic,
        alias_localpart=localpart,
        invite=args.invite,
    )
    text = created.room_id + (f"  {created.room_alias}" if created.room_alias else "")
    emit(args, {"room_id": created.room_id, "room_alias": created.room_alias}, text)


async def room_info(args: argparse.Namespace, client: Client) -> None:
    """One room: ``mxfed room info ROOM`` (partial-state joins show their resync)."""
    room_id = await _resolve_room(client, args.room)
    info = await client.room_info(room_id)
    if not info.exists:
        raise CommandError(f"M_NOT_FOUND: unknown room {room_id}")
    resync = info.resync_state
    value = {
        "room_id": room_id,
        "room_version": info.room_version,
        "we_are_joined": info.we_are_joined,
        "forward_extremities": list(info.forward_extremities),
        "depth": [info.min_depth, info.max_depth],
        "state": resync,
        "members_known": info.members_known,
        "members_expected": info.members_expected,
        "resync_attempts": info.resync_attempts,
        "resync_error": info.resync_error or None,
    }
    lines = [
        f"room       {room_id} (version {info.room_version})",
        f"joined     {'yes' if info.we_are_joined else 'no'}",
        f"members    {info.members_known}"
        + (f" of {info.members_expected} expected" if resync != "full_state" else ""),
        f"state      {resync.replace('_', ' ')}",
    ]
    if info.resync_attempts:
        lines.append(f"resync     {info.resync_attempts} failed attempts: {info.resync_error}")
    emit(args, value, "\n".join(lines))


async def send_message(args: argparse.Namespace, client: Client) -> None:
    room_id = await _resolve_room(client, args.room)
    sent = await client.send_message(
        room_id,
        args.sender,
        args.text,
        msgtype="m.notice" if args.notice else "m.text",
        txn_id=args.txn_id or None,
    )
    emit(
        args,
        {"event_id": sent.event_id, "room_id": room_id, "stream_position": sent.stream_position},
        sent.event_id,
    )


async def show_history(args: argparse.Namespace, client: Client) -> None:
    if args.limit < 1:
        raise CommandError("M_INVALID_PARAM: --limit must be at least 1")
    room_id = await _resolve_room(client, args.room, must_exist=True)
    for event in await client.history(room_id, args.limit, backfill=args.backfill):
        emit(args, event_json(event), event_line(event))


async def follow_room(args: argparse.Namespace, client: Client) -> None:
    room_id = await _resolve_room(client, args.room, must_exist=True)
    # Start after the newest event we hold now, so that nothing sent after
    # this point can slip between "now" and the subscription.
    after = await client.latest_position(room_id) or -1
    print(f"following {room_id} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    async for item in client.stream(room_id=room_id, after=after):
        if item.event is not None:
            emit(args, event_json(item.event), event_line(item.event))
