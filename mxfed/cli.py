"""The ``mxfed`` command line: run the server, and operate it over gRPC.

Each area of commands lives in ``mxfed/commands/<area>.py`` and provides
``register(subparsers)``; the parser is assembled from that list so that
adding an area touches one line here.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys

from mxfed.config import ConfigError, load_config

COMMAND_MODULES = [
    "run",
    "health",
    "rooms",
    "keys",
    "destinations",
    "backfill",
    "membership",
    "directory",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mxfed", description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", help="YAML config file (also MXFED_CONFIG)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"mxfed.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"mxfed: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(asyncio.run(args.handler(args, config)) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
