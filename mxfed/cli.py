"""The ``mxfed`` command line: run the server, and operate it over gRPC.

Each area of commands lives in ``mxfed/commands/<area>.py`` and provides
``register(subparsers)``; the parser is assembled from that list so that
adding an area touches one line here. ``--config FILE`` may come before or
after the command (``mxfed --config F run`` or ``mxfed run --config F``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys

import uvloop

from mxfed.config import ConfigError, load_config
from mxfed.identity_files import IdentityError
from mxfed.startup import EXIT_FATAL

COMMAND_MODULES = [
    "run",
    "health",
    "config",
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
    "init",
    "actors",
    "admin",
    "top",
]


# Commands that resident processes run: only their own module is imported, so
# the six long-lived processes don't carry every command's gRPC stubs.
LIGHTWEIGHT_COMMANDS = ("run", "health", "config")

# What a process killed by SIGPIPE exits with: `mxfed history | head -1`.
EXIT_BROKEN_PIPE = 128 + 13


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a sub-command's own --config must not reset one given before it.
    parser.add_argument(
        "--config",
        "-c",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="YAML config file (also MXFED_CONFIG)",
    )


def _every_parser(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found.extend(_every_parser(sub))
    return found


def build_parser(modules: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mxfed", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in modules or COMMAND_MODULES:
        importlib.import_module(f"mxfed.commands.{name}").register(subparsers)
    for each in _every_parser(parser):
        _add_config_option(each)
    return parser


def _command_word(argv: list[str]) -> str | None:
    words = iter(argv)
    for word in words:
        if word in ("--config", "-c"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _quiet_broken_pipe() -> int:
    """The reader went away: say nothing, and don't let the exit flush complain either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _command_word(argv)
    parser = build_parser([command] if command in LIGHTWEIGHT_COMMANDS else None)
    args = parser.parse_args(argv)
    args.config = getattr(args, "config", None)
    try:
        if getattr(args, "without_config", False):
            return int(asyncio.run(args.handler(args)) or 0)
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"mxfed: configuration error: {exc}", file=sys.stderr)
            return EXIT_FATAL
        # uvloop: the asyncio machinery of the many small calls on the hot paths
        # (gRPC, asyncpg, HTTP) costs less CPU per call than the standard loop's.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return int(runner.run(args.handler(args, config)) or 0)
    except IdentityError as exc:
        print(exc.line(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _quiet_broken_pipe()


if __name__ == "__main__":
    sys.exit(main())
