"""gRPC channels and servers for tests, opened through mxfed's internal plane.

Tests never call ``grpc.aio.insecure_channel`` or ``add_insecure_port``
themselves: they use these helpers (or ``MxfedProcess.channel``), which go
through ``mxfed.internal_plane`` like every mxfed process does, so the tests
run the same mutual TLS and per-RPC authorization as production. The
certificates come from one test CA per test session (every part, the
operator and the actor ``test-bot``); a configuration that should use it
takes :func:`plane_settings`.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import grpc

from mxfed.config import PART_NAMES, Config
from mxfed.internal_access import access_for
from mxfed.internal_identity import OPERATOR, Caller
from mxfed.internal_pki import ensure
from mxfed.internal_plane import bind_port, new_server, open_channel

GATEWAY = Caller.part("gateway")
TEST_BOT = Caller.actor("test-bot")

_tls_dir: Path | None = None


def session_tls_dir() -> Path:
    """The session's internal TLS directory: a test CA and every identity the tests use."""
    global _tls_dir
    if _tls_dir is None:
        directory = Path(tempfile.mkdtemp(prefix="mxfed-test-pki-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        callers = [Caller.part(part) for part in PART_NAMES] + [OPERATOR, TEST_BOT]
        ensure(directory, directory / "ca.crt", directory / "ca.key", callers, "mxfed test CA")
        _tls_dir = directory
    return _tls_dir


def plane_settings() -> dict[str, Any]:
    """Config settings that put a process on the session's test internal plane."""
    return {"internal_tls_dir": session_tls_dir()}


def plane_config() -> Config:
    """The configuration the test helpers open channels and servers with."""
    return Config(**plane_settings())


def channel_to(address: str, service: str, caller: Caller | None = None) -> grpc.aio.Channel:
    """A channel from ``caller`` to the mxfed service ``service`` listening at ``address``.

    Without a ``caller``, each call goes as a caller the authorization table
    admits for its method (see :class:`AdmittedCallerChannel`).
    """
    config = plane_config()
    if caller is None:
        return AdmittedCallerChannel(config, service, address)
    return open_channel(config, service, caller=caller, address=address)


class AdmittedCallerChannel(grpc.aio.Channel):
    """A channel that makes each call as a caller admitted to its method.

    For tests of what a service does, whoever would call it: a test fixture's
    stub calls the methods of a bot and of the gateway alike. The calls still
    cross mutual TLS and the server's authorization check, with the certificate
    of the operator when it is admitted, else of the first admitted part.
    Tests of authorization itself pass an explicit caller.
    """

    def __init__(self, config: Config, service: str, address: str | None = None) -> None:
        self._config = config
        self._service = service
        self._address = address
        self._channels: dict[Caller, grpc.aio.Channel] = {}

    def _channel_for(self, method: str) -> grpc.aio.Channel:
        access = access_for(method)
        caller = (
            OPERATOR
            if access.admits(OPERATOR)
            else Caller.part(sorted(access.parts)[0])
            if access.parts
            else OPERATOR  # admitted to no one: the server says so
        )
        if caller not in self._channels:
            self._channels[caller] = open_channel(
                self._config, self._service, caller=caller, address=self._address
            )
        return self._channels[caller]

    async def __aenter__(self) -> AdmittedCallerChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        for channel in self._channels.values():
            await channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel_for("/grpc.health.v1.Health/Check").get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        channel = self._channel_for("/grpc.health.v1.Health/Check")
        await channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel_for("/grpc.health.v1.Health/Check").channel_ready()

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel_for(method).unary_unary(method, *args, **kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel_for(method).unary_stream(method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel_for(method).stream_unary(method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel_for(method).stream_stream(method, *args, **kwargs)


def make_server(part: str) -> grpc.aio.Server:
    """A gRPC server for the part ``part``; bind it with :func:`bind_loopback`."""
    return new_server(plane_config(), part)


def bind_loopback(server: grpc.aio.Server, part: str) -> str:
    """Bind ``server`` on a loopback port the OS picks (held from now on); returns host:port."""
    port = bind_port(server, plane_config(), part, "127.0.0.1:0")
    return f"127.0.0.1:{port}"
