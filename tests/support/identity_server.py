"""An identity server for tests that stores invites and binds like Sydent does.

HTTPS (self-signed) or plain HTTP on 127.0.0.1. It serves:

* ``POST /_matrix/identity/v2/account/register`` — takes an OpenID token,
  checks it with the homeserver's ``/_matrix/federation/v1/openid/userinfo``
  (``https://<matrix_server_name>``, no certificate check: loopback tests)
  and hands out an access token.
* ``POST /_matrix/identity/v2/store-invite`` (Bearer token) — stores a
  pending invite and answers ``token``, ``public_key``, ``public_keys``
  (with ``key_validity_url``) and a redacted ``display_name``.
* ``GET /_matrix/identity/v2/pubkey/isvalid`` and ``.../ephemeral/isvalid``,
  ``GET /_matrix/identity/v2/pubkey/{keyId}``, ``GET /_matrix/identity/v2``.
* ``GET /_matrix/identity/v2/hash_details`` and ``POST .../lookup`` (Synapse
  looks an address up before storing an invite): bound addresses resolve.

:meth:`IdentityServer.bind` is what Sydent does once a user has proven they
own an address: for every pending invite it signs ``{mxid, token}`` with the
server's ed25519 key and POSTs ``/_matrix/federation/v1/3pid/onbind`` on
the mxid's server (as Sydent does; the spec says PUT, mxfed serves both).
:meth:`revoke` makes ``isvalid`` answer false.

``v1_disabled=True`` answers like Sydent with ``enable_v1_access = false``:
store-invite hands out a long-term and an ephemeral key whose
``key_validity_url``s are under ``/_matrix/identity/api/v1/``, where nothing
answers (this server serves no v1 path: 404).
"""

from __future__ import annotations

import secrets
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from matrix_protocol.encoding import encode_base64
from matrix_protocol.signing import generate_signing_key, sign_json
from mxfed.identity_files import ensure_tls_pair
from tests.support.ports import HeldPort

KEY_ID = "ed25519:0"


@dataclass
class PendingInvite:
    medium: str
    address: str
    room_id: str
    sender: str
    token: str
    request: dict[str, Any]


@dataclass
class IdentityServer:
    tls: bool = True
    v1_disabled: bool = False
    held_port: HeldPort = field(default_factory=HeldPort)
    signing_key: Any = field(default_factory=generate_signing_key)
    ephemeral_key: Any = field(default_factory=generate_signing_key)
    invites: list[PendingInvite] = field(default_factory=list)
    bindings: dict[tuple[str, str], str] = field(default_factory=dict)
    access_tokens: dict[str, str] = field(default_factory=dict)  # token -> mxid
    revoked: set[str] = field(default_factory=set)
    requests: list[tuple[str, str]] = field(default_factory=list)
    onbind_responses: list[httpx.Response] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._directory = tempfile.TemporaryDirectory()
        self._runner: web.AppRunner | None = None
        app = web.Application(middlewares=[self._record])
        v2 = "/_matrix/identity/v2"
        app.router.add_get(v2, self._status)
        app.router.add_post(v2 + "/account/register", self._register)
        app.router.add_post(v2 + "/store-invite", self._store_invite)
        app.router.add_get(v2 + "/pubkey/isvalid", self._isvalid)
        app.router.add_get(v2 + "/pubkey/ephemeral/isvalid", self._ephemeral_isvalid)
        app.router.add_get(v2 + "/pubkey/{key_id}", self._pubkey)
        app.router.add_get(v2 + "/hash_details", self._hash_details)
        app.router.add_post(v2 + "/lookup", self._lookup)
        self._app = app

    # ------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        return self.held_port.port

    @property
    def host(self) -> str:
        """What a homeserver is given as ``id_server`` (HTTPS implied)."""
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def server_name(self) -> str:
        return self.host

    @property
    def public_key(self) -> str:
        return encode_base64(bytes(self.signing_key.verify_key))

    @property
    def ephemeral_public_key(self) -> str:
        return encode_base64(bytes(self.ephemeral_key.verify_key))

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        context = None
        if self.tls:
            directory = Path(self._directory.name)
            ensure_tls_pair(directory / "tls.crt", directory / "tls.key", "127.0.0.1")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
        self._runner = web.AppRunner(self._app)
        await self._runner.setup()
        site = web.SockSite(self._runner, self.held_port.listening_socket(), ssl_context=context)
        await site.start()

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
        self.held_port.release()
        self._directory.cleanup()

    async def __aenter__(self) -> IdentityServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------ what Sydent does on a bind

    def sign_for(self, mxid: str, token: str) -> dict[str, Any]:
        return sign_json({"mxid": mxid, "token": token}, self.signing_key, self.server_name, KEY_ID)

    def onbind_body(self, medium: str, address: str, mxid: str) -> dict[str, Any]:
        invites = [
            {
                "medium": invite.medium,
                "address": invite.address,
                "mxid": mxid,
                "room_id": invite.room_id,
                "sender": invite.sender,
                "signed": self.sign_for(mxid, invite.token),
            }
            for invite in self.invites
            if (invite.medium, invite.address) == (medium, address)
        ]
        return {"medium": medium, "address": address, "mxid": mxid, "invites": invites}

    async def bind(
        self,
        medium: str,
        address: str,
        mxid: str,
        *,
        homeserver_url: str = "",
        method: str = "POST",
    ) -> httpx.Response:
        """Bind the address and call ``3pid/onbind`` on the mxid's server.

        Sydent POSTs (and Synapse serves only POST); the spec says PUT.
        """
        self.bindings[(medium, address)] = mxid
        body = self.onbind_body(medium, address, mxid)
        url = homeserver_url or f"https://{mxid.split(':', 1)[1]}"
        async with httpx.AsyncClient(verify=False, timeout=120) as client:
            response = await client.request(
                method, url + "/_matrix/federation/v1/3pid/onbind", json=body
            )
        self.onbind_responses.append(response)
        if response.status_code == 200:
            self.invites = [i for i in self.invites if (i.medium, i.address) != (medium, address)]
        return response

    def revoke(self) -> None:
        self.revoked.add(self.public_key)

    # ------------------------------------------------------------ handlers

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        return await handler(request)

    def _authorised(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else request.query.get("access_token")
        return self.access_tokens.get(token or "")

    @staticmethod
    def _error(status: int, errcode: str, error: str) -> web.Response:
        return web.json_response({"errcode": errcode, "error": error}, status=status)

    async def _status(self, _: web.Request) -> web.Response:
        return web.json_response({})

    async def _register(self, request: web.Request) -> web.Response:
        body = await request.json()
        server = body.get("matrix_server_name")
        token = body.get("access_token")
        if not isinstance(server, str) or not isinstance(token, str):
            return self._error(400, "M_MISSING_PARAMS", "matrix_server_name and access_token")
        async with httpx.AsyncClient(verify=False, timeout=30) as client:
            answer = await client.get(
                f"https://{server}/_matrix/federation/v1/openid/userinfo",
                params={"access_token": token},
            )
        user_id = answer.json().get("sub") if answer.status_code == 200 else None
        if not isinstance(user_id, str) or not user_id.endswith(":" + server):
            return self._error(401, "M_UNKNOWN_TOKEN", "the OpenID token did not verify")
        access_token = secrets.token_urlsafe(24)
        self.access_tokens[access_token] = user_id
        return web.json_response({"token": access_token, "access_token": access_token})

    async def _store_invite(self, request: web.Request) -> web.Response:
        if self._authorised(request) is None:
            return self._error(401, "M_UNAUTHORIZED", "access token required")
        body = await request.json()
        missing = [k for k in ("medium", "address", "room_id", "sender") if k not in body]
        if missing:
            return self._error(400, "M_MISSING_PARAMS", f"missing {missing}")
        if (body["medium"], body["address"]) in self.bindings:
            return self._error(400, "M_THREEPID_IN_USE", "already bound")
        token = secrets.token_urlsafe(24)
        self.invites.append(
            PendingInvite(
                body["medium"], body["address"], body["room_id"], body["sender"], token, body
            )
        )
        address = body["address"]
        local, _, domain = address.partition("@")
        display_name = f"{local[:2]}...@{domain}" if domain else address[:3] + "..."
        public_keys = [
            {
                "public_key": self.public_key,
                "key_validity_url": f"{self.base_url}/_matrix/identity/v2/pubkey/isvalid",
            }
        ]
        if self.v1_disabled:
            # What Sydent answers with enable_v1_access = false: v1 URLs, which 404.
            v1 = f"{self.base_url}/_matrix/identity/api/v1/pubkey"
            public_keys = [
                {"public_key": self.public_key, "key_validity_url": f"{v1}/isvalid"},
                {
                    "public_key": self.ephemeral_public_key,
                    "key_validity_url": f"{v1}/ephemeral/isvalid",
                },
            ]
        return web.json_response(
            {
                "token": token,
                "public_key": self.public_key,
                "public_keys": public_keys,
                "display_name": display_name,
            }
        )

    async def _isvalid(self, request: web.Request) -> web.Response:
        key = request.query.get("public_key", "")
        return web.json_response({"valid": key == self.public_key and key not in self.revoked})

    async def _ephemeral_isvalid(self, request: web.Request) -> web.Response:
        key = request.query.get("public_key", "")
        valid = key == self.ephemeral_public_key and key not in self.revoked
        return web.json_response({"valid": valid})

    async def _pubkey(self, request: web.Request) -> web.Response:
        if request.match_info["key_id"] != KEY_ID:
            return self._error(404, "M_NOT_FOUND", "unknown key")
        return web.json_response({"public_key": self.public_key})

    async def _hash_details(self, request: web.Request) -> web.Response:
        if self._authorised(request) is None:
            return self._error(401, "M_UNAUTHORIZED", "access token required")
        return web.json_response({"algorithms": ["none"], "lookup_pepper": "pepper"})

    async def _lookup(self, request: web.Request) -> web.Response:
        if self._authorised(request) is None:
            return self._error(401, "M_UNAUTHORIZED", "access token required")
        body = await request.json()
        mappings = {}
        for entry in body.get("addresses", []):
            address, _, medium = str(entry).rpartition(" ")
            if (medium, address) in self.bindings:
                mappings[entry] = self.bindings[(medium, address)]
        return web.json_response({"mappings": mappings})
