"""``require_tls_client_certificate_match`` against a real gateway over TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.fake_homeserver import FakeHomeserver
from tests.support.mxfed_process import MxfedProcess

pytestmark = pytest.mark.whole_stack


@pytest.fixture
async def remote() -> AsyncIterator[FakeHomeserver]:
    server = FakeHomeserver()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def strict_mxfed(tmp_path: Path, own_database_url: str, remote: FakeHomeserver):
    process = MxfedProcess(
        tmp_path / "data",
        own_database_url,
        extra_config={
            "require_tls_client_certificate_match": True,
            "tls_client_ca_file": str(remote.tls_certificate),
        },
    )
    process.start()
    yield process
    process.stop()


async def test_signed_requests_need_the_origins_client_certificate(
    strict_mxfed: MxfedProcess, remote: FakeHomeserver
) -> None:
    uri = "/_matrix/federation/v1/event/%24nothing-here"

    async def get(client_certificate: bool):
        return await remote.federation_request(
            strict_mxfed.federation_url,
            strict_mxfed.server_name,
            "GET",
            uri,
            client_certificate=client_certificate,
        )

    without = await get(client_certificate=False)
    assert without.status_code == 401
    assert without.json()["errcode"] == "M_UNAUTHORIZED"
    with_certificate = await get(client_certificate=True)
    # Authenticated: the event is simply unknown.
    assert with_certificate.status_code == 404
    assert with_certificate.json()["errcode"] == "M_NOT_FOUND"
