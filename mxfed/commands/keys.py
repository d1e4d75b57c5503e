"""``mxfed keys show`` and ``mxfed keys rotate``: our signing keys, through the keys service.

``rotate`` asks the keys service for a new signing key: the new key replaces
the signing key file (every process that signs picks it up within a second)
and the old one keeps being published in ``old_verify_keys`` with an
``expired_ts`` two seconds from now (covering that second), so events signed
with it still verify elsewhere.
"""

from __future__ import annotations

import argparse
import datetime
import sys

import orjson

from mxfed.client import Client, MatrixError
from mxfed.commands.client_commands import error_line
from mxfed.commands.common import add_json_flag, emit
from mxfed.config import Config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("keys", help="show or rotate this server's signing keys")
    actions = parser.add_subparsers(dest="keys_action", required=True)
    show = actions.add_parser("show", help="print the published server keys")
    show.add_argument("--json", action="store_true", help="print the signed key object")
    show.set_defaults(handler=show_keys)
    rotate = actions.add_parser(
        "rotate", help="replace the signing key (the old one expires in two seconds)"
    )
    add_json_flag(rotate)
    rotate.set_defaults(handler=rotate_key)


def _time(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(timespec="seconds")


async def show_keys(args: argparse.Namespace, config: Config) -> int:
    async with Client(config) as client:
        try:
            keys = await client.operator.server_keys()
        except MatrixError as exc:
            print(error_line(exc, config), file=sys.stderr)
            return 1
    if args.json:
        print(orjson.dumps(keys, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"server {keys['server_name']}, published until {_time(keys['valid_until_ts'])}")
    for key_id, entry in keys["verify_keys"].items():
        print(f"current  {key_id}  {entry['key']}")
    for key_id, entry in keys.get("old_verify_keys", {}).items():
        print(f"expired  {key_id}  {entry['key']}  at {_time(entry['expired_ts'])}")
    return 0


async def rotate_key(args: argparse.Namespace, config: Config) -> int:
    async with Client(config) as client:
        try:
            reply = await client.operator.rotate_key()
        except MatrixError as exc:
            print(error_line(exc, config), file=sys.stderr)
            return 1
    if args.json:
        value = {
            "new_key_id": reply.new_key_id,
            "old_key_id": reply.old_key_id,
            "old_key_expired_ts": reply.expired_ts,
        }
        emit(args, value, "")
        return 0
    print(
        f"new signing key {reply.new_key_id}; {reply.old_key_id} published as expired "
        f"at {_time(reply.expired_ts)}"
    )
    return 0
