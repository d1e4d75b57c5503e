"""Smoke test for the Synapse harness: client API round trip and the server's key."""

from __future__ import annotations

import secrets

import httpx
import pytest
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json
from synapse_harness import SynapseClient, SynapseServer
from unpaddedbase64 import decode_base64

pytestmark = pytest.mark.interop


def _localpart(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


async def test_register_room_message_roundtrip(
    synapse: SynapseServer, synapse_client: SynapseClient
) -> None:
    alice, alice_tok = await synapse_client.register(_localpart("alice"))
    bob, bob_tok = await synapse_client.register(_localpart("bob"))
    assert alice.endswith(":" + synapse.server_name)
    assert bob.endswith(":" + synapse.server_name)

    room_id = await synapse_client.create_room(alice_tok, preset="public_chat", name="smoke")
    await synapse_client.join(bob_tok, room_id, via=[synapse.server_name])
    event_id = await synapse_client.send_message(alice_tok, room_id, "hello from alice")

    resp = await synapse_client.messages(bob_tok, room_id, dir="b", limit=5)
    bodies = {ev["event_id"]: ev.get("content", {}).get("body") for ev in resp["chunk"]}
    assert bodies.get(event_id) == "hello from alice"

    ev = await synapse_client.wait_for_event(
        bob_tok, room_id, lambda e: e.get("event_id") == event_id, timeout=10
    )
    assert ev["sender"] == alice

    state = await synapse_client.state(alice_tok, room_id)
    members = {e["state_key"] for e in state if e["type"] == "m.room.member"}
    assert members == {alice, bob}


async def test_server_key_is_self_signed(synapse: SynapseServer) -> None:
    async with httpx.AsyncClient(verify=False, trust_env=False) as http:
        r = await http.get(f"{synapse.federation_url}/_matrix/key/v2/server")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["server_name"] == synapse.server_name
    key_id = synapse.signing_key_id
    assert key_id in body["verify_keys"]
    assert body["verify_keys"][key_id]["key"] == synapse.verify_key_base64

    alg, version = key_id.split(":", 1)
    verify_key = decode_verify_key_bytes(key_id, decode_base64(body["verify_keys"][key_id]["key"]))
    assert (verify_key.alg, verify_key.version) == (alg, version)
    verify_signed_json(body, synapse.server_name, verify_key)  # raises on a bad signature

    # A tampered response must not verify.
    tampered = dict(body, valid_until_ts=body["valid_until_ts"] + 1)
    with pytest.raises(SignatureVerifyException):
        verify_signed_json(tampered, synapse.server_name, verify_key)


def test_server_facts(synapse: SynapseServer) -> None:
    assert synapse.running
    assert synapse.server_name == f"127.0.0.1:{synapse.fed_port}"
    assert synapse.log_path.exists()
    rss = synapse.rss_bytes()
    assert rss and rss > 10_000_000
    print(
        f"\nsynapse startup {synapse.startup_seconds:.2f}s, RSS {rss / 1e6:.0f} MB, "
        f"key {synapse.signing_key_id}"
    )
