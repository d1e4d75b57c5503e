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
    "third_party",
    "to_device",
    "doctor",
    "media",
]


# Commands that resident processes run: only their own module is imported, so
# the six long-lived processes don't carry every command's gRPC stubs.
LIGHTWEIGHT_COMMANDS = ("run", "health")


def build_parser(modules: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mxfed", description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", help="YAML config file (also MXFED_CONFIG)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in modules or COMMAND_MODULES:
        importlib.import_module(f"mxfed.commands.{name}").register(subparsers)
    return parser


def _command_word(argv: list[str]) -> str | None:
    words = iter(argv)
    for word in words:
        if word in ("--config", "-c"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _command_word(argv)
    parser = build_parser([command] if command in LIGHTWEIGHT_COMMANDS else None)
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
