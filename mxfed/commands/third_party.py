"""Third-party invites from the command line (the events process's ThirdPartyInvites API).

``mxfed invite-3pid ROOM --medium email --address a@b --id-server HOST --sender @u:ours``

asks the identity server to store the invite (v2 ``store-invite``, with an
access token from ``account/register`` and an OpenID token of the sender, or
``--id-access-token`` when given) and sends the ``m.room.third_party_invite``
state event. ``--id-server`` is ``host[:port]`` (HTTPS) or a base URL. Errors
print as ``M_ERRCODE: message`` on stderr and the command exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys

import grpc

from mxfed.commands.common import rpc_error_line
from mxfed.config import Config
from mxfed.internal_plane import OPERATOR, open_channel
from mxfed_api.events.v1 import third_party_pb2, third_party_pb2_grpc

CALL_TIMEOUT = 120.0


def register(subparsers: argparse._SubParsersAction) -> None:
    invite = subparsers.add_parser(
        "invite-3pid", help="invite an email address (or other 3PID) through an identity server"
    )
    invite.add_argument("room", help="room id")
    invite.add_argument("--medium", default="email", help="3PID medium (default: email)")
    invite.add_argument("--address", required=True, help="the 3PID address")
    invite.add_argument("--id-server", required=True, help="identity server host[:port] or URL")
    invite.add_argument(
        "--sender", "--user", dest="sender", required=True, help="local user id joined to the room"
    )
    invite.add_argument(
        "--id-access-token", default="", help="identity server access token (skips registering)"
    )
    invite.add_argument("--json", action="store_true", help="print JSON")
    invite.set_defaults(handler=_invite_3pid)


async def _invite_3pid(args: argparse.Namespace, config: Config) -> int:
    address = config.service_address("events").replace("0.0.0.0", "127.0.0.1")
    request = third_party_pb2.PerformThirdPartyInviteRequest(
        room_id=args.room,
        sender=args.sender,
        id_server=args.id_server,
        medium=args.medium,
        address=args.address,
        id_access_token=args.id_access_token,
    )
    try:
        async with open_channel(config, "events", caller=OPERATOR) as channel:
            stub = third_party_pb2_grpc.ThirdPartyInvitesStub(channel)
            reply = await stub.PerformThirdPartyInvite(request, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        print(rpc_error_line(exc, config, "events", address), file=sys.stderr)
        return 1
    value = {
        "room_id": args.room,
        "event_id": reply.event_id,
        "token": reply.token,
        "display_name": reply.display_name,
    }
    text = f"invited {args.medium} {reply.display_name or args.address} ({reply.event_id})"
    print(json.dumps(value, ensure_ascii=False) if args.json else text, flush=True)
    return 0
