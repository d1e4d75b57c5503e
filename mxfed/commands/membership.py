"""Memberships from the command line, over the events process's Membership gRPC API.

``mxfed join ROOM --user @u:ours [--via SERVER]``   join (remote rooms via make/send_join)
``mxfed leave ROOM --user @u:ours``                 leave, reject an invite, retract a knock
``mxfed invite ROOM USER --sender @u:ours``         invite a local or remote user
``mxfed knock ROOM --user @u:ours --via SERVER``    knock on a remote room
``mxfed invites [--user @u:ours]``                  pending out-of-band invites and knocks

ROOM is a room ID or an alias (``#name:server``; remote aliases are resolved
with the alias server's ``query/directory``). Errors print as
``M_ERRCODE: message`` on stderr and the command exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc

from mxfed.commands.common import add_json_flag, rpc_error_line
from mxfed.config import Config
from mxfed.internal_plane import OPERATOR, open_channel
from mxfed_api.events.v1 import membership_pb2, membership_pb2_grpc

# Joining a big remote room fetches and checks its whole state.
CALL_TIMEOUT = 300.0

Command = Callable[[argparse.Namespace, membership_pb2_grpc.MembershipStub], Awaitable[None]]


def register(subparsers: argparse._SubParsersAction) -> None:
    join = subparsers.add_parser("join", help="join a room (local or remote)")
    join.add_argument("room", help="room id or alias")
    join.add_argument("--user", required=True, help="local user id")
    join.add_argument("--via", action="append", default=[], help="resident server (repeatable)")
    join.add_argument("--reason", default="")
    _json_flag(join)
    join.set_defaults(handler=_run(_join))

    leave = subparsers.add_parser("leave", help="leave a room, reject an invite, retract a knock")
    leave.add_argument("room", help="room id")
    leave.add_argument("--user", required=True, help="local user id")
    leave.add_argument("--reason", default="")
    _json_flag(leave)
    leave.set_defaults(handler=_run(_leave))

    invite = subparsers.add_parser("invite", help="invite a user into a room")
    invite.add_argument("room", help="room id")
    invite.add_argument("target", help="user id to invite (any server)")
    invite.add_argument(
        "--sender", "--user", dest="sender", required=True, help="local user id joined to the room"
    )
    invite.add_argument("--reason", default="")
    _json_flag(invite)
    invite.set_defaults(handler=_run(_invite))

    knock = subparsers.add_parser("knock", help="knock on a room")
    knock.add_argument("room", help="room id or alias")
    knock.add_argument("--user", required=True, help="local user id")
    knock.add_argument("--via", action="append", default=[], help="resident server (repeatable)")
    knock.add_argument("--reason", default="")
    _json_flag(knock)
    knock.set_defaults(handler=_run(_knock))

    invites = subparsers.add_parser("invites", help="list out-of-band invites and knocks")
    invites.add_argument("--user", default="", help="local user id (default: every user)")
    _json_flag(invites)
    invites.set_defaults(handler=_run(_invites))


_json_flag = add_json_flag


def _emit(args: argparse.Namespace, value: dict[str, Any], text: str) -> None:
    print(json.dumps(value, ensure_ascii=False) if args.json else text, flush=True)


def _run(command: Command) -> Callable[[argparse.Namespace, Config], Awaitable[int]]:
    async def handler(args: argparse.Namespace, config: Config) -> int:
        address = config.service_address("events").replace("0.0.0.0", "127.0.0.1")
        try:
            async with _channel(config) as stub:
                await command(args, stub)
        except grpc.aio.AioRpcError as exc:
            print(rpc_error_line(exc, config, "events", address), file=sys.stderr)
            return 1
        return 0

    return handler


@asynccontextmanager
async def _channel(config: Config) -> AsyncIterator[membership_pb2_grpc.MembershipStub]:
    async with open_channel(config, "events", caller=OPERATOR) as channel:
        yield membership_pb2_grpc.MembershipStub(channel)


async def _join(args: argparse.Namespace, stub: membership_pb2_grpc.MembershipStub) -> None:
    reply = await stub.PerformJoin(
        membership_pb2.PerformJoinRequest(
            room_id_or_alias=args.room, user_id=args.user, servers=args.via, reason=args.reason
        ),
        timeout=CALL_TIMEOUT,
    )
    how = "through a remote server" if reply.remote else "locally"
    _emit(
        args,
        {"room_id": reply.room_id, "event_id": reply.event_id, "remote": reply.remote},
        f"{args.user} joined {reply.room_id} {how} ({reply.event_id})",
    )


async def _leave(args: argparse.Namespace, stub: membership_pb2_grpc.MembershipStub) -> None:
    reply = await stub.PerformLeave(
        membership_pb2.PerformLeaveRequest(
            room_id=args.room, user_id=args.user, reason=args.reason
        ),
        timeout=CALL_TIMEOUT,
    )
    detail = reply.event_id or "recorded locally; no server could be reached"
    _emit(args, {"room_id": args.room, "event_id": reply.event_id}, f"{args.user} left ({detail})")


async def _invite(args: argparse.Namespace, stub: membership_pb2_grpc.MembershipStub) -> None:
    reply = await stub.PerformInvite(
        membership_pb2.PerformInviteRequest(
            room_id=args.room, sender=args.sender, target=args.target, reason=args.reason
        ),
        timeout=CALL_TIMEOUT,
    )
    _emit(
        args,
        {"room_id": args.room, "event_id": reply.event_id},
        f"invited {args.target} ({reply.event_id})",
    )


async def _knock(args: argparse.Namespace, stub: membership_pb2_grpc.MembershipStub) -> None:
    reply = await stub.PerformKnock(
        membership_pb2.PerformKnockRequest(
            room_id_or_alias=args.room, user_id=args.user, servers=args.via, reason=args.reason
        ),
        timeout=CALL_TIMEOUT,
    )
    state = json.loads(reply.stripped_state_json or b"[]")
    name = next((s["content"].get("name") for s in state if s.get("type") == "m.room.name"), None)
    _emit(
        args,
        {"room_id": reply.room_id, "event_id": reply.event_id, "stripped_state": state},
        f"knocked on {reply.room_id}{f' ({name})' if name else ''} ({reply.event_id})",
    )


async def _invites(args: argparse.Namespace, stub: membership_pb2_grpc.MembershipStub) -> None:
    reply = await stub.QueryInvites(
        membership_pb2.QueryInvitesRequest(user_id=args.user), timeout=CALL_TIMEOUT
    )
    for item in reply.memberships:
        value = {
            "room_id": item.room_id,
            "user_id": item.user_id,
            "membership": item.membership,
            "event_id": item.event_id,
            "sender": item.sender,
            "via_server": item.via_server,
            "stripped_state": json.loads(item.stripped_state_json or b"[]"),
        }
        _emit(
            args,
            value,
            f"{item.user_id} {item.membership} {item.room_id} from {item.sender}"
            f" via {item.via_server}",
        )
