"""``mxfed destinations``: the sender's per-destination queues, as a table.

Asks the sender service (``QueryDestinations``); by default lists the
destinations with something queued, a backoff or a lease.
"""

from __future__ import annotations

import argparse
import sys

from mxfed.client import Client, MatrixError
from mxfed.clock import now_ms
from mxfed.commands.client_commands import error_line
from mxfed.commands.common import add_json_flag, emit
from mxfed.config import Config
from mxfed_api.sender.v1 import sender_pb2

COLUMNS = ("destination", "pdus", "edus", "oldest", "last success", "backoff", "lease", "error")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "destinations", help="show the sender's queues per remote server"
    )
    parser.add_argument("names", nargs="*", help="only these destinations")
    parser.add_argument("--all", action="store_true", help="include idle destinations")
    parser.add_argument("--limit", type=int, default=100, help="at most this many rows")
    parser.add_argument("--address", help="sender host:port (default: sender_address)")
    add_json_flag(parser)
    parser.set_defaults(handler=show_destinations)


def age(ts_ms: int, now_ms: int) -> str:
    """``ts_ms`` as a short age ("-" when unset)."""
    if ts_ms <= 0:
        return "-"
    seconds = max(0, (now_ms - ts_ms) // 1000)
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def remaining(ts_ms: int, now_ms: int) -> str:
    if ts_ms <= now_ms:
        return "-"
    return f"{(ts_ms - now_ms) / 1000:.0f}s"


def format_table(reply: sender_pb2.QueryDestinationsResponse, now_ms: int) -> str:
    rows = [COLUMNS]
    for d in reply.destinations:
        rows.append(
            (
                d.destination,
                str(d.pending_pdus),
                str(d.pending_edus),
                age(d.oldest_pending_ts, now_ms),
                age(d.last_success_ts, now_ms),
                remaining(d.backoff_until_ts, now_ms),
                d.lease_owner or "-",
                (d.last_error[:40] if d.failures else "") or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.append(
        f"{len(reply.destinations)} destination(s); live sender replicas: "
        + (", ".join(reply.live_replicas) or "none")
    )
    return "\n".join(lines)


async def show_destinations(args: argparse.Namespace, config: Config) -> int:
    address = args.address or config.service_address("sender")
    async with Client(config, addresses={"sender": address}) as client:
        try:
            reply = await client.operator.destinations(
                args.names, include_idle=args.all, limit=args.limit
            )
        except MatrixError as exc:
            print(error_line(exc, config, address), file=sys.stderr)
            return 1
    if args.json:
        for d in reply.destinations:
            value = {
                "destination": d.destination,
                "pending_pdus": d.pending_pdus,
                "pending_edus": d.pending_edus,
                "oldest_pending_ts": d.oldest_pending_ts or None,
                "last_success_ts": d.last_success_ts or None,
                "backoff_until_ts": d.backoff_until_ts or None,
                "lease_owner": d.lease_owner or None,
                "failures": d.failures,
                "last_error": d.last_error or None,
            }
            emit(args, value, "")
        return 0
    print(format_table(reply, now_ms()))
    return 0
