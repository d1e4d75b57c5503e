"""``mxfed to-device receive``: to-device messages other servers sent to a local device.

``mxfed to-device receive --user @u:ours --device D``
    prints the messages waiting in the device's inbox (Accounts
    ``QueryToDeviceMessages``, every page) and exits;
``--follow``
    keeps printing new ones as they arrive (``StreamToDeviceMessages``)
    until interrupted;
``--after N``
    starts after inbox position N;
``--ack``
    acknowledges what was printed (``PerformAckToDeviceMessages``: the
    messages are deleted), after each message with ``--follow``.

One line per message: ``POSITION SENDER TYPE CONTENT`` (content as JSON), or
one JSON object per line with ``--json``. Service errors print
``M_ERRCODE: message`` (or the gRPC status) on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import sys

import orjson

from mxfed.client import Client, MatrixError, ToDeviceMessage
from mxfed.commands.client_commands import error_line
from mxfed.config import Config

PAGE = 500


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "to-device", help="to-device messages received over federation for a local device"
    )
    actions = parser.add_subparsers(dest="to_device_action", required=True)
    receive = actions.add_parser("receive", help="print a local device's to-device messages")
    receive.add_argument("--user", required=True, help="a local user id")
    receive.add_argument("--device", required=True, help="the device id")
    receive.add_argument("--after", type=int, default=0, help="start after this position")
    receive.add_argument("--follow", action="store_true", help="keep printing new messages")
    receive.add_argument("--ack", action="store_true", help="delete the messages printed")
    receive.add_argument("--json", action="store_true", help="one JSON object per line")
    receive.set_defaults(handler=receive_messages)


def _line(message: ToDeviceMessage, as_json: bool) -> str:
    content = dict(message.content)
    if as_json:
        return orjson.dumps(
            {
                "position": message.position,
                "sender": message.sender,
                "type": message.type,
                "content": content,
                "origin": message.origin,
                "message_id": message.message_id,
                "received_ts": message.received_ts,
            }
        ).decode()
    return f"{message.position} {message.sender} {message.type} {orjson.dumps(content).decode()}"


def _print(message: ToDeviceMessage, as_json: bool) -> None:
    print(_line(message, as_json), flush=True)


async def _receive(client: Client, args: argparse.Namespace) -> None:
    if args.follow:
        async for message in client.stream_to_device(args.user, args.device, after=args.after):
            _print(message, args.json)
            if args.ack:
                await client.ack_to_device(args.user, args.device, message.position)
        return
    position = args.after
    while True:
        messages, more = await client.to_device_messages(
            args.user, args.device, after=position, limit=PAGE
        )
        for message in messages:
            _print(message, args.json)
        position = messages[-1].position if messages else position
        if not more:
            break
    if args.ack and position > args.after:
        await client.ack_to_device(args.user, args.device, position)


async def receive_messages(args: argparse.Namespace, config: Config) -> int:
    async with Client(config) as client:
        try:
            await _receive(client, args)
        except MatrixError as error:
            print(f"mxfed to-device: {error_line(error, config)}", file=sys.stderr)
            return 1
    return 0
