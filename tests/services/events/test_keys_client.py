"""The events service's keys client: small batches verified in-process with cached keys."""

from __future__ import annotations

import nacl.signing

from matrix_protocol.signing import encode_verify_key, sign_json, signing_payload
from mxfed.clock import now_ms
from mxfed.verify_key_cache import VerifyKeyCache
from mxfed_api.keys.v1 import keys_pb2
from services.events.keys_client import LOCAL_MAX_SIGNATURES, KeysClient
from tests.support.grpc_plane import channel_to
from tests.support.key_servers import HOUR_MS


def _item(origin, body: str, at_ts: int | None = None, **changes) -> keys_pb2.JsonToVerify:
    event = origin.sign({"type": "m.room.message", "content": {"body": body}})
    item = keys_pb2.JsonToVerify(
        server_name=origin.server_name,
        at_ts=now_ms() if at_ts is None else at_ts,
        enforce_key_validity=True,
        signed_json=changes.get("signed_json", signing_payload(event)),
    )
    item.signatures.update(changes.get("signatures", event["signatures"][origin.server_name]))
    return item


class _Calls:
    def __init__(self, keyring) -> None:
        self.count = 0
        self._verify = keyring.verify_json_batch

    async def __call__(self, checks):
        self.count += 1
        return await self._verify(checks)


async def _verify(client, *items):
    reply = await client.VerifyJsonSignatures(keys_pb2.VerifyJsonSignaturesRequest(items=items))
    return [(result.ok, result.error) for result in reply.results]


async def test_small_batches_are_verified_here_once_their_keys_are_cached(
    keys_service, key_server_factory, monkeypatch
) -> None:
    origin, other = await key_server_factory(), await key_server_factory()
    calls = _Calls(keys_service.keys.keyring)
    monkeypatch.setattr(keys_service.keys.keyring, "verify_json_batch", calls)
    channel = channel_to(keys_service.address, "keys")
    try:
        client = KeysClient(channel, VerifyKeyCache("test_events_keys"))
        assert await _verify(client, _item(origin, "first")) == [(True, "")]
        assert calls.count == 1
        assert await _verify(client, _item(origin, "second"), _item(origin, "third")) == [
            (True, ""),
            (True, ""),
        ]
        # A bad signature is refused here, in the keys service's words.
        forged = _item(origin, "forged", signed_json=b'{"type":"forged"}')
        local = await _verify(client, forged)
        assert calls.count == 1
        assert not local[0][0] and "bad signature" in local[0][1]
        assert local == await _verify(keys_service.stub, forged)  # the stub itself: not cached
        assert calls.count == 2
        # Bigger batches, unknown servers, keys not cached or not valid at the event's
        # time go to the keys service.
        many = [_item(origin, f"many {n}") for n in range(LOCAL_MAX_SIGNATURES + 1)]
        assert all(ok for ok, _ in await _verify(client, *many))
        assert calls.count == 3
        assert await _verify(client, _item(other, "unknown server")) == [(True, "")]
        assert calls.count == 4
        extra_key = dict(_item(origin, "x").signatures, **{"ed25519:extra": "AAAA"})
        (result,) = await _verify(client, _item(origin, "x", signatures=extra_key))
        assert result == (True, "") and calls.count == 5  # an unknown key id is not checked
        (result,) = await _verify(client, _item(origin, "late", at_ts=now_ms() + 2 * HOUR_MS))
        assert calls.count == 6
    finally:
        await channel.close()


async def test_an_event_signed_more_often_than_checked_here_goes_to_the_keys_service(
    keys_service, key_server_factory, monkeypatch
) -> None:
    # The sender chooses how many signatures an event carries: one item can ask for
    # many verifications, which are the keys service's to make, not the events loop's.
    origin = await key_server_factory()
    extra = {
        f"ed25519:extra{n}": nacl.signing.SigningKey.generate() for n in range(LOCAL_MAX_SIGNATURES)
    }
    origin.old_keys = {
        key_id: {"key": encode_verify_key(key.verify_key), "expired_ts": now_ms() + HOUR_MS}
        for key_id, key in extra.items()
    }
    event = origin.sign({"type": "m.room.message", "content": {"body": "signed often"}})
    for key_id, key in extra.items():
        event = sign_json(event, key, origin.server_name, key_id)
    signatures = event["signatures"][origin.server_name]
    item = _item(origin, "", signed_json=signing_payload(event), signatures=signatures)
    calls = _Calls(keys_service.keys.keyring)
    monkeypatch.setattr(keys_service.keys.keyring, "verify_json_batch", calls)
    channel = channel_to(keys_service.address, "keys")
    try:
        cache = VerifyKeyCache("test_events_keys")
        client = KeysClient(channel, cache)
        assert await _verify(client, item) == [(True, "")]
        assert calls.count == 1
        # Every key is cached now, yet the keys service verifies again.
        assert cache.event_keys(origin.server_name, list(signatures), item.at_ts, True)
        assert await _verify(client, item) == [(True, "")]
        assert calls.count == 2
    finally:
        await channel.close()
