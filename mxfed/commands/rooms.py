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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc

from matrix_protocol.canonical_json import decode_json
from matrix_protocol.server_names import is_valid_room_alias
from mxfed.commands.admin import register_room_actions
from mxfed.commands.common import add_json_flag, rpc_error_line
from mxfed.config import Config
from mxfed.internal_plane import OPERATOR, open_channel
from mxfed_api.backfill.v1 import backfill_pb2, backfill_pb2_grpc
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc

CALL_TIMEOUT = 30.0
BACKFILL_TIMEOUT = 180.0
BACKFILL_BATCH = 100  # events asked of other servers per backfill
PRESETS = ("public_chat", "private_chat", "trusted_private_chat")


class CommandError(Exception):
    """Printed as-is on stderr; the command exits 1."""


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
    async def handler(args: argparse.Namespace, config: Config) -> int:
        args.service_config = config
        try:
            async with _events(config) as stub:
                await command(args, stub)
        except CommandError as exc:
            print(exc, file=sys.stderr)
            return 1
        except grpc.aio.AioRpcError as exc:
            print(rpc_error_line(exc, config, "events"), file=sys.stderr)
            return 1
        return 0

    return handler


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


@asynccontextmanager
async def _events(config: Config) -> AsyncIterator[events_pb2_grpc.EventsStub]:
    async with open_channel(config, "events", caller=OPERATOR) as channel:
        yield events_pb2_grpc.EventsStub(channel)


def _emit(args: argparse.Namespace, value: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(value, ensure_ascii=False), flush=True)
    else:
        print(text, flush=True)


async def _resolve_room(
    stub: events_pb2_grpc.EventsStub, room: str, *, must_exist: bool = False
) -> str:
    """The room ID of an ID or alias; ``must_exist`` checks that we know the room."""
    room_id = room
    if not room.startswith(("!", "#")):
        raise CommandError(
            f"M_INVALID_PARAM: {room!r} is neither a room ID (!...) nor an alias (#name:server)"
        )
    if room.startswith("#"):
        reply = await stub.QueryAlias(
            events_pb2.QueryAliasRequest(alias=room), timeout=CALL_TIMEOUT
        )
        if not reply.found:
            raise CommandError(f"M_NOT_FOUND: no room has the alias {room}")
        room_id = reply.room_id
    if must_exist:
        info = await stub.QueryRoomInfo(
            events_pb2.QueryRoomInfoRequest(room_id=room_id), timeout=CALL_TIMEOUT
        )
        if not info.exists:
            raise CommandError(f"M_NOT_FOUND: unknown room {room_id}")
    return room_id


_STATUS_NAMES = {
    events_pb2.EVENT_STATUS_ACCEPTED: "accepted",
    events_pb2.EVENT_STATUS_SOFT_FAILED: "soft_failed",
    events_pb2.EVENT_STATUS_REJECTED: "rejected",
    events_pb2.EVENT_STATUS_OUTLIER: "outlier",
}


def event_json(record: events_pb2.EventRecord) -> dict[str, Any]:
    pdu = decode_json(record.pdu_json) if record.pdu_json else {}
    return {
        "event_id": record.event_id,
        "room_id": record.room_id,
        "status": _STATUS_NAMES.get(record.status, "unknown"),
        "stream_position": record.stream_position,
        "redacted": record.redacted,
        "pdu": pdu,
    }


def event_line(record: events_pb2.EventRecord) -> str:
    """``time  sender  type  body`` for one event."""
    pdu = decode_json(record.pdu_json) if record.pdu_json else {}
    ts = pdu.get("origin_server_ts")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts / 1000))
        if isinstance(ts, int)
        else "?"
    )
    parts = [when, str(pdu.get("sender", "?")), str(pdu.get("type", "?")), _summary(pdu)]
    if record.status in (events_pb2.EVENT_STATUS_SOFT_FAILED, events_pb2.EVENT_STATUS_REJECTED):
        parts.append(f"[{_STATUS_NAMES[record.status]}]")
    if record.redacted:
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


async def create_room(args: argparse.Namespace, stub: events_pb2_grpc.EventsStub) -> None:
    config: Config = args.service_config
    localpart = alias_localpart(args.alias, config.server_name)
    reply = await stub.PerformCreateRoom(
        events_pb2.PerformCreateRoomRequest(
            creator=args.creator,
            room_version=args.room_version,
            preset=args.preset,
            name=args.name,
            topic=args.topic,
            alias_localpart=localpart,
            invite=args.invite,
        ),
        timeout=CALL_TIMEOUT,
    )
    text = reply.room_id + (f"  {reply.room_alias}" if reply.room_alias else "")
    _emit(args, {"room_id": reply.room_id, "room_alias": reply.room_alias or None}, text)


_RESYNC_NAMES = {
    events_pb2.RESYNC_STATE_FULL_STATE: "full_state",
    events_pb2.RESYNC_STATE_PENDING: "pending",
    events_pb2.RESYNC_STATE_FETCHING: "fetching",
    events_pb2.RESYNC_STATE_STORING: "storing",
    events_pb2.RESYNC_STATE_RETRYING: "retrying",
}


async def room_info(args: argparse.Namespace, stub: events_pb2_grpc.EventsStub) -> None:
    """One room: ``mxfed room info ROOM`` (partial-state joins show their resync)."""
    room_id = await _resolve_room(stub, args.room)
    info = await stub.QueryRoomInfo(
        events_pb2.QueryRoomInfoRequest(room_id=room_id), timeout=CALL_TIMEOUT
    )
    if not info.exists:
        raise CommandError(f"M_NOT_FOUND: unknown room {room_id}")
    resync = _RESYNC_NAMES.get(info.resync_state, "full_state")
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
    _emit(args, value, "\n".join(lines))


async def send_message(args: argparse.Namespace, stub: events_pb2_grpc.EventsStub) -> None:
    room_id = await _resolve_room(stub, args.room)
    content = {"msgtype": "m.notice" if args.notice else "m.text", "body": args.text}
    reply = await stub.PerformSendEvent(
        events_pb2.PerformSendEventRequest(
            room_id=room_id,
            sender=args.sender,
            type="m.room.message",
            content_json=json.dumps(content, ensure_ascii=False).encode(),
            txn_id=args.txn_id,
        ),
        timeout=CALL_TIMEOUT,
    )
    _emit(
        args,
        {
            "event_id": reply.event_id,
            "room_id": room_id,
            "stream_position": reply.stream_position,
        },
        reply.event_id,
    )


async def show_history(args: argparse.Namespace, stub: events_pb2_grpc.EventsStub) -> None:
    if args.limit < 1:
        raise CommandError("M_INVALID_PARAM: --limit must be at least 1")
    room_id = await _resolve_room(stub, args.room, must_exist=True)
    if getattr(args, "backfill", False):
        config: Config = args.service_config
        async with open_channel(config, "backfill", caller=OPERATOR) as channel:
            backfill = backfill_pb2_grpc.BackfillStub(channel)

            async def fetch_older(wanted: int) -> int:
                reply = await backfill.PerformBackfill(
                    backfill_pb2.PerformBackfillRequest(
                        room_id=room_id, limit=min(BACKFILL_BATCH, max(wanted, 10))
                    ),
                    timeout=BACKFILL_TIMEOUT,
                )
                return reply.events_fetched

            records = await _latest_events(stub, room_id, args.limit, fetch_older)
    else:
        records = await _latest_events(stub, room_id, args.limit)
    for record in records:
        _emit(args, event_json(record), event_line(record))


async def _latest_events(
    stub: events_pb2_grpc.EventsStub,
    room_id: str,
    limit: int,
    fetch_older: Callable[[int], Awaitable[int]] | None = None,
) -> list[events_pb2.EventRecord]:
    """The ``limit`` latest events, oldest first.

    With ``fetch_older``, reaching the oldest event we hold before the room's
    start asks it for older history (it returns how many events it stored)
    and paging goes on from there, until ``limit`` events or the room start.
    """
    records: list[events_pb2.EventRecord] = []
    token = resume = ""
    while len(records) < limit:
        reply = await stub.QueryTimeline(
            events_pb2.QueryTimelineRequest(
                room_id=room_id, from_token=token, backwards=True, limit=limit - len(records)
            ),
            timeout=CALL_TIMEOUT,
        )
        records.extend(reply.events)
        resume = reply.resume_token or resume
        if reply.reached_room_start or len(records) >= limit:
            break
        if reply.next_token:
            token = reply.next_token
            continue
        if fetch_older is None or await fetch_older(limit - len(records)) == 0:
            break
        token = resume
    # Backwards pagination yields newest first.
    return list(reversed(records[:limit]))


async def follow_room(args: argparse.Namespace, stub: events_pb2_grpc.EventsStub) -> None:
    room_id = await _resolve_room(stub, args.room, must_exist=True)
    # Start after the newest event we hold now, so that nothing sent after
    # this point can slip between "now" and the subscription.
    latest = await _latest_events(stub, room_id, 1)
    after = max((record.stream_position for record in latest), default=0) or -1
    stream = stub.StreamEvents(
        events_pb2.StreamEventsRequest(room_id=room_id, after_position=after)
    )
    print(f"following {room_id} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    async for item in stream:
        if item.WhichOneof("item") == "event":
            _emit(args, event_json(item.event), event_line(item.event))
