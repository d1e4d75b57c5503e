"""Commands that call mxfed do it through one :class:`mxfed.client.Client`.

The CLI is a client of mxfed like any bot: every command that calls the
services goes through ``mxfed.client`` (as the operator). Errors print as
one line on stderr (:mod:`mxfed.commands.common`) and the command exits 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable

from mxfed.client import Client, MatrixError
from mxfed.commands.common import rpc_error_line
from mxfed.config import Config

ClientCommand = Callable[[argparse.Namespace, Client], Awaitable[None]]


class CommandError(Exception):
    """Printed as-is on stderr; the command exits 1."""


def error_line(exc: MatrixError, config: Config, address: str | None = None) -> str:
    """``M_ERRCODE: message``, or for a part that did not answer what to check."""
    if exc.rpc_error is not None:
        return rpc_error_line(exc.rpc_error, config, exc.service or None, address)
    return f"{exc.errcode}: {exc.message}"


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
            print(error_line(exc, config), file=sys.stderr)
            return 1
        except printed as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0

    return handler
