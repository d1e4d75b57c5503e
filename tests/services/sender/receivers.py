"""Remote servers that receive our transactions: FakeHomeservers with a ``/send`` route.

Each checks the X-Matrix signature of every request against our verify key
(a request that does not verify gets 401 and is not recorded), records every
attempt, and treats a txn id it has already answered 200 as a retry (the
events are not counted again), like a real receiver.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import nacl.signing
from aiohttp import web

from matrix_protocol.signing import SignatureError
from matrix_protocol.xmatrix import XMatrixParseError, parse_xmatrix_header, verify_request
from tests.support.fake_homeserver import FakeHomeserver


@dataclass
class Attempt:
    txn_id: str
    body: dict[str, Any]
    status: int


def pdu_ids(body: dict[str, Any]) -> list[str]:
    """Test PDUs carry their id in ``content.id`` (others are not counted)."""
    ids = (pdu.get("content", {}).get("id") for pdu in body.get("pdus", []))
    return [pdu_id for pdu_id in ids if isinstance(pdu_id, str)]


@dataclass
class Receiver:
    origin: str
    verify_key: nacl.signing.VerifyKey
    fake: FakeHomeserver = field(default_factory=FakeHomeserver)
    attempts: list[Attempt] = field(default_factory=list)
    delivered: dict[str, dict[str, Any]] = field(default_factory=dict)  # txn id -> body
    arrived: list[str] = field(default_factory=list)  # txn ids, when a request comes in
    # Behaviour switches for tests.
    fail_next: int = 0
    fail_status: int = 500
    fail_body: dict[str, Any] = field(default_factory=dict)
    fail_headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    # When set, every /send waits for this event before answering.
    release: asyncio.Event | None = None
    bad_signatures: int = 0
    up: bool = False

    def __post_init__(self) -> None:
        self.fake.route("PUT", "/_matrix/federation/v1/send/{txn_id}", self._send)

    @property
    def server_name(self) -> str:
        return self.fake.server_name

    async def start(self) -> Receiver:
        await self.fake.start()
        self.up = True
        return self

    async def go_down(self) -> None:
        await self.fake.go_down()
        self.up = False

    async def come_back(self) -> None:
        await self.fake.start()
        self.up = True

    async def stop(self) -> None:
        self.up = False
        await self.fake.stop()

    async def _send(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw)
        txn_id = request.match_info["txn_id"]
        try:
            credentials = parse_xmatrix_header(request.headers.get("Authorization", ""))
            if credentials.origin != self.origin:
                raise SignatureError(f"unexpected origin {credentials.origin}")
            verify_request(
                credentials,
                request.method,
                request.raw_path,
                self.server_name,
                body,
                self.verify_key,
            )
        except (XMatrixParseError, SignatureError) as exc:
            self.bad_signatures += 1
            return web.json_response({"errcode": "M_UNAUTHORIZED", "error": str(exc)}, status=401)
        self.arrived.append(txn_id)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.release is not None:
            await self.release.wait()
        if self.fail_next > 0:
            self.fail_next -= 1
            self.attempts.append(Attempt(txn_id, body, self.fail_status))
            return web.json_response(
                self.fail_body, status=self.fail_status, headers=self.fail_headers
            )
        self.attempts.append(Attempt(txn_id, body, 200))
        if txn_id in self.delivered:
            assert self.delivered[txn_id] == body, "a txn id was reused with other contents"
        else:
            self.delivered[txn_id] = body
        return web.json_response({"pdus": {pdu_id: {} for pdu_id in pdu_ids(body)}})

    # What arrived ----------------------------------------------------------------

    def pdu_ids(self) -> list[str]:
        """Every PDU id delivered, in arrival order, counting each transaction once."""
        return [pdu_id for body in self.delivered.values() for pdu_id in pdu_ids(body)]

    def pdus(self) -> list[dict[str, Any]]:
        return [pdu for body in self.delivered.values() for pdu in body.get("pdus", [])]

    def edus(self) -> list[dict[str, Any]]:
        return [edu for body in self.delivered.values() for edu in body.get("edus", [])]
