"""Remote servers' public verify keys, as the keys service resolved them, kept a short while.

The keys service finds, fetches and stores keys (directly or through notaries,
with its backoff and rate limits) and answers which keys a signature was
checked with (``keys`` of ``VerifyRequestResponse`` and
``VerifyJsonSignaturesResponse``). A process that keeps those answers here can
check the next signatures of the same servers itself, without a gRPC round
trip: the gateway an X-Matrix request, the events service a small batch of
PDUs. Verify keys are public, so nothing secret spreads.

Usability follows the keys service
(https://spec.matrix.org/v1.19/server-server-api/#request-authentication,
https://spec.matrix.org/v1.19/rooms/v5/#signing-key-validity-period): a
request needs a current key (not from ``old_verify_keys``) usable now; an
event of a room v5+ needs a key usable at its ``origin_server_ts``, an event
of room v1–v4 any key seen. Each entry is forgotten after ``ttl`` seconds, so
what the keys service learns later (a key moved to ``old_verify_keys``) counts
here within that time; a key this cache cannot vouch for is a miss, and the
caller asks the keys service as before. Entries are keyed by names remote
servers choose (only for keys that verified something), so at most
``max_keys`` are kept, least recently used first out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import nacl.signing
from prometheus_client import Counter

from matrix_protocol.signing import (
    SignatureError,
    decode_verify_key,
    verifiable_signature_key_ids,
    verify_signed_payload,
)
from mxfed.bounded import BoundedDict
from mxfed_api.keys.v1 import keys_pb2

LOOKUPS = Counter(
    "mxfed_verify_key_cache_lookups_total",
    "Signature checks a process could make itself with cached keys (hit) or left to the "
    "keys service (miss), by cache",
    ["cache", "result"],
)

# How long a key the keys service resolved is used here without asking it again.
TTL_SECONDS = 60.0
MAX_KEYS = 10_000


@dataclass(frozen=True)
class _Entry:
    verify_key: nacl.signing.VerifyKey
    usable_until_ts: int
    old: bool  # from old_verify_keys: verifies events, never requests
    cached_at: float  # monotonic


class VerifyKeyCache:
    def __init__(
        self,
        name: str,
        *,
        max_keys: int = MAX_KEYS,
        ttl: float = TTL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: BoundedDict[tuple[str, str], _Entry] = BoundedDict(name, max_keys)
        self._ttl = ttl
        self._monotonic = monotonic
        self._hits = LOOKUPS.labels(name, "hit")
        self._misses = LOOKUPS.labels(name, "miss")

    def add(self, resolved: Iterable[keys_pb2.ResolvedVerifyKey]) -> None:
        """Keep the keys the keys service answered with (those ``found``)."""
        now = self._monotonic()
        for key in resolved:
            if not key.found:
                continue
            try:
                verify_key = decode_verify_key(key.key)
            except SignatureError:
                continue  # the keys service stores only decodable keys
            self._entries[(key.server_name, key.key_id)] = _Entry(
                verify_key, key.usable_until_ts, key.expired_ts != 0, now
            )

    def _entry(self, server_name: str, key_id: str) -> _Entry | None:
        entry = self._entries.lookup((server_name, key_id))
        if entry is not None and self._monotonic() - entry.cached_at > self._ttl:
            del self._entries[(server_name, key_id)]
            return None
        return entry

    def request_keys(
        self, origin: str, key_ids: Sequence[str], now_ts: int
    ) -> dict[str, nacl.signing.VerifyKey] | None:
        """The keys for every one of ``key_ids`` (a request's X-Matrix credentials) when each
        is a current key of ``origin`` usable at ``now_ts``; ``None`` (a miss) otherwise."""
        if not key_ids:
            return None  # the keys service says why that fails
        found = {}
        for key_id in key_ids:
            entry = self._entry(origin, key_id)
            if entry is None or entry.old or entry.usable_until_ts < now_ts:
                self._misses.inc()
                return None
            found[key_id] = entry.verify_key
        self._hits.inc()
        return found

    def event_keys(
        self, server_name: str, key_ids: Sequence[str], at_ts: int, enforce_validity: bool
    ) -> dict[str, nacl.signing.VerifyKey] | None:
        """The keys for every one of ``key_ids`` (an event's signatures by ``server_name``)
        when each is usable for an event sent at ``at_ts`` (any key when not
        ``enforce_validity``: rooms v1–v4); ``None`` (a miss) otherwise."""
        if not key_ids:
            return None  # the keys service says why that fails
        found = {}
        for key_id in key_ids:
            entry = self._entry(server_name, key_id)
            if entry is None or (enforce_validity and entry.usable_until_ts < at_ts):
                self._misses.inc()
                return None
            found[key_id] = entry.verify_key
        self._hits.inc()
        return found

    def verify_json(self, items: Sequence[keys_pb2.JsonToVerify]) -> list[str | None] | None:
        """Per item, ``None`` when it verifies, else why not (as the keys service words
        it); ``None`` (a miss) unless every item comes as ``signed_json`` and every key
        each needs is here."""
        work = []
        for item in items:
            if not item.signed_json:
                return None
            key_ids = verifiable_signature_key_ids(item.signatures)
            keys = self.event_keys(item.server_name, key_ids, item.at_ts, item.enforce_key_validity)
            if keys is None:
                return None
            work.append((item, keys))
        errors: list[str | None] = []
        for item, keys in work:
            try:
                verify_signed_payload(item.signed_json, item.server_name, item.signatures, keys)
            except SignatureError as exc:
                errors.append(f"M_UNAUTHORIZED: {exc}")
            else:
                errors.append(None)
        return errors
