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

from mxfed.client import Client
from mxfed.commands.client_commands import with_client
from mxfed.commands.common import emit


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
    invite.set_defaults(handler=with_client(_invite_3pid))


async def _invite_3pid(args: argparse.Namespace, client: Client) -> None:
    invited = await client.third_party_invite(
        args.sender,
        args.room,
        medium=args.medium,
        address=args.address,
        id_server=args.id_server,
        id_access_token=args.id_access_token,
    )
    value = {
        "room_id": args.room,
        "event_id": invited.event_id,
        "token": invited.token,
        "display_name": invited.display_name,
    }
    text = f"invited {args.medium} {invited.display_name or args.address} ({invited.event_id})"
    emit(args, value, text)
