"""gRPC channels and servers for tests, opened through mxfed's internal plane.

Tests never call ``grpc.aio.insecure_channel`` or ``add_insecure_port``
themselves: they use these helpers (or ``MxfedProcess.channel``), which go
through ``mxfed.internal_plane`` like every mxfed process does, so the tests
exercise the same transport security and authorization as production.
"""

from __future__ import annotations

import grpc

from mxfed.config import Config
from mxfed.internal_plane import OPERATOR, Caller, bind_port, new_server, open_channel

GATEWAY = Caller.part("gateway")


def plane_config() -> Config:
    """The configuration the test helpers open channels and servers with."""
    return Config()


def channel_to(address: str, service: str, caller: Caller = OPERATOR) -> grpc.aio.Channel:
    """A channel from ``caller`` to the mxfed service ``service`` listening at ``address``."""
    return open_channel(plane_config(), service, caller=caller, address=address)


def make_server(part: str) -> grpc.aio.Server:
    """A gRPC server for the part ``part``; bind it with :func:`bind_loopback`."""
    return new_server(plane_config(), part)


def bind_loopback(server: grpc.aio.Server, part: str) -> str:
    """Bind ``server`` on a loopback port the OS picks (held from now on); returns host:port."""
    port = bind_port(server, plane_config(), part, "127.0.0.1:0")
    return f"127.0.0.1:{port}"
