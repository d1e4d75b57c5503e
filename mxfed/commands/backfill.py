"""``mxfed backfill ROOM [--limit N]``: fetch older history of a room from other servers.

Asks the backfill service (``PerformBackfill``) to fill the room's backward
extremities from servers likely to have the history, and prints how many
events were fetched and stored.
"""

from __future__ import annotations

import argparse

from mxfed.client import Client
from mxfed.commands.client_commands import with_client
from mxfed.commands.common import add_json_flag, emit


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
    parser.set_defaults(handler=with_client(run_backfill))


async def run_backfill(args: argparse.Namespace, client: Client) -> None:
    done = await client.backfill(args.room_id, args.limit, servers=args.server)
    if args.json:
        value = {
            "events_fetched": done.events_fetched,
            "server": done.server or None,
            "servers_failed": list(done.servers_failed),
            "events_refused": done.events_refused,
        }
        emit(args, value, "")
        return
    source = f" from {done.server}" if done.server else ""
    print(f"fetched {done.events_fetched} events{source}")
    if done.servers_failed:
        print(f"servers that failed: {', '.join(done.servers_failed)}")
    if done.events_refused:
        print(f"events refused (bad format, signature or auth): {done.events_refused}")
