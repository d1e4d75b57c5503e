"""A remote homeserver for tests that signs like a real one.

It serves its own keys at ``/_matrix/key/v2/server`` over HTTPS on
127.0.0.1 (so mxfed's key service can fetch them), builds and signs PDUs for
any room version, and signs X-Matrix requests. Tests add routes to play the
receiving side of federation (``/send``, ``make_join``...) and can record
the requests they get.
"""

from __future__ import annotations

import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from matrix_protocol.canonical_json import encode_json
from matrix_protocol.encoding import encode_base64
from matrix_protocol.events import Event
from matrix_protocol.room_versions import RoomVersion
from matrix_protocol.signing import generate_signing_key, sign_event, sign_json
from matrix_protocol.xmatrix import sign_request
from mxfed.identity_files import ensure_tls_pair
from tests.support.ports import HeldPort

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeHomeserver:
    def __init__(self, *, key_version: str = "fake1") -> None:
        self._port = HeldPort()
        self.port = self._port.port
        self.server_name = f"127.0.0.1:{self.port}"
        self.signing_key = generate_signing_key()
        self.key_id = f"ed25519:{key_version}"
        self.requests: list[web.Request] = []
        self.bodies: list[Any] = []
        self._directory = tempfile.TemporaryDirectory()
        self._app = web.Application()
        self._app.router.add_get("/_matrix/key/v2/server", self._serve_keys)
        self._runner: web.AppRunner | None = None
        self._client: httpx.AsyncClient | None = None
        self._clock = 0

    # Serving -----------------------------------------------------------------

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Add a handler before ``start()`` (aiohttp path syntax, e.g. ``{txn_id}``)."""
        self._app.router.add_route(method, path, handler)

    def server_keys(self, valid_for_ms: int = 24 * 3600 * 1000) -> dict[str, Any]:
        keys = {
            "server_name": self.server_name,
            "verify_keys": {
                self.key_id: {"key": encode_base64(bytes(self.signing_key.verify_key))}
            },
            "old_verify_keys": {},
            "valid_until_ts": int(time.time() * 1000) + valid_for_ms,
        }
        return sign_json(keys, self.signing_key, self.server_name, self.key_id)

    async def _serve_keys(self, _: web.Request) -> web.Response:
        return web.json_response(self.server_keys())

    @property
    def tls_certificate(self) -> Path:
        return Path(self._directory.name) / "tls.crt"

    @property
    def tls_private_key(self) -> Path:
        return Path(self._directory.name) / "tls.key"

    async def start(self) -> None:
        directory = Path(self._directory.name)
        ensure_tls_pair(self.tls_certificate, self.tls_private_key, "127.0.0.1")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
        self._runner = web.AppRunner(self._app)
        await self._runner.setup()
        site = web.SockSite(self._runner, self._port.listening_socket(), ssl_context=context)
        await site.start()

    async def go_down(self) -> None:
        """Stop serving, keeping the port: connections are refused until ``start()``."""
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    async def stop(self) -> None:
        if self._client:
            await self._client.aclose()
        if self._runner:
            await self._runner.cleanup()
        self._port.release()
        self._directory.cleanup()

    # Events ------------------------------------------------------------------

    def user(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    def next_ts(self) -> int:
        """Strictly increasing timestamps, so test DAGs order predictably."""
        self._clock = max(self._clock + 1, int(time.time() * 1000))
        return self._clock

    def sign_pdu(self, pdu: dict[str, Any], room_version: RoomVersion) -> dict[str, Any]:
        return sign_event(pdu, self.signing_key, self.server_name, self.key_id, room_version)

    def build_pdu(
        self,
        room_version: RoomVersion,
        *,
        room_id: str,
        sender: str,
        event_type: str,
        content: dict[str, Any],
        prev_events: list[str],
        auth_events: list[str],
        depth: int,
        state_key: str | None = None,
        **extra: Any,
    ) -> tuple[str, dict[str, Any]]:
        """A signed PDU for a v3+ room and its event id."""
        pdu: dict[str, Any] = {
            "room_id": room_id,
            "sender": sender,
            "type": event_type,
            "content": content,
            "prev_events": prev_events,
            "auth_events": auth_events,
            "depth": depth,
            "origin_server_ts": self.next_ts(),
            **extra,
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        signed = self.sign_pdu(pdu, room_version)
        return Event.from_pdu(signed, room_version).event_id, signed

    # Requests ----------------------------------------------------------------

    def authorization(
        self, method: str, destination: str, uri: str, content: Any | None = None
    ) -> str:
        return sign_request(
            method, uri, self.server_name, destination, content, self.signing_key, self.key_id
        )

    async def federation_request(
        self,
        base_url: str,
        destination: str,
        method: str,
        uri: str,
        content: Any | None = None,
        *,
        client_certificate: bool = False,
    ) -> httpx.Response:
        """Send a signed request to ``base_url`` (e.g. mxfed's gateway).

        ``client_certificate``: present this server's TLS certificate, on a
        connection of its own.
        """
        headers = {"Authorization": self.authorization(method, destination, uri, content)}
        body = None
        if content is not None:
            headers["Content-Type"] = "application/json"
            body = encode_json(content)
        if client_certificate:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.load_cert_chain(self.tls_certificate, self.tls_private_key)
            async with httpx.AsyncClient(verify=context, timeout=30) as client:
                return await client.request(method, base_url + uri, headers=headers, content=body)
        # One client, so connections (and TLS sessions) are reused like a real server's.
        if self._client is None:
            self._client = httpx.AsyncClient(verify=False, timeout=30)
        return await self._client.request(method, base_url + uri, headers=headers, content=body)
