"""The identity-server client goes through the federation client's connector: the IP
block list for every address it would reach, no redirects, https unless allowed.

Identity servers are named by local actors (``id_server``) and, worse, by
remote servers (``key_validity_url`` in an event): without these rules a
remote server could make us call anything on our own network.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from matrix_protocol.membership import MembershipError
from matrix_protocol.signing import generate_signing_key
from mxfed.blocked_ranges import DEFAULT_BLOCKED_IP_RANGES
from mxfed.config import Config
from mxfed.federation_client import FederationClient, OutboundOptions, StaticDnsResolver
from mxfed.federation_client.from_config import outbound_options
from services.events.third_party.identity import IdentityClient, KeyCheckFailed
from tests.support.identity_server import IdentityServer
from tests.support.ports import HeldPort

LOOPBACK = ["127.0.0.0/8"]


def _client(allowed: list[str], **options: object) -> FederationClient:
    # id.example and the redirect target resolve to loopback, like a hostile DNS name would.
    dns = StaticDnsResolver({"id.example": ["127.0.0.1"], "inside.example": ["10.1.2.3"]})
    return FederationClient(
        "us.example",
        generate_signing_key(),
        "ed25519:a",
        OutboundOptions(verify_tls=False, allowed_ip_ranges=allowed, **options),  # type: ignore[arg-type]
        dns=dns,
    )


@pytest.fixture
async def identity_server() -> AsyncIterator[IdentityServer]:
    async with IdentityServer() as server:
        yield server


class Redirector:
    """An HTTPS-less web server that answers every request with a redirect, and counts."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.requests = 0
        self.held = HeldPort()
        self.runner: web.AppRunner | None = None

    async def start(self) -> str:
        async def redirect(request: web.Request) -> web.Response:
            self.requests += 1
            raise web.HTTPFound(self.location)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", redirect)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.SockSite(self.runner, self.held.listening_socket()).start()
        return f"http://127.0.0.1:{self.held.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        self.held.release()


def test_one_block_list_for_every_outbound_request() -> None:
    assert Config().federation_blocked_ip_ranges == list(DEFAULT_BLOCKED_IP_RANGES)
    assert OutboundOptions().blocked_ip_ranges == list(DEFAULT_BLOCKED_IP_RANGES)
    assert outbound_options(Config()).blocked_ip_ranges == list(DEFAULT_BLOCKED_IP_RANGES)


async def test_loopback_and_private_targets_are_refused_unless_allowed(
    identity_server: IdentityServer,
) -> None:
    url = f"https://127.0.0.1:{identity_server.port}/_matrix/identity/v2/pubkey/isvalid"
    by_name = f"https://id.example:{identity_server.port}/_matrix/identity/v2/pubkey/isvalid"
    blocked = _client(allowed=[])
    try:
        for target in (url, by_name, "https://inside.example/_matrix/identity/v2"):
            with pytest.raises(KeyCheckFailed) as refused:
                await IdentityClient(blocked).check_key(target, identity_server.public_key)
            assert "blocked" in str(refused.value)
            assert not refused.value.answered
        with pytest.raises(MembershipError) as refused_invite:
            await IdentityClient(blocked).register(identity_server.host, {"access_token": "x"})
        assert refused_invite.value.status == 502 and "blocked" in refused_invite.value.message
    finally:
        await blocked.close()
    assert identity_server.requests == []

    allowed = _client(allowed=LOOPBACK)
    try:
        for target in (url, by_name):
            await IdentityClient(allowed).check_key(target, identity_server.public_key)
    finally:
        await allowed.close()
    assert len(identity_server.requests) == 2


async def test_http_only_when_the_operator_allows_it(identity_server: IdentityServer) -> None:
    plain = IdentityServer(tls=False)
    await plain.start()
    client = _client(allowed=LOOPBACK)
    try:
        url = f"{plain.base_url}/_matrix/identity/v2/pubkey/isvalid"
        assert url.startswith("http://")
        with pytest.raises(KeyCheckFailed) as refused:
            await IdentityClient(client).check_key(url, plain.public_key)
        assert "refusing http URL" in str(refused.value)
        assert plain.requests == []
        await IdentityClient(client, allow_http=True).check_key(url, plain.public_key)
        assert len(plain.requests) == 1
    finally:
        await client.close()
        await plain.stop()


async def test_a_redirect_is_never_followed(identity_server: IdentityServer) -> None:
    # Even with loopback allowed (the redirector itself is on loopback), the redirect to a
    # private address, or to the identity server, is not followed.
    for location in (
        "http://10.1.2.3/_matrix/identity/v2/pubkey/isvalid",
        f"https://127.0.0.1:{identity_server.port}/_matrix/identity/v2/pubkey/isvalid",
    ):
        redirector = Redirector(location)
        base = await redirector.start()
        client = _client(allowed=LOOPBACK)
        try:
            with pytest.raises(KeyCheckFailed) as refused:
                await IdentityClient(client, allow_http=True).check_key(
                    f"{base}/_matrix/identity/v2/pubkey/isvalid", identity_server.public_key
                )
            assert "redirects are not followed" in str(refused.value)
        finally:
            await client.close()
            await redirector.stop()
        assert redirector.requests == 1
    assert identity_server.requests == []
