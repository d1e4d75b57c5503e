"""``mxfed backfill ROOM [--limit N]``: fetch older history of a room from other servers.

Asks the backfill service (``PerformBackfill``) to fill the room's backward
extremities from servers likely to have the history, and prints how many
events were fetched and stored.
"""

from __future__ import annotations

import argparse
import sys

import grpc

from mxfed.commands.common import add_json_flag, emit, rpc_error_line
from mxfed.config import Config
from mxfed.internal_plane import OPERATOR, open_channel
from mxfed_api.backfill.v1 import backfill_pb2, backfill_pb2_grpc

CALL_TIMEOUT = 180.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("backfill", help="fetch older history of a room")
    parser.add_argument("room_id", metavar="ROOM", help="room ID")
    parser.add_argument(
        "--limit", type=int, default=100, help="events to ask for (at most 100; default 100)"
    )
    parser.add_argument(
        "--server", action="append", default=[], help="a server to ask first (repeatable)"
    )
    add_json_flag(parser)
    parser.set_defaults(handler=run_backfill)


async def run_backfill(args: argparse.Namespace, config: Config) -> int:
    address = config.service_address("backfill").replace("0.0.0.0", "127.0.0.1")
    async with open_channel(config, "backfill", caller=OPERATOR) as channel:
        try:
            reply = await backfill_pb2_grpc.BackfillStub(channel).PerformBackfill(
                backfill_pb2.PerformBackfillRequest(
                    room_id=args.room_id, limit=args.limit, servers=args.server
                ),
                timeout=CALL_TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            print(rpc_error_line(exc, config, "backfill", address), file=sys.stderr)
            return 1
    if args.json:
        value = {
            "events_fetched": reply.events_fetched,
            "server": reply.server or None,
            "servers_failed": list(reply.servers_failed),
            "events_refused": reply.events_refused,
        }
        emit(args, value, "")
        return 0
    source = f" from {reply.server}" if reply.server else ""
    print(f"fetched {reply.events_fetched} events{source}")
    if reply.servers_failed:
        print(f"servers that failed: {', '.join(reply.servers_failed)}")
    if reply.events_refused:
        print(f"events refused (bad format, signature or auth): {reply.events_refused}")
    return 0
