"""What the commands that talk to mxfed share: one :class:`mxfed.client.Client`.

Every command that calls the services goes through ``mxfed.client`` (the
library bots use), as the operator. Errors print as ``M_ERRCODE: message``
on stderr and the command exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from mxfed.client import Client, MatrixError
from mxfed.config import Config

ClientCommand = Callable[[argparse.Namespace, Client], Awaitable[None]]


class CommandError(Exception):
    """Printed as-is on stderr; the command exits 1."""


def with_client(
    command: ClientCommand, *, extra_errors: tuple[type[BaseException], ...] = ()
) -> Callable[[argparse.Namespace, Config], Awaitable[int]]:
    """An argparse handler running ``command`` with a client of ``config``'s mxfed."""

    printed: tuple[type[BaseException], ...] = (CommandError, *extra_errors)

    async def handler(args: argparse.Namespace, config: Config) -> int:
        try:
            async with Client(config) as client:
                await command(args, client)
        except MatrixError as exc:
            print(f"{exc.errcode}: {exc.message}", file=sys.stderr)
            return 1
        except printed as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0

    return handler


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON, one object per line")


def emit(args: argparse.Namespace, value: dict[str, Any], text: str) -> None:
    """One result: JSON with ``--json``, else the line for people."""
    if getattr(args, "json", False):
        print(json.dumps(value, ensure_ascii=False), flush=True)
    else:
        print(text, flush=True)
