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

import grpc
import orjson

from mxfed.commands.common import rpc_error_line
from mxfed.config import Config
from mxfed.internal_plane import OPERATOR, open_channel
from mxfed_api.keys.v1 import accounts_pb2, accounts_pb2_grpc

CALL_TIMEOUT = 60.0
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


def _line(message: accounts_pb2.ToDeviceMessage, as_json: bool) -> str:
    content = orjson.loads(message.content_json)
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


def _print(message: accounts_pb2.ToDeviceMessage, as_json: bool) -> None:
    print(_line(message, as_json), flush=True)


async def _ack(stub: accounts_pb2_grpc.AccountsStub, args: argparse.Namespace, upto: int) -> None:
    await stub.PerformAckToDeviceMessages(
        accounts_pb2.PerformAckToDeviceMessagesRequest(
            user_id=args.user, device_id=args.device, up_to_position=upto
        ),
        timeout=CALL_TIMEOUT,
    )


async def _receive(stub: accounts_pb2_grpc.AccountsStub, args: argparse.Namespace) -> None:
    if args.follow:
        stream = stub.StreamToDeviceMessages(
            accounts_pb2.StreamToDeviceMessagesRequest(
                user_id=args.user, device_id=args.device, after_position=args.after
            )
        )
        try:
            async for message in stream:
                _print(message, args.json)
                if args.ack:
                    await _ack(stub, args, message.position)
        finally:
            stream.cancel()
        return
    position = args.after
    while True:
        reply = await stub.QueryToDeviceMessages(
            accounts_pb2.QueryToDeviceMessagesRequest(
                user_id=args.user, device_id=args.device, after_position=position, limit=PAGE
            ),
            timeout=CALL_TIMEOUT,
        )
        for message in reply.messages:
            _print(message, args.json)
        position = reply.position
        if not reply.more:
            break
    if args.ack and position > args.after:
        await _ack(stub, args, position)


async def receive_messages(args: argparse.Namespace, config: Config) -> int:
    async with open_channel(config, "keys", caller=OPERATOR) as channel:
        try:
            await _receive(accounts_pb2_grpc.AccountsStub(channel), args)
        except grpc.aio.AioRpcError as error:
            print(f"mxfed to-device: {rpc_error_line(error, config, 'keys')}", file=sys.stderr)
            return 1
    return 0
