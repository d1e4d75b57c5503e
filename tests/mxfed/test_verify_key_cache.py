"""The verify keys a process keeps from the keys service's answers: usability, expiry, bound."""

from __future__ import annotations

import nacl.signing

from matrix_protocol.signing import encode_verify_key
from mxfed.verify_key_cache import VerifyKeyCache
from mxfed_api.keys.v1 import keys_pb2

NOW = 1_700_000_000_000


def _resolved(server: str, key_id: str, usable_until_ts: int, expired_ts: int = 0):
    key = nacl.signing.SigningKey.generate().verify_key
    return key, keys_pb2.ResolvedVerifyKey(
        server_name=server,
        key_id=key_id,
        found=True,
        key=encode_verify_key(key),
        valid_until_ts=usable_until_ts,
        expired_ts=expired_ts,
        usable_until_ts=usable_until_ts,
    )


def test_requests_need_current_keys_valid_now() -> None:
    cache = VerifyKeyCache("test_cache")
    current, resolved = _resolved("a.example", "ed25519:1", NOW + 1000)
    _, old = _resolved("a.example", "ed25519:0", NOW + 1000, expired_ts=NOW + 1000)
    _, not_found = _resolved("b.example", "ed25519:k", NOW + 1000)
    not_found.found = False  # a lookup's answer carrying a key all the same: never kept
    cache.add([resolved, old, not_found])
    assert cache.request_keys("a.example", ["ed25519:1"], NOW) == {"ed25519:1": current}
    assert cache.request_keys("a.example", ["ed25519:1"], NOW + 1001) is None
    assert cache.request_keys("a.example", ["ed25519:0"], NOW) is None  # events only
    # Every key named must be known, else the keys service decides.
    assert cache.request_keys("a.example", ["ed25519:1", "ed25519:2"], NOW) is None
    assert cache.request_keys("a.example", [], NOW) is None
    assert cache.request_keys("b.example", ["ed25519:k"], NOW) is None  # not found: not kept


def test_events_follow_the_room_versions_validity_rule() -> None:
    cache = VerifyKeyCache("test_cache")
    old_key, old = _resolved("a.example", "ed25519:0", NOW, expired_ts=NOW)
    cache.add([old])
    assert cache.event_keys("a.example", ["ed25519:0"], NOW - 1, True) == {"ed25519:0": old_key}
    assert cache.event_keys("a.example", ["ed25519:0"], NOW + 1, True) is None
    # Rooms v1-v4: any key seen.
    assert cache.event_keys("a.example", ["ed25519:0"], NOW + 1, False) == {"ed25519:0": old_key}
    assert cache.event_keys("a.example", [], NOW, False) is None


def test_entries_expire_and_the_cache_is_bounded() -> None:
    clock = [0.0]
    cache = VerifyKeyCache("test_cache", max_keys=2, ttl=10.0, monotonic=lambda: clock[0])
    resolved = [_resolved(f"s{n}.example", "ed25519:k", NOW + 1000)[1] for n in range(3)]
    cache.add(resolved)
    assert cache.request_keys("s0.example", ["ed25519:k"], NOW) is None  # evicted
    assert cache.request_keys("s1.example", ["ed25519:k"], NOW) is not None
    assert cache.request_keys("s2.example", ["ed25519:k"], NOW) is not None
    clock[0] = 10.5
    assert cache.request_keys("s2.example", ["ed25519:k"], NOW) is None
    assert cache.event_keys("s1.example", ["ed25519:k"], NOW, True) is None
