"""Real HTTPS key servers on loopback for keys tests: origins and notaries.

A ``FakeKeyServer`` publishes ``/_matrix/key/v2/server`` for its server name
``127.0.0.1:<port>`` with a self-signed certificate. ``mode`` makes it
misbehave (bad self-signature, wrong ``server_name``, expired
``valid_until_ts``, HTTP 500). It also answers ``/_matrix/key/v2/query`` as a
notary from ``notary_cache`` (objects it countersigns). ``requests`` counts
the requests per path.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

import nacl.signing
from aiohttp import web

from matrix_protocol.signing import encode_verify_key, sign_json
from mxfed.clock import now_ms
from mxfed.identity_files import ensure_tls_pair
from tests.support.ports import HeldPort

HOUR_MS = 3600 * 1000


class FakeKeyServer:
    def __init__(self, tls_dir: Path, key_version: str = "fake1") -> None:
        self._port = HeldPort()
        self.port = self._port.port
        self.server_name = f"127.0.0.1:{self.port}"
        self.signing_key = nacl.signing.SigningKey.generate()
        self.key_id = f"ed25519:{key_version}"
        self.old_keys: dict[str, dict[str, Any]] = {}
        self.mode = "good"
        self.valid_until_ts: int | None = None
        self.delay = 0.0
        # When set, /_matrix/key/v2/server answers only once every party has arrived.
        self.barrier: asyncio.Barrier | None = None
        self.requests: Counter[str] = Counter()
        self.notary_cache: dict[str, dict[str, Any]] = {}
        self.notary_queries: list[Any] = []
        self._tls_dir = tls_dir
        self._runner: web.AppRunner | None = None

    @property
    def verify_key_b64(self) -> str:
        return encode_verify_key(self.signing_key.verify_key)

    def sign(self, obj: dict[str, Any], key: nacl.signing.SigningKey | None = None) -> dict:
        return sign_json(obj, key or self.signing_key, self.server_name, self.key_id)

    def key_json(self) -> dict[str, Any]:
        valid_until_ts = self.valid_until_ts or now_ms() + HOUR_MS
        if self.mode == "expired":
            valid_until_ts = now_ms() - HOUR_MS
        obj = {
            "server_name": self.server_name,
            "verify_keys": {self.key_id: {"key": self.verify_key_b64}},
            "old_verify_keys": self.old_keys,
            "valid_until_ts": valid_until_ts,
        }
        if self.mode == "bad_signature":
            return self.sign(obj, nacl.signing.SigningKey.generate())
        if self.mode == "wrong_server_name":
            signed = self.sign({**obj, "server_name": "evil.example"})
            return signed
        return self.sign(obj)

    async def _server_keys(self, _: web.Request) -> web.Response:
        self.requests["server"] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.barrier is not None:
            await asyncio.wait_for(self.barrier.wait(), 10)
        if self.mode == "error":
            return web.json_response({"errcode": "M_UNKNOWN", "error": "down"}, status=500)
        return web.json_response(self.key_json())

    async def _query(self, request: web.Request) -> web.Response:
        self.requests["query"] += 1
        body = await request.json()
        self.notary_queries.append(body)
        answers = [
            self.sign(obj)
            for server_name, obj in self.notary_cache.items()
            if server_name in body.get("server_keys", {})
        ]
        return web.json_response({"server_keys": answers})

    async def start(self) -> FakeKeyServer:
        cert, key = self._tls_dir / "tls.crt", self._tls_dir / "tls.key"
        ensure_tls_pair(cert, key, "127.0.0.1")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        app = web.Application()
        app.router.add_get("/_matrix/key/v2/server", self._server_keys)
        app.router.add_post("/_matrix/key/v2/query", self._query)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.SockSite(self._runner, self._port.listening_socket(), ssl_context=context)
        await site.start()
        return self

    async def stop(self) -> None:
        """Stop serving; the port stays held (connections are refused) until :meth:`close`."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def close(self) -> None:
        await self.stop()
        self._port.release()
