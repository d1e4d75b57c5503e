"""Local HTTPS test servers and a test PKI for the federation client tests.

Everything listens on 127.0.0.1 only. Names like ``fed.test`` are pointed at
127.0.0.1 through the client's injected DNS resolver, never real DNS.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.support.pki import TestCa

CERT_NAMES = [
    "fed.test",
    "delegated.test",
    "wk.test",
    "wk2.test",
    "srv.test",
    "legacy.test",
    "redir.test",
    "loop.test",
    "big.test",
    "other.example",
]


@dataclass
class Pki:
    ca_file: str
    cert_file: str
    key_file: str


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One server certificate for every test name (and 127.0.0.1), issued by a test CA."""
    ca = TestCa(tmp_path_factory.mktemp("fedclient-pki"))
    issued = ca.issue(*CERT_NAMES, "127.0.0.1")
    return Pki(str(ca.ca_file), str(issued.cert_file), str(issued.key_file))


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[Any, ...]


Responder = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _default_responder(request: web.Request) -> web.StreamResponse:
    return web.json_response({"ok": True})


@dataclass
class TlsServer:
    """An aiohttp HTTPS server on 127.0.0.1 recording what it receives."""

    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    peers: set[tuple[Any, ...]] = field(default_factory=set)
    responder: Responder = _default_responder
    runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else ()
        body = await request.read()
        self.peers.add(tuple(peer))
        self.requests.append(
            Seen(request.method, request.raw_path, dict(request.headers), body, tuple(peer))
        )
        return await self.responder(request)

    async def start(self, pki: Pki) -> TlsServer:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(pki.cert_file, pki.key_file)

        def on_sni(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            self.sni.append(name)

        ctx.sni_callback = on_sni
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def server(pki: Pki):
    srv = await TlsServer().start(pki)
    yield srv
    await srv.stop()


@pytest.fixture
async def wk_server(pki: Pki):
    """Second server, used as the ``.well-known`` host (port injected in options)."""
    srv = await TlsServer().start(pki)
    yield srv
    await srv.stop()
