"""Server keys and X-Matrix against a real Synapse.

(a) Synapse fetches our key through its notary API; (b) Synapse accepts a
request we sign; (c) our gateway verifies a request Synapse signs and refuses
it tampered; (d) we fetch Synapse's key directly, and a third server's key
through Synapse as a notary.

For (c) Synapse has to send us a signed request and we have to see that it
verified. No route of the whole mxfed answers a profile query yet, so the
gateway app (``create_app``) runs here under a real uvicorn over TLS with one
test-only route behind ``require_origin`` that answers
``/_matrix/federation/v1/query/profile`` with ``displayname = "verified
<origin>"`` and records the raw request. A Synapse user's client-API profile
lookup of a user on that server then proves end to end that the gateway
verified Synapse's signature (the display name comes back through Synapse),
and the recorded request is replayed, tampered, against the same gateway.
The keys service behind it runs in-process on a gRPC port with the real
database.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import APIRouter, Depends, Request

from gateway.app import create_app
from gateway.responses import JsonResponse
from gateway.service_clients import ServiceClients
from gateway.xmatrix_auth import require_origin
from matrix_protocol.signing import decode_verify_key, verify_json_signature
from mxfed.clock import now_ms
from mxfed.config import Config, TrustedKeyServer
from mxfed.federation_client import FederationClient, OutboundOptions
from mxfed.identity_files import current_signing_key, ensure_tls_pair
from mxfed_api.keys.v1 import keys_pb2_grpc
from services.keys.keyring import KeyNeed
from services.keys.server import build_keyring
from services.keys.servicer import KeysServicer
from services.keys.storage import KeysStorage
from tests.support.federation_doctor import inert_doctor
from tests.support.grpc_plane import bind_loopback, make_server, plane_settings
from tests.support.mxfed_process import MxfedProcess
from tests.support.ports import HeldPort

pytestmark = [pytest.mark.interop, pytest.mark.whole_stack]

LOOPBACK = OutboundOptions(verify_tls=False, allowed_ip_ranges=["127.0.0.0/8"], max_retries=1)


def _http() -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=False, trust_env=False, timeout=30)


async def _our_keys(mxfed: MxfedProcess) -> dict[str, Any]:
    async with _http() as http:
        response = await http.get(f"{mxfed.federation_url}/_matrix/key/v2/server")
    assert response.status_code == 200, response.text
    return response.json()


async def test_synapse_fetches_our_key_as_notary(mxfed, synapse) -> None:
    ours = await _our_keys(mxfed)
    (key_id,) = ours["verify_keys"]
    async with _http() as http:
        response = await http.post(
            f"{synapse.federation_url}/_matrix/key/v2/query",
            json={
                "server_keys": {mxfed.server_name: {key_id: {"minimum_valid_until_ts": now_ms()}}}
            },
        )
    assert response.status_code == 200, response.text
    (obj,) = response.json()["server_keys"]
    assert obj["server_name"] == mxfed.server_name
    assert obj["verify_keys"][key_id]["key"] == ours["verify_keys"][key_id]["key"]
    verify_json_signature(
        obj, mxfed.server_name, key_id, decode_verify_key(ours["verify_keys"][key_id]["key"])
    )
    verify_json_signature(obj, synapse.server_name, synapse.signing_key_id, synapse.verify_key)


async def test_synapse_accepts_our_signed_request(mxfed, synapse, synapse_client) -> None:
    alice, token = await synapse_client.register(f"alice_{secrets.token_hex(4)}")
    await synapse_client.set_displayname(token, alice, "Alice of Synapse")
    key = current_signing_key(mxfed.data_dir / "signing.key")
    async with FederationClient(mxfed.server_name, key.signing_key, key.key_id, LOOPBACK) as fc:
        profile = await fc.get_json(
            synapse.server_name,
            "/_matrix/federation/v1/query/profile",
            query={"user_id": alice},
        )
    assert profile["displayname"] == "Alice of Synapse"


async def test_we_fetch_synapse_keys_directly(mxfed, synapse) -> None:
    ours = await _our_keys(mxfed)
    (our_key_id,) = ours["verify_keys"]
    async with _http() as http:
        response = await http.post(
            f"{mxfed.federation_url}/_matrix/key/v2/query",
            json={
                "server_keys": {
                    synapse.server_name: {
                        synapse.signing_key_id: {"minimum_valid_until_ts": now_ms()}
                    }
                }
            },
        )
    assert response.status_code == 200, response.text
    (obj,) = response.json()["server_keys"]
    assert obj["verify_keys"][synapse.signing_key_id]["key"] == synapse.verify_key_base64
    verify_json_signature(obj, synapse.server_name, synapse.signing_key_id, synapse.verify_key)
    verify_json_signature(
        obj,
        mxfed.server_name,
        our_key_id,
        decode_verify_key(ours["verify_keys"][our_key_id]["key"]),
    )


async def test_synapse_as_notary_for_a_server_that_went_down(
    synapse, make_keys, key_server_factory
) -> None:
    third = await key_server_factory()
    async with _http() as http:  # Synapse learns the third server's keys ...
        response = await http.post(
            f"{synapse.federation_url}/_matrix/key/v2/query",
            json={
                "server_keys": {
                    third.server_name: {third.key_id: {"minimum_valid_until_ts": now_ms()}}
                }
            },
        )
    assert [obj["server_name"] for obj in response.json()["server_keys"]] == [third.server_name]
    await third.stop()  # ... and then the server goes away.

    notary = TrustedKeyServer(
        server_name=synapse.server_name,
        verify_keys={synapse.signing_key_id: synapse.verify_key_base64},
    )
    keys = make_keys(config={"trusted_key_servers": [notary]})
    (key,) = await keys.keyring.lookup(KeyNeed(third.server_name, (third.key_id,), now_ms()))
    assert key.verify_key == third.verify_key_b64
    assert key.source == synapse.server_name


# -- (c) Synapse signs, our gateway verifies -----------------------------------------------

captured: list[dict[str, Any]] = []
profile_router = APIRouter()


@profile_router.get("/_matrix/federation/v1/query/profile")
async def verified_profile(request: Request, origin: str = Depends(require_origin)) -> JsonResponse:
    captured.append(
        {
            "target": request.scope["raw_path"].split(b"?")[0]
            + b"?"
            + request.scope["query_string"],
            "authorization": request.headers.getlist("authorization"),
        }
    )
    return JsonResponse({"displayname": f"verified {origin}"})


async def _serve_gateway(tmp: Path, keys_storage: KeysStorage) -> AsyncIterator[tuple[str, str]]:
    held = HeldPort()
    port = held.port
    config = Config(
        **plane_settings(),
        server_name=f"127.0.0.1:{port}",
        data_dir=tmp,
        federation_verify_tls=False,
        federation_allowed_ip_ranges=["127.0.0.0/8"],
    )
    key = current_signing_key(config.signing_key)
    client = FederationClient(config.server_name, key.signing_key, key.key_id, LOOPBACK)
    keyring, own_keys = build_keyring(config, keys_storage, client)
    grpc_server = make_server("keys")
    keys_pb2_grpc.add_KeysServicer_to_server(
        KeysServicer(keyring, own_keys, inert_doctor(config, own_keys)), grpc_server
    )
    config.keys_address = bind_loopback(grpc_server, "keys")
    await grpc_server.start()
    clients = ServiceClients(config)
    app = create_app(config, clients)
    app.include_router(profile_router)
    # Ahead of the gateway's real /query/profile route, so this test's handler answers.
    app.router.routes.insert(0, app.router.routes.pop())
    ensure_tls_pair(config.tls_certificate, config.tls_private_key, config.server_name)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            ssl_certfile=str(config.tls_certificate),
            ssl_keyfile=str(config.tls_private_key),
            log_config=None,
            access_log=False,
            loop="none",
            lifespan="off",
        )
    )
    task = asyncio.create_task(server.serve(sockets=[held.listening_socket()]))
    while not server.started:
        assert not task.done(), task
        await asyncio.sleep(0.05)
    try:
        yield config.server_name, f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        await clients.close()
        await client.close()
        await grpc_server.stop(grace=None)
        held.release()


@pytest.fixture
async def test_gateway(tmp_path: Path, keys_storage: KeysStorage) -> AsyncIterator[tuple[str, str]]:
    async for served in _serve_gateway(tmp_path, keys_storage):
        yield served


async def test_gateway_verifies_synapse_requests(synapse, synapse_client, test_gateway) -> None:
    server_name, url = test_gateway
    _, token = await synapse_client.register(f"bob_{secrets.token_hex(4)}")
    captured.clear()
    profile = await synapse_client.profile(f"@someone:{server_name}", token)
    assert profile.get("displayname") == f"verified {synapse.server_name}"
    (request,) = captured
    target = request["target"].decode()
    assert "user_id=%40someone%3A127.0.0.1" in target

    async def replay(target: str, body: bytes | None = None) -> httpx.Response:
        async with _http() as http:
            return await http.request(
                "GET",
                url + target,
                content=body,
                headers=[("Authorization", value) for value in request["authorization"]],
            )

    response = await replay(target)
    assert response.status_code == 200, response.text
    assert response.json() == {"displayname": f"verified {synapse.server_name}"}

    tampered = target.replace("%40someone", "%40someone_else")
    assert tampered != target
    response = await replay(tampered)
    assert (response.status_code, response.json()["errcode"]) == (401, "M_UNAUTHORIZED")
    response = await replay(target, b"{}")
    assert (response.status_code, response.json()["errcode"]) == (401, "M_UNAUTHORIZED")
