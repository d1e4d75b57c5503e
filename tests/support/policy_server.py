"""A policy server for tests: ``POST /_matrix/policy/v1/sign`` on a fake homeserver.

It is a :class:`FakeHomeserver` (HTTPS on 127.0.0.1, its own published
server key, so it can also have a member join rooms) with a second key, the
policy key, that goes into rooms' ``m.room.policy`` and signs events under
``ed25519:policy_server`` (spec: "Validating Policy Server signatures").

What it answers: a signature, unless the event's content mentions "spam"
(400 ``M_FORBIDDEN``); with ``stall`` set it never answers
(until the caller's deadline). ``requests`` keeps every PDU asked about,
``authorizations`` the X-Matrix header of each request.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from matrix_protocol.canonical_json import encode_json
from matrix_protocol.events import Event
from matrix_protocol.policy_servers import POLICY_SERVER_KEY_ID
from matrix_protocol.redaction import redact
from matrix_protocol.room_versions import RoomVersion
from matrix_protocol.signing import encode_verify_key, generate_signing_key, sign_json
from tests.support.fake_homeserver import FakeHomeserver

SPAM = "spam"
REFUSAL = {"errcode": "M_FORBIDDEN", "error": "This looks like spam"}


class PolicyServer:
    def __init__(self, version: RoomVersion) -> None:
        # The room version of the rooms it signs for.
        self.version = version
        self._released = asyncio.Event()
        self.homeserver = FakeHomeserver(key_version="ps1")
        self.server_name = self.homeserver.server_name
        # Not its published server key (the spec advises keeping them apart).
        self.policy_key = generate_signing_key()
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str] = []
        self.stall = False
        self.homeserver.route("POST", "/_matrix/policy/v1/sign", self._sign)

    # The three attributes tests.support.events_service.RemoteServer signs PDUs with.
    @property
    def signing_key(self) -> Any:
        return self.homeserver.signing_key

    @property
    def key_id(self) -> str:
        return self.homeserver.key_id

    @property
    def public_key(self) -> str:
        return encode_verify_key(self.policy_key.verify_key)

    def policy_content(self) -> dict[str, Any]:
        """The ``m.room.policy`` content naming this policy server."""
        return {"via": self.server_name, "public_keys": {"ed25519": self.public_key}}

    def signature(self, pdu: dict[str, Any], version: RoomVersion) -> str:
        signed = sign_json(
            redact(pdu, version), self.policy_key, self.server_name, POLICY_SERVER_KEY_ID
        )
        return signed["signatures"][self.server_name][POLICY_SERVER_KEY_ID]

    def signed(self, pdu: dict[str, Any], version: RoomVersion) -> dict[str, Any]:
        """``pdu`` with this policy server's signature added (as its own /sign would)."""
        signatures = {k: dict(v) for k, v in pdu.get("signatures", {}).items()}
        signatures.setdefault(self.server_name, {})[POLICY_SERVER_KEY_ID] = self.signature(
            pdu, version
        )
        return {**pdu, "signatures": signatures}

    async def _sign(self, request: web.Request) -> web.StreamResponse:
        pdu = await request.json()
        self.requests.append(pdu)
        self.authorizations.append(request.headers.get("Authorization", ""))
        if self.stall:
            await self._released.wait()  # past the caller's deadline, until stop()
            return web.json_response({"errcode": "M_UNKNOWN"}, status=503)
        if SPAM in encode_json(pdu.get("content", {})).decode():
            return web.json_response(REFUSAL, status=400)
        return web.json_response(
            {self.server_name: {POLICY_SERVER_KEY_ID: self.signature(pdu, self.version)}}
        )

    def asked_about(self, event_id: str) -> bool:
        return any(Event.from_pdu(p, self.version).event_id == event_id for p in self.requests)

    async def start(self) -> None:
        await self.homeserver.start()

    async def stop(self) -> None:
        self._released.set()
        await self.homeserver.stop()


__all__ = ["REFUSAL", "SPAM", "PolicyServer"]
