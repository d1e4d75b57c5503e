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

from mxfed.client import Client
from mxfed.commands.client_commands import with_client as _run
from mxfed.commands.common import add_json_flag
from mxfed.commands.common import emit as _emit


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


async def _join(args: argparse.Namespace, client: Client) -> None:
    joined = await client.join(args.user, args.room, servers=args.via, reason=args.reason)
    how = "through a remote server" if joined.remote else "locally"
    _emit(
        args,
        {"room_id": joined.room_id, "event_id": joined.event_id, "remote": joined.remote},
        f"{args.user} joined {joined.room_id} {how} ({joined.event_id})",
    )


async def _leave(args: argparse.Namespace, client: Client) -> None:
    event_id = await client.leave(args.user, args.room, reason=args.reason)
    detail = event_id or "recorded locally; no server could be reached"
    _emit(args, {"room_id": args.room, "event_id": event_id}, f"{args.user} left ({detail})")


async def _invite(args: argparse.Namespace, client: Client) -> None:
    event_id = await client.invite(args.sender, args.room, args.target, reason=args.reason)
    _emit(args, {"room_id": args.room, "event_id": event_id}, f"invited {args.target} ({event_id})")


async def _knock(args: argparse.Namespace, client: Client) -> None:
    knocked = await client.knock(args.user, args.room, servers=args.via, reason=args.reason)
    state = knocked.stripped_state
    name = next((s["content"].get("name") for s in state if s.get("type") == "m.room.name"), None)
    _emit(
        args,
        {"room_id": knocked.room_id, "event_id": knocked.event_id, "stripped_state": state},
        f"knocked on {knocked.room_id}{f' ({name})' if name else ''} ({knocked.event_id})",
    )


async def _invites(args: argparse.Namespace, client: Client) -> None:
    for item in await client.invites(args.user):
        value = {
            "room_id": item.room_id,
            "user_id": item.user_id,
            "membership": item.membership,
            "event_id": item.event_id,
            "sender": item.sender,
            "via_server": item.via_server,
            "stripped_state": item.stripped_state,
        }
        _emit(
            args,
            value,
            f"{item.user_id} {item.membership} {item.room_id} from {item.sender}"
            f" via {item.via_server}",
        )
