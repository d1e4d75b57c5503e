"""The internal plane: every gRPC connection between mxfed's parts and its local actors.

Every internal channel is opened by :func:`open_channel`, every gRPC server is
made by :func:`new_server` and every server port is bound by
:func:`bind_port`, so that transport security, caller authorization and call
options apply to all of them in one place. A caller is named by a
:class:`Caller`: one of mxfed's parts, the operator (the ``mxfed`` CLI) or a
local actor (a bot or bridge).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import grpc

from mxfed.config import Config

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    # With several replicas behind one DNS name, spread calls over all of them.
    ("grpc.lb_policy_name", "round_robin"),
]


class CallerKind(enum.Enum):
    PART = "part"
    OPERATOR = "operator"
    ACTOR = "actor"


@dataclass(frozen=True)
class Caller:
    """Who is on the calling end of an internal channel."""

    kind: CallerKind
    name: str = ""

    @classmethod
    def part(cls, name: str) -> Caller:
        return cls(CallerKind.PART, name)

    @classmethod
    def actor(cls, name: str) -> Caller:
        return cls(CallerKind.ACTOR, name)


OPERATOR = Caller(CallerKind.OPERATOR)


def client_address(address: str) -> str:
    """A listen address made dialable: a wildcard host becomes loopback."""
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "", "[::]", "::"):
        return f"127.0.0.1:{port}"
    return address


def open_channel(
    config: Config, service: str, *, caller: Caller, address: str | None = None
) -> grpc.aio.Channel:
    """A channel from ``caller`` to the mxfed service ``service`` (``keys``, ``events``...).

    ``address`` defaults to the service's configured address.
    """
    target = client_address(address or config.service_address(service))
    return grpc.aio.insecure_channel(target, options=GRPC_OPTIONS)


def new_server(config: Config, part: str) -> grpc.aio.Server:
    """The gRPC server of the part ``part``; bind it with :func:`bind_port`."""
    # gRPC binds with SO_REUSEPORT unless told not to: a port in use must fail the start.
    options = [*GRPC_OPTIONS, ("grpc.so_reuseport", int(config.listen_reuse_port))]
    return grpc.aio.server(options=options)


def bind_port(server: grpc.aio.Server, config: Config, part: str, address: str) -> int:
    """Bind ``address`` (port 0 picks a free one) on ``part``'s server; returns the bound port."""
    port = server.add_insecure_port(address)
    if not port:
        raise RuntimeError(f"cannot listen on {address}")
    return port
