"""Checking an invite's keys with a real (test) identity server, picky like Sydent
with ``enable_v1_access = false``: it hands out v1 ``key_validity_url``s that 404.

Each key of the invite is tried in turn until one verifies the ``signed``
block and is confirmed valid; every failed check is logged with its cause.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from matrix_protocol.membership import MembershipError
from matrix_protocol.signing import generate_signing_key
from mxfed.federation_client import FederationClient, OutboundOptions
from services.events.third_party.identity import IdentityClient, key_validity_url
from services.events.third_party.logic import check_invite_keys
from tests.support.identity_server import IdentityServer


@pytest.fixture
async def picky() -> AsyncIterator[IdentityServer]:
    async with IdentityServer(v1_disabled=True) as server:
        yield server


@pytest.fixture
async def identity() -> AsyncIterator[IdentityClient]:
    client = FederationClient(
        "remote.example",
        generate_signing_key(),
        "ed25519:a",
        OutboundOptions(verify_tls=False, allowed_ip_ranges=["127.0.0.0/8"]),
    )
    yield IdentityClient(client)
    await client.close()


def _v1(server: IdentityServer) -> str:
    return f"{server.base_url}/_matrix/identity/api/v1/pubkey/isvalid"


def _signed(server: IdentityServer) -> dict[str, Any]:
    return server.sign_for("@dan:remote.example", "token")


async def test_a_key_whose_check_404s_is_skipped_for_the_next(
    picky: IdentityServer, identity: IdentityClient, caplog: pytest.LogCaptureFixture
) -> None:
    v2 = key_validity_url(picky.base_url)
    content = {
        "public_key": picky.public_key,
        "key_validity_url": _v1(picky),  # as an inviting server that copied Sydent's URL
        "public_keys": [
            {"public_key": picky.ephemeral_public_key, "key_validity_url": v2},
            {"public_key": picky.public_key, "key_validity_url": v2},
        ],
    }
    with caplog.at_level(logging.INFO, logger="services.events.third_party.logic"):
        await check_invite_keys(identity, _signed(picky), content)
    checks = [path for method, path in picky.requests if method == "GET"]
    # The v1 URL was asked first (404); the ephemeral key does not verify the
    # signature, so it is not checked; the long-term key's v2 URL confirms it.
    assert checks == [
        "/_matrix/identity/api/v1/pubkey/isvalid",
        "/_matrix/identity/v2/pubkey/isvalid",
    ]
    (record,) = [r for r in caplog.records if "not confirmed" in r.getMessage()]
    assert "404" in record.error  # type: ignore[attr-defined]


async def test_no_confirmed_key_is_refused_with_every_cause(
    picky: IdentityServer, identity: IdentityClient
) -> None:
    content = {
        "public_key": picky.public_key,
        "key_validity_url": _v1(picky),
        "public_keys": [
            {"public_key": picky.public_key, "key_validity_url": key_validity_url(picky.base_url)}
        ],
    }
    picky.revoke()
    with pytest.raises(MembershipError) as refused:
        await check_invite_keys(identity, _signed(picky), content)
    assert (refused.value.status, refused.value.errcode) == (403, "M_FORBIDDEN")
    assert "404" in refused.value.message and "not valid" in refused.value.message


async def test_an_unreachable_identity_server_is_a_502(
    picky: IdentityServer, identity: IdentityClient, refused_port: int
) -> None:
    unreachable = f"https://127.0.0.1:{refused_port}/_matrix/identity/v2/pubkey/isvalid"
    content = {"public_key": picky.public_key, "key_validity_url": unreachable}
    with pytest.raises(MembershipError) as failed:
        await check_invite_keys(identity, _signed(picky), content)
    assert failed.value.status == 502


async def test_no_key_verifying_the_signature_is_refused(
    picky: IdentityServer, identity: IdentityClient
) -> None:
    content = {"public_key": picky.ephemeral_public_key, "key_validity_url": _v1(picky)}
    with pytest.raises(MembershipError) as refused:
        await check_invite_keys(identity, _signed(picky), content)
    assert refused.value.status == 403 and "no signature" in refused.value.message
    assert [path for method, path in picky.requests if method == "GET"] == []
