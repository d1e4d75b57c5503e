"""Test helpers for ``mxfed doctor``: real HTTPS federation servers that
misbehave on request, and a doctor wired to them.

Server names like ``fed.test`` are pointed at 127.0.0.1 through the doctor's
injected DNS (``StaticDnsResolver``), never real DNS. Certificates come from
a throwaway CA that the doctor's configuration trusts (``federation_ca_file``),
so TLS is verified as in production.
"""

from __future__ import annotations

import dataclasses
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nacl.signing
import orjson
from aiohttp import web

from matrix_protocol.signing import encode_verify_key, sign_json
from mxfed.config import Config, TrustedKeyServer
from mxfed.federation_client import StaticDnsResolver
from mxfed.federation_client.from_config import outbound_options
from services.keys.doctor.diagnosis import FederationDoctor
from services.keys.doctor.report import StepId, StepResult
from services.keys.doctor.servicer import DoctorRpc
from services.keys.doctor.sources import DeliveryState, RoomAccess
from services.keys.keyring import Notary
from services.keys.own_keys import OwnKeys
from services.keys.storage import KeysStorage
from tests.support.pki import IssuedCertificate

US = "doctor.test"
HOUR_MS = 3600 * 1000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeFederationServer:
    """An HTTPS federation server for ``server_name``, misbehaving on request.

    Serves the well-known (``well_known``: a handler, default 404), the
    version (``date`` overrides its Date header), its signed keys (valid for
    ``keys_valid_for_ms``, negative: expired; ``bad_key_signature``; or
    ``published_keys`` as they are), and notary queries
    (``POST /_matrix/key/v2/query``) from ``notary_keys``.
    """

    def __init__(self, certificate: IssuedCertificate, server_name: str = "fed.test") -> None:
        self.certificate = certificate
        self.server_name = server_name
        self.signing_key = nacl.signing.SigningKey.generate()
        self.key_id = "ed25519:fake1"
        self.well_known: Handler | None = None
        self.date: str | None = None
        self.keys_valid_for_ms = 24 * HOUR_MS
        self.bad_key_signature = False
        self.published_keys: dict[str, Any] | None = None
        self.notary_keys: dict[str, dict[str, Any]] = {}
        self.paths: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    def sign(self, obj: dict[str, Any]) -> dict[str, Any]:
        return sign_json(obj, self.signing_key, self.server_name, self.key_id)

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.paths.append(request.path)
        return await handler(request)

    async def _well_known(self, request: web.Request) -> web.StreamResponse:
        if self.well_known is None:
            return web.json_response({"errcode": "M_NOT_FOUND"}, status=404)
        return await self.well_known(request)

    async def _version(self, _: web.Request) -> web.StreamResponse:
        response = web.json_response({"server": {"name": "Fake", "version": "0.1"}})
        if self.date is not None:
            response.headers["Date"] = self.date
        return response

    async def _server_keys(self, _: web.Request) -> web.StreamResponse:
        if self.published_keys is not None:
            return web.json_response(self.published_keys)
        obj = {
            "server_name": self.server_name,
            "verify_keys": {self.key_id: {"key": encode_verify_key(self.signing_key.verify_key)}},
            "old_verify_keys": {},
            "valid_until_ts": int(time.time() * 1000) + self.keys_valid_for_ms,
        }
        signed = self.sign(obj)
        if self.bad_key_signature:
            signed = sign_json(
                obj, nacl.signing.SigningKey.generate(), self.server_name, self.key_id
            )
        return web.json_response(signed)

    async def _query(self, request: web.Request) -> web.StreamResponse:
        wanted = (await request.json()).get("server_keys", {})
        found = [self.sign(keys) for name, keys in self.notary_keys.items() if name in wanted]
        return web.json_response({"server_keys": found})

    async def start(self) -> FakeFederationServer:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certificate.cert_file, self.certificate.key_file)
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/.well-known/matrix/server", self._well_known)
        app.router.add_route("*", "/.well-known/{tail:.*}", self._well_known)
        app.router.add_get("/_matrix/federation/v1/version", self._version)
        app.router.add_get("/_matrix/key/v2/server", self._server_keys)
        app.router.add_post("/_matrix/key/v2/query", self._query)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@dataclass
class KnownDeliveries:
    states: dict[str, DeliveryState] = field(default_factory=dict)

    async def delivery_state(self, server_name: str) -> DeliveryState | None:
        return self.states.get(server_name)


@dataclass
class KnownRooms:
    access: dict[str, RoomAccess] = field(default_factory=dict)

    async def room_access(self, room_id: str, server_name: str) -> RoomAccess:
        return self.access.get(room_id, RoomAccess(False, False, "unknown room"))


@dataclass
class DoctorUnderTest:
    config: Config
    storage: KeysStorage
    dns: StaticDnsResolver
    deliveries: KnownDeliveries
    rooms: KnownRooms
    well_known_port: int = 443
    config_changes: dict[str, Any] = field(default_factory=dict)
    clock: Callable[[], float] = time.time

    @property
    def own_keys(self) -> OwnKeys:
        return OwnKeys(self.config.model_copy(update=self.config_changes), self.storage)

    def doctor(self) -> FederationDoctor:
        config = self.config.model_copy(update=self.config_changes)
        options = dataclasses.replace(
            outbound_options(config), well_known_port=self.well_known_port
        )
        notaries = [
            Notary.from_config(trusted)
            for trusted in config.trusted_key_servers
            if trusted.verify_keys
        ]
        return FederationDoctor(
            config,
            OwnKeys(config, self.storage),
            options,
            self.deliveries,
            self.rooms,
            notaries,
            dns=lambda: self.dns,
            clock=self.clock,
        )

    async def run(self, server_name: str = "", room_ids: tuple[str, ...] = ()) -> Report:
        steps = [step async for step in self.doctor().diagnose(server_name, room_ids)]
        return Report(steps)

    async def our_signed_keys(self) -> dict[str, Any]:
        result: dict[str, Any] = orjson.loads((await self.own_keys.server_keys()).json)
        return result

    def trust_notary(self, server: FakeFederationServer) -> None:
        self.config_changes["trusted_key_servers"] = [
            TrustedKeyServer(
                server_name=server.server_name,
                verify_keys={server.key_id: encode_verify_key(server.signing_key.verify_key)},
            )
        ]


@dataclass
class Report:
    steps: list[StepResult]

    def __getitem__(self, step: StepId) -> StepResult:
        (found,) = [result for result in self.steps if result.step is step]
        return found

    def outcomes(self) -> dict[str, str]:
        return {result.step.value: result.outcome.value for result in self.steps}


def inert_doctor(config: Config, own_keys: OwnKeys) -> DoctorRpc:
    """The doctor RPC of a keys service under test that is not about the doctor:
    real checks, no sender or events service behind it."""
    return DoctorRpc(
        FederationDoctor(
            config, own_keys, outbound_options(config), KnownDeliveries(), KnownRooms()
        )
    )
