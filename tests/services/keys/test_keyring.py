"""The keyring against real HTTPS key servers on loopback and real PostgreSQL."""

from __future__ import annotations

import asyncio
import time

from matrix_protocol.signing import encode_verify_key
from mxfed.clock import now_ms
from mxfed.config import TrustedKeyServer
from services.keys.keyring import KeyNeed
from services.keys.storage import MAX_KEY_VALIDITY_MS
from tests.support.key_servers import HOUR_MS

DAY_MS = 24 * HOUR_MS


def need(server, key_id, at_ts=None, **kwargs) -> KeyNeed:
    return KeyNeed(server.server_name, (key_id or server.key_id,), at_ts or now_ms(), **kwargs)


async def test_direct_fetch_then_cache_hit(key_server_factory, make_keys) -> None:
    origin = await key_server_factory()
    keys = make_keys()
    found = await keys.keyring.lookup(need(origin, None))
    assert [key.verify_key for key in found] == [origin.verify_key_b64]
    assert found[0].source == "direct"
    assert origin.requests["server"] == 1

    stored = await keys.storage.load_responses([origin.server_name])
    assert origin.server_name in stored

    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        assert await keys.keyring.lookup(need(origin, None))
    per_lookup = (time.perf_counter() - started) / rounds
    assert origin.requests["server"] == 1
    print(f"\ncache hit lookup: {per_lookup * 1e6:.1f} µs")


async def test_database_cache_survives_a_new_keyring(key_server_factory, make_keys) -> None:
    origin = await key_server_factory()
    await make_keys().keyring.lookup(need(origin, None))
    fresh = make_keys()
    assert await fresh.keyring.lookup(need(origin, None))
    assert origin.requests["server"] == 1


async def test_concurrent_lookups_share_one_fetch(key_server_factory, make_keys) -> None:
    origin = await key_server_factory()
    origin.delay = 0.3
    keys = make_keys()
    results = await asyncio.gather(*(keys.keyring.lookup(need(origin, None)) for _ in range(25)))
    assert all(len(found) == 1 for found in results)
    assert origin.requests["server"] == 1


async def test_bad_self_signature_is_rejected(key_server_factory, make_keys) -> None:
    origin = await key_server_factory()
    origin.mode = "bad_signature"
    keys = make_keys()
    assert await keys.keyring.lookup(need(origin, None)) == []
    assert await keys.storage.load_remote_keys([origin.server_name]) == {}


async def test_wrong_server_name_is_rejected(key_server_factory, make_keys) -> None:
    origin = await key_server_factory()
    origin.mode = "wrong_server_name"
    keys = make_keys()
    assert await keys.keyring.lookup(need(origin, None)) == []
    assert await keys.storage.load_remote_keys([origin.server_name]) == {}


async def test_expired_response_verifies_only_older_events(key_server_factory, make_keys) -> None:
    origin = await key_server_factory()
    origin.mode = "expired"
    keys = make_keys()
    # Requests and new v5+ events need a key valid now.
    assert await keys.keyring.lookup(need(origin, None, allow_old=False)) == []
    assert await keys.keyring.lookup(need(origin, None)) == []
    # A v5+ event from before valid_until_ts, and any v1-v4 event, still verify.
    assert await keys.keyring.lookup(need(origin, None, at_ts=now_ms() - 2 * HOUR_MS))
    assert await keys.keyring.lookup(need(origin, None, enforce_validity=False))


async def test_failing_server_is_backed_off(key_server_factory, make_keys) -> None:
    origin = await key_server_factory()
    origin.mode = "error"
    keys = make_keys(min_backoff=0.5)
    assert await keys.keyring.lookup(need(origin, None)) == []
    assert origin.requests["server"] == 1
    # Within the backoff nothing is sent.
    for _ in range(5):
        assert await keys.keyring.lookup(need(origin, None)) == []
    assert origin.requests["server"] == 1
    assert keys.keyring.backoff_remaining(origin.server_name) > 0
    # After it, the server is asked again and recovers.
    origin.mode = "good"
    await asyncio.sleep(0.6)
    assert await keys.keyring.lookup(need(origin, None))
    assert origin.requests["server"] == 2
    assert keys.keyring.backoff_remaining(origin.server_name) == 0


async def test_unreachable_server_is_backed_off(make_keys) -> None:
    connections = 0

    async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    listener = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    server_name = f"127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    try:
        keys = make_keys(min_backoff=30)
        lookup = KeyNeed(server_name, ("ed25519:x",), now_ms())
        assert await keys.keyring.lookup(lookup) == []
        assert connections >= 1
        assert keys.keyring.backoff_remaining(server_name) > 25
        tried = connections
        assert await keys.keyring.lookup(lookup) == []
        assert connections == tried  # backed off: not even a connection attempt
    finally:
        listener.close()
        await listener.wait_closed()


def _trusting(notary) -> dict:
    return {
        "trusted_key_servers": [
            TrustedKeyServer(
                server_name=notary.server_name,
                verify_keys={notary.key_id: encode_verify_key(notary.signing_key.verify_key)},
            )
        ]
    }


async def test_notary_serves_keys_of_a_server_that_is_down(key_server_factory, make_keys) -> None:
    origin = await key_server_factory()
    notary = await key_server_factory(key_version="notary")
    notary.notary_cache[origin.server_name] = origin.key_json()
    await origin.stop()

    keys = make_keys(config=_trusting(notary))
    found = await keys.keyring.lookup(need(origin, None))
    assert [key.verify_key for key in found] == [origin.verify_key_b64]
    assert found[0].source == notary.server_name
    query = notary.notary_queries[0]["server_keys"][origin.server_name]
    assert query[origin.key_id]["minimum_valid_until_ts"] > 0

    # Stored without the notary's signature, ready to be served by us as a notary.
    served = await keys.keyring.query_server_keys([(origin.server_name, [], 0)])
    assert len(served) == 1


async def test_notary_with_wrong_signature_is_not_believed(key_server_factory, make_keys) -> None:
    origin = await key_server_factory()
    notary = await key_server_factory(key_version="notary")
    notary.notary_cache[origin.server_name] = origin.key_json()
    await origin.stop()
    impostor = await key_server_factory(key_version="notary")  # another key, same key id
    config = _trusting(impostor)
    config["trusted_key_servers"][0].server_name = notary.server_name

    keys = make_keys(config=config)
    assert await keys.keyring.lookup(need(origin, None)) == []
    assert notary.requests["query"] == 1


async def test_notary_without_pinned_key_is_not_used(key_server_factory, make_keys) -> None:
    origin = await key_server_factory()
    notary = await key_server_factory(key_version="notary")
    notary.notary_cache[origin.server_name] = origin.key_json()
    await origin.stop()
    keys = make_keys(
        config={"trusted_key_servers": [TrustedKeyServer(server_name=notary.server_name)]}
    )
    assert await keys.keyring.lookup(need(origin, None)) == []
    assert notary.requests["query"] == 0


async def test_seven_day_cap_for_v5_events(key_server_factory, make_keys) -> None:
    origin = await key_server_factory()
    origin.valid_until_ts = now_ms() + 365 * DAY_MS
    keys = make_keys()
    (key,) = await keys.keyring.lookup(need(origin, None))
    assert key.usable_until_ts == key.fetched_at + MAX_KEY_VALIDITY_MS
    assert await keys.keyring.lookup(need(origin, None, at_ts=now_ms() + 6 * DAY_MS))
    origin.requests.clear()
    assert await keys.keyring.lookup(need(origin, None, at_ts=now_ms() + 8 * DAY_MS)) == []
    # The keyring tried to refresh the key before giving up.
    assert origin.requests["server"] == 1
    # v1-v4 rooms ignore validity entirely.
    far = now_ms() + 30 * DAY_MS
    assert await keys.keyring.lookup(need(origin, None, at_ts=far, enforce_validity=False))


async def test_old_keys_verify_events_not_requests(key_server_factory, make_keys) -> None:
    origin = await key_server_factory()
    expired_ts = now_ms() - HOUR_MS
    origin.old_keys = {"ed25519:old": {"key": origin.verify_key_b64, "expired_ts": expired_ts}}
    keys = make_keys()
    old = KeyNeed(origin.server_name, ("ed25519:old",), expired_ts - 1000)
    (key,) = await keys.keyring.lookup(old)
    assert key.expired_ts == expired_ts
    # After expiry the old key no longer verifies v5+ events ...
    after = KeyNeed(origin.server_name, ("ed25519:old",), expired_ts + 1000)
    assert await keys.keyring.lookup(after) == []
    # ... and never requests.
    request = KeyNeed(origin.server_name, ("ed25519:old",), expired_ts - 1000, allow_old=False)
    assert await keys.keyring.lookup(request) == []


async def test_recent_fetch_is_not_repeated(key_server_factory, make_keys) -> None:
    origin = await key_server_factory()
    keys = make_keys(refetch_interval=60)
    assert await keys.keyring.lookup(need(origin, None))
    for _ in range(3):
        assert await keys.keyring.lookup(need(origin, "ed25519:unknown")) == []
    assert origin.requests["server"] == 1
