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


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_config_options_are_the_ones_synapse_reads(synapse: SynapseServer) -> None:
    """Synapse silently ignores unknown keys: parse our config with Synapse's own loader."""
    from synapse.config.homeserver import HomeServerConfig

    cfg = HomeServerConfig.load_config("", ["-c", str(synapse.config_path)])
    assert cfg.server.server_name == synapse.server_name
    for ip in ("127.0.0.1", "127.1.2.3", "::1"):
        assert ip not in cfg.server.federation_ip_range_blocklist
    assert "0.0.0.0" in cfg.server.federation_ip_range_blocklist  # always added by Synapse
    assert cfg.tls.federation_verify_certificates is False
    assert cfg.key.key_servers == []
    fed = cfg.federation
    assert fed.destination_min_retry_interval_ms == 1000
    assert fed.destination_max_retry_interval_ms == 2000
    assert fed.max_long_retry_delay_ms == 2000
    assert fed.client_timeout_ms == 10_000
    rc = cfg.ratelimiting
    for setting in (rc.rc_message, rc.rc_joins_local, rc.rc_joins_remote, rc.rc_invites_per_room,
                    rc.rc_room_creation, rc.rc_registration, rc.rc_login_address):  # fmt: skip
        assert setting.burst_count >= 100_000, setting
    assert rc.rc_federation.reject_limit >= 100_000
    assert cfg.server.presence_enabled is False
    assert cfg.server.allow_public_rooms_over_federation is True
    assert cfg.roomdirectory.is_publishing_room_allowed("@a:x", "!r", [])
    assert cfg.server.default_room_version.identifier == "12"


async def test_two_synapses_federate(
    synapse: SynapseServer,
    synapse_v10: SynapseServer,
    synapse_client: SynapseClient,
    synapse_v10_client: SynapseClient,
) -> None:
    """Loopback federation between two harness servers (no trusted key server, self-signed
    TLS, 127.0.0.0/8 allowed): join over federation, message both ways, directory, keys."""
    a, b = synapse_client, synapse_v10_client
    alice, alice_tok = await a.register(_localpart("alice"))
    bob, bob_tok = await b.register(_localpart("bob"))

    room_id = await a.create_room(alice_tok, preset="public_chat", room_version="12")
    alias = f"#smoke_{secrets.token_hex(3)}:{synapse.server_name}"
    await a.put_room_alias(alice_tok, alias, room_id)
    await a.publish_room(alice_tok, room_id)
    await a.set_displayname(alice_tok, alice, "Alice")

    # v12 room ids have no server part: a join by id needs via=
    assert await b.join(bob_tok, room_id, via=[synapse.server_name]) == room_id
    await b.send_message(bob_tok, room_id, "hi from B")
    ev = await a.wait_for_event(
        alice_tok, room_id, lambda e: e.get("content", {}).get("body") == "hi from B"
    )
    assert ev["sender"] == bob
    eid = await a.send_message(alice_tok, room_id, "hi from A")
    await b.wait_for_event(bob_tok, room_id, lambda e: e.get("event_id") == eid)

    # a v10 room on B has a :server room id; A joins it by alias over federation
    room_v10 = await b.create_room(bob_tok, preset="public_chat", room_alias_name="v10smoke")
    assert room_v10.endswith(":" + synapse_v10.server_name)
    assert await a.join(alice_tok, f"#v10smoke:{synapse_v10.server_name}") == room_v10

    remote_dir = await b.public_rooms(bob_tok, server=synapse.server_name)
    assert room_id in {r["room_id"] for r in remote_dir["chunk"]}
    assert (await b.profile(alice, bob_tok))["displayname"] == "Alice"

    device_id = (await a.whoami(alice_tok))["device_id"]
    device_keys = {
        "user_id": alice,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {f"curve25519:{device_id}": "x" * 43, f"ed25519:{device_id}": "y" * 43},
        "signatures": {},
    }
    await a.upload_device_keys(alice_tok, device_keys=device_keys)
    got = await b.query_keys(bob_tok, {alice: []})
    assert device_id in got["device_keys"].get(alice, {}), got
