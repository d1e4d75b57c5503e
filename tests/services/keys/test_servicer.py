"""The Keys gRPC service on a real port: every RPC, batch verification rates."""

from __future__ import annotations

import asyncio
import time

import orjson

from matrix_protocol.canonical_json import encode_json
from matrix_protocol.signing import decode_verify_key, signing_payload, verify_json_signature
from matrix_protocol.xmatrix import parse_xmatrix_header, sign_request
from mxfed.clock import now_ms
from mxfed.identity_files import parse_signing_key
from mxfed_api.keys.v1 import keys_pb2
from tests.support.key_servers import HOUR_MS
from tests.support.keys_service import OUR_SERVER


def _verify_self_signed(obj: dict, server_name: str) -> None:
    for key_id, entry in obj["verify_keys"].items():
        verify_json_signature(obj, server_name, key_id, decode_verify_key(entry["key"]))


async def _own_keys(stub) -> dict:
    reply = await stub.QueryOwnServerKeys(keys_pb2.QueryOwnServerKeysRequest())
    return orjson.loads(reply.server_keys_json)


async def test_own_server_keys_are_signed_and_cached(keys_service) -> None:
    before = now_ms()
    first = await keys_service.stub.QueryOwnServerKeys(keys_pb2.QueryOwnServerKeysRequest())
    second = await keys_service.stub.QueryOwnServerKeys(keys_pb2.QueryOwnServerKeysRequest())
    assert first.server_keys_json == second.server_keys_json
    obj = orjson.loads(first.server_keys_json)
    assert obj["server_name"] == OUR_SERVER
    assert obj["old_verify_keys"] == {}
    assert before + HOUR_MS <= obj["valid_until_ts"] <= now_ms() + HOUR_MS
    _verify_self_signed(obj, OUR_SERVER)


async def test_own_keys_signed_again_after_half_their_lifetime(keys_service) -> None:
    own = keys_service.keys.own_keys
    first = await own.server_keys()
    clock = own.clock
    own.clock = lambda: clock() + HOUR_MS // 2 + 1
    second = await own.server_keys()
    assert second.valid_until_ts > first.valid_until_ts
    assert second.json != first.json


def _signed_items(server, count: int, *, tamper: set[int] = frozenset()) -> list:
    items = []
    for index in range(count):
        event = server.sign({"type": "m.room.message", "content": {"body": f"event {index}"}})
        if index in tamper:
            event["content"]["body"] = "changed"
        items.append(
            keys_pb2.JsonToVerify(
                json=orjson.dumps(event),
                server_name=server.server_name,
                at_ts=now_ms(),
                enforce_key_validity=True,
            )
        )
    return items


async def test_batch_verification_fetches_each_server_once(
    keys_service, key_server_factory
) -> None:
    first, second = await key_server_factory(), await key_server_factory()
    # Each server answers only once both have been asked: fetched one after the
    # other, the first fetch would time out and its items fail.
    first.barrier = second.barrier = asyncio.Barrier(2)
    items = _signed_items(first, 30, tamper={3, 17}) + _signed_items(second, 20, tamper={0})
    items.append(keys_pb2.JsonToVerify(json=b"{nope", server_name=first.server_name))
    items.append(keys_pb2.JsonToVerify(json=b'{"unsigned": 1}', server_name=first.server_name))
    reply = await keys_service.stub.VerifyJsonSignatures(
        keys_pb2.VerifyJsonSignaturesRequest(items=items)
    )
    assert first.requests["server"] == second.requests["server"] == 1
    bad = {index for index, result in enumerate(reply.results) if not result.ok}
    assert bad == {3, 17, 30, 50, 51}
    assert "bad signature" in reply.results[3].error
    assert reply.results[50].error.startswith("M_NOT_JSON")
    assert "not signed" in reply.results[51].error


async def test_signed_json_given_as_the_bytes_the_signatures_cover(
    keys_service, key_server_factory
) -> None:
    """``signed_json`` + ``signatures`` instead of ``json``: same outcomes, nothing parsed."""
    origin = await key_server_factory()
    items = []
    for index in range(5):
        event = origin.sign({"type": "m.room.message", "content": {"body": f"event {index}"}})
        covered = signing_payload(event)
        signatures = event["signatures"][origin.server_name]
        if index == 1:
            covered = covered.replace(b"event 1", b"event X")  # not what was signed
        if index == 2:
            signatures = {key_id: "AAAA" for key_id in signatures}  # a forged signature
        if index == 3:
            signatures = {}  # none by this server
        if index == 4:
            covered = encode_json({**event, "signatures": {}})  # not the canonical bytes
        item = keys_pb2.JsonToVerify(
            server_name=origin.server_name,
            at_ts=now_ms(),
            enforce_key_validity=True,
            signed_json=covered,
        )
        item.signatures.update(signatures)
        items.append(item)
    reply = await keys_service.stub.VerifyJsonSignatures(
        keys_pb2.VerifyJsonSignaturesRequest(items=items)
    )
    assert [result.ok for result in reply.results] == [True, False, False, False, False]
    assert "bad signature" in reply.results[1].error
    assert "bad signature" in reply.results[2].error
    assert "not signed" in reply.results[3].error


async def test_unknown_server_fails_its_items_only(keys_service, key_server_factory) -> None:
    origin = await key_server_factory()
    items = _signed_items(origin, 2)
    items.append(
        keys_pb2.JsonToVerify(
            json=orjson.dumps({"signatures": {"127.0.0.1:1": {"ed25519:a": "AAAA"}}}),
            server_name="127.0.0.1:1",
            at_ts=now_ms(),
        )
    )
    reply = await keys_service.stub.VerifyJsonSignatures(
        keys_pb2.VerifyJsonSignaturesRequest(items=items)
    )
    assert [result.ok for result in reply.results] == [True, True, False]
    assert "no usable key" in reply.results[2].error
    # The key the good items verified with, once, for the caller's own checks.
    (used,) = reply.keys
    assert (used.server_name, used.key_id, used.key) == (
        origin.server_name,
        origin.key_id,
        origin.verify_key_b64,
    )
    assert used.found and used.usable_until_ts > now_ms() and used.expired_ts == 0

    reply = await keys_service.stub.VerifyJsonSignatures(
        keys_pb2.VerifyJsonSignaturesRequest(items=items[2:])
    )
    assert not reply.results[0].ok and not reply.keys


async def test_verify_batch_rate(keys_service, key_server_factory) -> None:
    origin = await key_server_factory()
    items = _signed_items(origin, 50)
    request = keys_pb2.VerifyJsonSignaturesRequest(items=items)
    await keys_service.stub.VerifyJsonSignatures(request)  # warm the key cache
    rounds = 40
    started = time.perf_counter()
    for _ in range(rounds):
        reply = await keys_service.stub.VerifyJsonSignatures(request)
        assert all(result.ok for result in reply.results)
    elapsed = time.perf_counter() - started
    print(f"\n50-signature batches: {rounds * 50 / elapsed:,.0f} signatures/s through the RPC")


def _request(origin, uri: str, content, *, destination: str = OUR_SERVER, key=None):
    header = sign_request(
        "PUT",
        uri,
        origin.server_name,
        destination,
        content,
        key or origin.signing_key,
        origin.key_id,
    )
    credentials = parse_xmatrix_header(header)
    return keys_pb2.VerifyRequestRequest(
        method="PUT",
        uri=uri,
        origin=credentials.origin,
        destination=credentials.destination,
        content=orjson.dumps(content) if content is not None else None,
        signatures=[keys_pb2.RequestSignature(key_id=credentials.key, sig=credentials.sig)],
    )


async def test_verify_request(keys_service, key_server_factory) -> None:
    origin = await key_server_factory()
    uri = "/_matrix/federation/v1/send/1?x=%40a%3Ab"
    content = {"pdus": [], "origin": origin.server_name}
    good = _request(origin, uri, content)
    reply = await keys_service.stub.VerifyRequest(good)
    assert reply.ok, reply.error
    # The key it verified with, for the gateway's own checks of the next requests.
    (used,) = reply.keys
    assert (used.server_name, used.key_id, used.key, used.expired_ts) == (
        origin.server_name,
        origin.key_id,
        origin.verify_key_b64,
        0,
    )
    assert used.usable_until_ts > now_ms()

    tampered = keys_pb2.VerifyRequestRequest()
    tampered.CopyFrom(good)
    tampered.content = orjson.dumps({**content, "pdus": [{}]})
    reply = await keys_service.stub.VerifyRequest(tampered)
    assert not reply.ok and not reply.keys

    elsewhere = _request(origin, uri, content, destination="other.example")
    reply = await keys_service.stub.VerifyRequest(elsewhere)
    assert not reply.ok and "other.example" in reply.error

    no_body = _request(origin, uri, None)
    assert (await keys_service.stub.VerifyRequest(no_body)).ok
    no_body.content = b"{}"
    assert not (await keys_service.stub.VerifyRequest(no_body)).ok


async def test_verify_request_refuses_old_and_expired_keys(
    keys_service, key_server_factory
) -> None:
    origin = await key_server_factory()
    origin.old_keys = {
        "ed25519:old": {"key": origin.verify_key_b64, "expired_ts": now_ms() + HOUR_MS}
    }
    request = _request(origin, "/_matrix/federation/v1/query/profile", None)
    request.signatures[0].key_id = "ed25519:old"
    reply = await keys_service.stub.VerifyRequest(request)
    assert not reply.ok and "no current key" in reply.error

    expired = await key_server_factory()
    expired.mode = "expired"
    reply = await keys_service.stub.VerifyRequest(
        _request(expired, "/_matrix/federation/v1/query/profile", None)
    )
    assert not reply.ok and "no current key" in reply.error


async def test_query_verify_keys(keys_service, key_server_factory) -> None:
    origin = await key_server_factory()
    reply = await keys_service.stub.QueryVerifyKeys(
        keys_pb2.QueryVerifyKeysRequest(
            lookups=[
                keys_pb2.VerifyKeyLookup(
                    server_name=origin.server_name, key_id=origin.key_id, at_ts=now_ms()
                ),
                keys_pb2.VerifyKeyLookup(server_name=origin.server_name, key_id="ed25519:nope"),
            ]
        )
    )
    found, missing = reply.keys
    assert found.found and found.key == origin.verify_key_b64 and found.expired_ts == 0
    assert found.usable_until_ts == found.valid_until_ts
    assert not missing.found and missing.key_id == "ed25519:nope"


async def test_notary_query(keys_service, key_server_factory) -> None:
    origin = await key_server_factory()
    stub = keys_service.stub
    criteria = keys_pb2.ServerKeyCriteria(server_name=origin.server_name)
    reply = await stub.QueryServerKeys(keys_pb2.QueryServerKeysRequest(criteria=[criteria]))
    (obj,) = [orjson.loads(raw) for raw in reply.server_keys_json]
    _verify_self_signed(obj, origin.server_name)
    ours = await _own_keys(stub)
    (our_key_id,) = ours["verify_keys"]
    verify_json_signature(
        obj, OUR_SERVER, our_key_id, decode_verify_key(ours["verify_keys"][our_key_id]["key"])
    )
    assert origin.requests["server"] == 1

    # Served from the cache while fresh; a later minimum_valid_until_ts forces a refetch.
    await stub.QueryServerKeys(keys_pb2.QueryServerKeysRequest(criteria=[criteria]))
    assert origin.requests["server"] == 1
    later = keys_pb2.ServerKeyCriteria(
        server_name=origin.server_name, minimum_valid_until_ts=now_ms() + 2 * HOUR_MS
    )
    reply = await stub.QueryServerKeys(keys_pb2.QueryServerKeysRequest(criteria=[later]))
    assert origin.requests["server"] == 2
    assert len(reply.server_keys_json) == 1  # the best we have, though not as fresh as asked

    # Our own keys, and nothing for a server that cannot be reached.
    reply = await stub.QueryServerKeys(
        keys_pb2.QueryServerKeysRequest(
            criteria=[
                keys_pb2.ServerKeyCriteria(server_name=OUR_SERVER),
                keys_pb2.ServerKeyCriteria(server_name="127.0.0.1:1"),
            ]
        )
    )
    assert [orjson.loads(raw)["server_name"] for raw in reply.server_keys_json] == [OUR_SERVER]


async def test_key_rotation(keys_service) -> None:
    stub = keys_service.stub
    config = keys_service.keys.config
    before = await _own_keys(stub)
    (old_key_id,) = before["verify_keys"]
    # What the keys process signs with (no RPC signs on request).
    own_keys = keys_service.keys.own_keys
    signed_before = encode_json(own_keys.sign({"n": 1}))

    rotation = await stub.PerformKeyRotation(keys_pb2.PerformKeyRotationRequest())
    assert rotation.old_key_id == old_key_id != rotation.new_key_id
    assert parse_signing_key(config.signing_key.read_text()).key_id == rotation.new_key_id

    after = await _own_keys(stub)
    assert list(after["verify_keys"]) == [rotation.new_key_id]
    assert after["old_verify_keys"] == {
        old_key_id: {
            "key": before["verify_keys"][old_key_id]["key"],
            "expired_ts": rotation.expired_ts,
        }
    }
    _verify_self_signed(after, OUR_SERVER)
    signed_after = own_keys.sign({"n": 1})
    assert list(signed_after["signatures"][OUR_SERVER]) == [rotation.new_key_id]

    # Something we signed before the rotation still verifies as of then (events) ...
    reply = await stub.VerifyJsonSignatures(
        keys_pb2.VerifyJsonSignaturesRequest(
            items=[
                keys_pb2.JsonToVerify(
                    json=signed_before,
                    server_name=OUR_SERVER,
                    at_ts=rotation.expired_ts - 1,
                    enforce_key_validity=True,
                ),
                keys_pb2.JsonToVerify(
                    json=signed_before,
                    server_name=OUR_SERVER,
                    at_ts=rotation.expired_ts + 1,
                    enforce_key_validity=True,
                ),
            ]
        )
    )
    assert [result.ok for result in reply.results] == [True, False]
