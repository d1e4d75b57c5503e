"""What every command shares: the ``--json`` flag, output, and errors that say what to do.

Every command that prints something takes ``--json`` (one JSON object per
line); without it, plain lines for people. Errors go to stderr as one line:
a Matrix error as ``M_ERRCODE: message``, a part that does not answer as
what to check (is mxfed running, which address was asked).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import grpc

from mxfed.config import Config
from mxfed.internal_plane import client_address
from mxfed.service_errors import error_info


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON, one object per line")


def emit(args: argparse.Namespace, value: dict[str, Any], text: str) -> None:
    """``value`` as one JSON line with ``--json``, else ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(value, ensure_ascii=False), flush=True)
    else:
        print(text, flush=True)


def not_running_hint(config: Config, service: str | None, address: str | None = None) -> str:
    """Why a part did not answer, and what to check (``service`` None: one of several)."""
    if service is None:
        who = "a service of mxfed"
    else:
        who = (
            f"the {service} service at {client_address(address or config.service_address(service))}"
        )
    return (
        f"UNAVAILABLE: {who} does not answer: "
        "is `./bootstrap run` (or `mxfed run`) running with this configuration? "
        "`mxfed health` shows which parts serve"
    )


def _reason(details: str) -> str:
    """The useful end of gRPC's connection error ("Connection refused", a TLS failure)."""
    return details.rpartition("last error: ")[2] or details


def rpc_error_line(
    exc: grpc.aio.AioRpcError, config: Config, service: str | None, address: str | None = None
) -> str:
    """One line for a failed call: the Matrix error, or what to check.

    The one place the CLI maps a failed call: a typed error
    (:mod:`mxfed.service_errors`) prints as ``M_ERRCODE: message``.
    """
    info = error_info(exc)
    if info.errcode is not None:
        return f"{info.errcode}: {info.message}"
    details = info.message
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        reason = f" ({_reason(details)})" if details else ""
        return not_running_hint(config, service, address) + reason
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        who = f"the {service} service" if service else "a service of mxfed"
        return f"DEADLINE_EXCEEDED: {who} did not answer in time ({details})"
    return f"{exc.code().name}: {details}"
