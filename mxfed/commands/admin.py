"""The operator's actions against a misbehaving server or room (``mxfed.events.v1.Admin``).

``mxfed servers block NAME``     refuse all federation with servers matching NAME (a glob:
                                 ``*.example.org``); ``--reason`` is kept with it
``mxfed servers unblock NAME``   undo it
``mxfed servers allow NAME``     add to the allow list (``disallow`` removes)
``mxfed servers allow-list on``  federate only with allowed servers (``off``: with all
                                 but the blocked ones)
``mxfed servers list``           the lists and the mode
``mxfed room shutdown ROOM``     every local member leaves, the room is refused from then on
                                 (``--purge``: and deleted)
``mxfed room block ROOM``        refuse the room (``unblock`` accepts it again); ``blocked``
                                 lists them
``mxfed room purge ROOM --before TS|EVENT``  delete history before a time (milliseconds or
                                 ISO 8601) or an event, keeping what later events need
``mxfed audit``                  the latest administrative actions: who, what, when

Every call goes as the operator (its certificate); each change is an audit record.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from mxfed.client import Client, MatrixError
from mxfed.commands.client_commands import error_line
from mxfed.commands.common import add_json_flag, emit
from mxfed.config import Config
from mxfed_api.events.v1 import admin_pb2, admin_pb2_grpc

CALL_TIMEOUT = 120.0

Command = Callable[[argparse.Namespace, admin_pb2_grpc.AdminStub], Awaitable[int]]


def register(subparsers: argparse._SubParsersAction) -> None:
    servers = subparsers.add_parser("servers", help="block or allow remote servers")
    actions = servers.add_subparsers(dest="servers_command", required=True)
    block = actions.add_parser("block", help="refuse all federation with a server (glob)")
    block.add_argument("pattern", help="server name or glob pattern (*.example.org)")
    block.add_argument("--reason", default="")
    add_json_flag(block)
    block.set_defaults(handler=_run(block_server))
    unblock = actions.add_parser("unblock", help="remove a server pattern from the block list")
    unblock.add_argument("pattern")
    add_json_flag(unblock)
    unblock.set_defaults(handler=_run(unblock_server))
    allow = actions.add_parser("allow", help="add a server pattern to the allow list")
    allow.add_argument("pattern")
    allow.add_argument("--reason", default="")
    add_json_flag(allow)
    allow.set_defaults(handler=_run(allow_server))
    disallow = actions.add_parser("disallow", help="remove a pattern from the allow list")
    disallow.add_argument("pattern")
    add_json_flag(disallow)
    disallow.set_defaults(handler=_run(disallow_server))
    mode = actions.add_parser("allow-list", help="federate only with allowed servers (on/off)")
    mode.add_argument("state", choices=("on", "off"), metavar="STATE", help="on or off")
    add_json_flag(mode)
    mode.set_defaults(handler=_run(set_allow_list_mode))
    listing = actions.add_parser("list", help="the block and allow lists")
    add_json_flag(listing)
    listing.set_defaults(handler=_run(list_servers))

    audit = subparsers.add_parser("audit", help="the latest administrative actions")
    audit.add_argument("--limit", type=int, default=50)
    add_json_flag(audit)
    audit.set_defaults(handler=_run(show_audit))


def register_room_actions(room_commands: argparse._SubParsersAction) -> None:
    """``mxfed room shutdown|block|unblock|blocked|purge`` (beside ``mxfed room create``)."""
    shutdown = room_commands.add_parser(
        "shutdown", help="every local member leaves; the room is refused from then on"
    )
    shutdown.add_argument("room_id")
    shutdown.add_argument("--reason", default="")
    shutdown.add_argument("--purge", action="store_true", help="also delete the room's data")
    add_json_flag(shutdown)
    shutdown.set_defaults(handler=_run(shutdown_room))
    block = room_commands.add_parser("block", help="refuse a room (joins, invites, events)")
    block.add_argument("room_id")
    block.add_argument("--reason", default="")
    add_json_flag(block)
    block.set_defaults(handler=_run(block_room))
    unblock = room_commands.add_parser("unblock", help="accept a blocked room again")
    unblock.add_argument("room_id")
    add_json_flag(unblock)
    unblock.set_defaults(handler=_run(unblock_room))
    blocked = room_commands.add_parser("blocked", help="list the blocked rooms")
    add_json_flag(blocked)
    blocked.set_defaults(handler=_run(list_blocked_rooms))
    purge = room_commands.add_parser(
        "purge", help="delete a room's history before a point (keeps what auth and state need)"
    )
    purge.add_argument("room_id")
    purge.add_argument(
        "--before",
        required=True,
        metavar="TS|EVENT",
        help="milliseconds since the epoch, an ISO 8601 time, or an event id ($...)",
    )
    add_json_flag(purge)
    purge.set_defaults(handler=_run(purge_history))


def _run(command: Command) -> Any:
    async def handler(args: argparse.Namespace, config: Config) -> int:
        try:
            async with Client(config) as client:
                with client.guarded("events"):
                    return await command(args, client.stub(admin_pb2_grpc.AdminStub))
        except ValueError as exc:
            print(f"mxfed: {exc}", file=sys.stderr)
            return 2
        except MatrixError as exc:
            print(error_line(exc, config), file=sys.stderr)
            return 1

    return handler


async def block_server(args: argparse.Namespace, stub: admin_pb2_grpc.AdminStub) -> int:
    reply = await stub.PerformBlockServer(
        admin_pb2.PerformBlockServerRequest(pattern=args.pattern, reason=args.reason),
        timeout=CALL_TIMEOUT,
    )
    text = f"blocked {args.pattern}" if reply.added else f"{args.pattern} was blocked already"
    emit(args, {"pattern": args.pattern, "added": reply.added}, text)
    return 0


async def unblock_server(args: argparse.Namespace, stub: admin_pb2_grpc.AdminStub) -> int:
    reply = await stub.PerformUnblockServer(
        admin_pb2.PerformUnblockServerRequest(pattern=args.pattern), timeout=CALL_TIMEOUT
    )
    text = f"unblocked {args.pattern}" if reply.removed else f"{args.pattern} was not blocked"
    emit(args, {"pattern": args.pattern, "removed": reply.removed}, text)
    return 0


async def allow_server(args: argparse.Namespace, stub: admin_pb2_grpc.AdminStub) -> int:
    reply = await stub.PerformBlockServer(
        admin_pb2.PerformBlockServerRequest(pattern=args.pattern, reason=args.reason, allow=True),
        timeout=CALL_TIMEOUT,
    )
    text = f"allowed {args.pattern}" if reply.added else f"{args.pattern} was allowed already"
    emit(args, {"pattern": args.pattern, "added": reply.added}, text)
    return 0


async def disallow_server(args: argparse.Namespace, stub: admin_pb2_grpc.AdminStub) -> int:
    reply = await stub.PerformUnblockServer(
        admin_pb2.PerformUnblockServerRequest(pattern=args.pattern, allow=True),
        timeout=CALL_TIMEOUT,
    )
    text = (
        f"{args.pattern} removed from the allow list"
        if reply.removed
        else f"{args.pattern} was not on the allow list"
    )
    emit(args, {"pattern": args.pattern, "removed": reply.removed}, text)
    return 0


async def set_allow_list_mode(args: argparse.Namespace, stub: admin_pb2_grpc.AdminStub) -> int:
    enabled = args.state == "on"
    await stub.PerformSetAllowListMode(
        admin_pb2.PerformSetAllowListModeRequest(enabled=enabled), timeout=CALL_TIMEOUT
    )
    text = (
        "allow-list mode on: only allowed servers federate"
        if enabled
        else "allow-list mode off: every server but the blocked ones federates"
    )
    emit(args, {"allow_list_mode": enabled}, text)
    return 0


def _when(ts_ms: int) -> str:
    return datetime.datetime.fromtimestamp(ts_ms / 1000, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%SZ"
    )


async def list_servers(args: argparse.Namespace, stub: admin_pb2_grpc.AdminStub) -> int:
    reply = await stub.QueryServerPolicy(admin_pb2.QueryServerPolicyRequest(), timeout=30)
    if args.json:
        print(
            orjson.dumps(
                {
                    "allow_list_mode": reply.allow_list_mode,
                    "rules": [
                        {
                            "pattern": r.pattern,
                            "list": "allow" if r.allow else "block",
                            "reason": r.reason,
                            "created_by": r.created_by,
                            "created_ts": r.created_ts,
                        }
                        for r in reply.rules
                    ],
                }
            ).decode()
        )
        return 0
    print(f"allow-list mode: {'on' if reply.allow_list_mode else 'off'}")
    for rule in reply.rules:
        kind = "allow" if rule.allow else "block"
        reason = f"  ({rule.reason})" if rule.reason else ""
        print(f"{kind}  {rule.pattern}  by {rule.created_by} at {_when(rule.created_ts)}{reason}")
    if not reply.rules:
        print("no server is blocked or allowed by name")
    return 0


async def shutdown_room(args: argparse.Namespace, stub: admin_pb2_grpc.AdminStub) -> int:
    reply = await stub.PerformShutdownRoom(
        admin_pb2.PerformShutdownRoomRequest(
            room_id=args.room_id, reason=args.reason, purge=args.purge
        ),
        timeout=CALL_TIMEOUT,
    )
    text = f"{len(reply.left_users)} local member(s) left: {', '.join(reply.left_users) or '-'}"
    if args.purge:
        text += f"\npurged {reply.purged_events} event(s)"
    text += f"\n{args.room_id} is blocked"
    value = {
        "room_id": args.room_id,
        "left_users": list(reply.left_users),
        "purged_events": reply.purged_events,
    }
    emit(args, value, text)
    return 0


async def block_room(args: argparse.Namespace, stub: admin_pb2_grpc.AdminStub) -> int:
    reply = await stub.PerformBlockRoom(
        admin_pb2.PerformBlockRoomRequest(room_id=args.room_id, reason=args.reason),
        timeout=CALL_TIMEOUT,
    )
    text = f"blocked {args.room_id}" if reply.changed else f"{args.room_id} was blocked already"
    emit(args, {"room_id": args.room_id, "changed": reply.changed}, text)
    return 0


async def unblock_room(args: argparse.Namespace, stub: admin_pb2_grpc.AdminStub) -> int:
    reply = await stub.PerformBlockRoom(
        admin_pb2.PerformBlockRoomRequest(room_id=args.room_id, unblock=True),
        timeout=CALL_TIMEOUT,
    )
    text = f"unblocked {args.room_id}" if reply.changed else f"{args.room_id} was not blocked"
    emit(args, {"room_id": args.room_id, "changed": reply.changed}, text)
    return 0


async def list_blocked_rooms(args: argparse.Namespace, stub: admin_pb2_grpc.AdminStub) -> int:
    reply = await stub.QueryBlockedRooms(admin_pb2.QueryBlockedRoomsRequest(), timeout=30)
    for room in reply.rooms:
        reason = f"  ({room.reason})" if room.reason else ""
        value = {
            "room_id": room.room_id,
            "reason": room.reason,
            "created_by": room.created_by,
            "created_ts": room.created_ts,
        }
        emit(
            args, value, f"{room.room_id}  by {room.created_by} at {_when(room.created_ts)}{reason}"
        )
    if not reply.rooms and not args.json:
        print("no room is blocked")
    return 0


def purge_point(text: str) -> admin_pb2.PerformPurgeHistoryRequest:
    """``--before``: an event id, milliseconds, or an ISO 8601 time (UTC unless it says)."""
    if text.startswith("$"):
        return admin_pb2.PerformPurgeHistoryRequest(before_event_id=text)
    if text.isdigit():
        return admin_pb2.PerformPurgeHistoryRequest(before_ts=int(text))
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--before {text!r}: give an event id ($...), milliseconds or an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return admin_pb2.PerformPurgeHistoryRequest(before_ts=int(moment.timestamp() * 1000))


async def purge_history(args: argparse.Namespace, stub: admin_pb2_grpc.AdminStub) -> int:
    request = purge_point(args.before)
    request.room_id = args.room_id
    reply = await stub.PerformPurgeHistory(request, timeout=CALL_TIMEOUT)
    text = (
        f"purged {reply.purged_events} event(s); kept {reply.kept_events} older state event(s) "
        "that auth and state need"
    )
    value = {
        "room_id": args.room_id,
        "purged_events": reply.purged_events,
        "kept_events": reply.kept_events,
    }
    emit(args, value, text)
    return 0


async def show_audit(args: argparse.Namespace, stub: admin_pb2_grpc.AdminStub) -> int:
    reply = await stub.QueryAuditLog(admin_pb2.QueryAuditLogRequest(limit=args.limit), timeout=30)
    for record in reversed(reply.records):
        details = orjson.loads(record.details_json or b"{}")
        if args.json:
            print(
                orjson.dumps(
                    {
                        "id": record.id,
                        "ts": record.ts,
                        "caller": record.caller,
                        "action": record.action,
                        "target": record.target,
                        "details": details,
                    }
                ).decode()
            )
        else:
            extra = " ".join(f"{k}={v}" for k, v in details.items() if v not in ("", None, []))
            print(f"{_when(record.ts)}  {record.caller}  {record.action}  {record.target}  {extra}")
    return 0
