"""``mxfed run``: the whole server, or one part of it (``--service NAME``)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mxfed.config import PART_NAMES, Config

if TYPE_CHECKING:
    from mxfed.database import EmbeddedDatabase


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run every part of mxfed, or one with --service")
    parser.add_argument("--service", choices=PART_NAMES, help="run only this part")
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace, config: Config) -> int:
    if args.service is None:
        from mxfed.supervisor import supervise

        await supervise(config, args.config)
        return 0
    if args.service == "gateway":
        from gateway.server import run_gateway

        await run_gateway(config)
        return 0
    from mxfed.service_runtime import run_service

    embedded = await _with_database(config)
    try:
        await run_service(args.service, config)
    finally:
        if embedded:
            embedded.stop()
    return 0


async def _with_database(config: Config) -> EmbeddedDatabase | None:
    """Resolve the database when a part runs alone (compose sets DATABASE_URL)."""
    from mxfed.database import resolve_database_url

    url, embedded = await resolve_database_url(config.database_url, config.data_dir)
    config.database_url = url
    return embedded
