"""Netsplits between homeservers on loopback: a gate in front of each one's federation port.

Every homeserver of a test is named after its gate (``127.0.0.1:<gate port>``),
so every federation request to it passes through the gate: TLS is ended
there, the request is read, and it is passed on to the server's real
listener unless the :class:`Partition` separates the request's origin (the
``X-Matrix`` ``origin``) from the gate's server. A separated request is
answered ``502`` at once, as a broken link would leave it: the sender backs
off and retries later. Requests that name no origin (``/_matrix/key/v2/server``,
``/version``) always pass.

Plain Python and aiohttp, no pytest: the gates run on the test's event loop.
Each gate holds its port (:class:`~tests.support.ports.HeldPort`) until it stops.
"""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from matrix_protocol.xmatrix import XMatrixParseError, parse_xmatrix_header
from mxfed.identity_files import ensure_tls_pair
from tests.support.ports import HeldPort

# Headers a federation request or answer needs; hop-by-hop ones are left out.
_REQUEST_HEADERS = ("authorization", "content-type", "accept", "user-agent")
_RESPONSE_HEADERS = ("content-type", "retry-after")


class Partition:
    """Which servers are cut off from the others (none: everyone reaches everyone)."""

    def __init__(self) -> None:
        self._island: frozenset[str] = frozenset()

    def split(self, island: Iterable[str]) -> None:
        """Cut the servers in ``island`` off from every other server (both ways)."""
        self._island = frozenset(island)

    def heal(self) -> None:
        self._island = frozenset()

    def separates(self, origin: str, destination: str) -> bool:
        return (origin in self._island) != (destination in self._island)


def _origin(request: web.Request) -> str | None:
    for header in request.headers.getall("Authorization", []):
        if header.startswith("X-Matrix "):
            try:
                return parse_xmatrix_header(header).origin
            except XMatrixParseError:
                return None
    return None


class FederationGate:
    """The TLS front of one homeserver's federation listener, obeying a :class:`Partition`."""

    def __init__(self, partition: Partition) -> None:
        self.partition = partition
        self._held = HeldPort()
        self.port: int = self._held.port
        self.backend = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._directory = tempfile.TemporaryDirectory(prefix="mxfed-gate-")

    @property
    def server_name(self) -> str:
        """The name of the homeserver behind this gate."""
        return f"127.0.0.1:{self.port}"

    async def start(self, backend: str) -> None:
        """Serve, passing requests on to ``backend`` (``https://127.0.0.1:<port>``)."""
        self.backend = backend.rstrip("/")
        directory = Path(self._directory.name)
        ensure_tls_pair(directory / "tls.crt", directory / "tls.key", "127.0.0.1")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=180), auto_decompress=False
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.SockSite(self._runner, self._held.listening_socket(), ssl_context=context)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        self._held.release()
        self._directory.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        origin = _origin(request)
        if origin is not None and self.partition.separates(origin, self.server_name):
            return web.json_response(
                {"errcode": "M_UNKNOWN", "error": "netsplit (test partition)"}, status=502
            )
        assert self._session is not None
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in request.headers.items():
            if name.lower() in _REQUEST_HEADERS:
                headers.add(name, value)
        body = await request.read()
        async with self._session.request(
            request.method,
            URL(self.backend + request.raw_path, encoded=True),
            data=body or None,
            headers=headers,
            ssl=False,
            allow_redirects=False,
        ) as answer:
            payload = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() in _RESPONSE_HEADERS}
            return web.Response(status=answer.status, body=payload, headers=kept)
