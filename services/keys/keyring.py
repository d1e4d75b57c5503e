"""Remote server keys and signature verification.

Spec: https://spec.matrix.org/v1.19/server-server-api/#retrieving-server-keys,
https://spec.matrix.org/v1.19/server-server-api/#validating-hashes-and-signatures-on-received-events,
https://spec.matrix.org/v1.19/server-server-api/#request-authentication,
https://spec.matrix.org/v1.19/appendices/#checking-for-a-signature and
https://spec.matrix.org/v1.19/rooms/v5/#signing-key-validity-period.

Finding a key of server S:

1. memory, then the database (``server_verify_keys``; another replica may
   have fetched it);
2. S itself, ``GET /_matrix/key/v2/server``;
3. when that fails or does not give a usable key: each notary of
   ``trusted_key_servers``, ``POST /_matrix/key/v2/query``; a notary's
   answer counts only with a valid signature by one of its pinned keys.

NOTSPEC: Synapse asks its notaries before the origin; we ask the origin first
(it is authoritative and needs no trust in a third party) and use notaries as
the fallback for servers that are down or unreachable from here.

A key response is accepted only when its ``server_name`` is S and it carries a
valid self-signature by a key in its own ``verify_keys``. One fetch per server
runs at a time; concurrent lookups for it wait for that fetch. A server whose
every source failed is not asked again until its backoff (doubling, capped)
expires, and a server fetched successfully is not fetched again within
``refetch_interval`` seconds.

Server names come from remote input (any request can claim any origin), so
what is kept per server in memory is bounded (``max_servers``, least
recently used first; the database keeps every key), and servers of which
we know no key are fetched at most ``fetch_rate`` times per second (bursts
of ``fetch_burst``): ten thousand forged origins cost neither memory nor a
flood of outbound requests. A lookup refused by the rate limit fails like a
server that cannot be reached; the real server's next request tries again.

When a key is usable:

* requests: a key from ``verify_keys`` whose validity covers now;
* events of room v5+ (``enforce_key_validity``): ``valid_until_ts`` capped at
  fetch time + 7 days, or an old key's ``expired_ts``, must cover the
  event's ``origin_server_ts``;
* events of room v1–v4: any key ever seen for the server.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import nacl.signing
from prometheus_client import Counter, Histogram

from matrix_protocol.canonical_json import CanonicalJsonError, decode_json, encode_json
from matrix_protocol.server_names import is_valid_server_name
from matrix_protocol.signing import (
    SignatureError,
    decode_verify_key,
    is_valid_key_id,
    signing_payload,
    verifiable_key_ids,
    verifiable_signature_key_ids,
    verify_json_signature,
    verify_signed_payload,
)
from matrix_protocol.xmatrix import XMatrixCredentials, verify_request_credentials
from mxfed.bounded import BoundedDict, TokenBucket
from mxfed.clock import now_ms
from mxfed.config import TrustedKeyServer
from services.keys.own_keys import OwnKeys
from services.keys.storage import KeysStorage, RemoteKey, StoredResponse

log = logging.getLogger(__name__)

CACHE_LOOKUPS = Counter(
    "mxfed_keys_cache_lookups_total",
    "Server key lookups, by whether a usable key was already known",
    ["result"],
)
FETCHES = Counter(
    "mxfed_keys_fetches_total",
    "Remote key fetches by source kind and outcome",
    ["source", "result"],
)
FETCH_SECONDS = Histogram("mxfed_keys_fetch_seconds", "Duration of one remote key fetch")
FETCHES_SKIPPED = Counter(
    "mxfed_keys_fetches_skipped_total",
    "Fetches not made: the server is backed off (backoff), was just fetched (recent), or "
    "is unknown while unknown servers are being fetched at the limit (rate)",
    ["reason"],
)
VERIFICATIONS = Counter(
    "mxfed_keys_verifications_total",
    "Signature verifications by kind (json, request) and outcome",
    ["kind", "result"],
)

SOURCE_DIRECT = "direct"
KEY_SERVER_PATH = "/_matrix/key/v2/server"
KEY_QUERY_PATH = "/_matrix/key/v2/query"
# Batches of at least this many objects are verified in worker threads, in
# up to VERIFY_THREADS slices: PyNaCl releases the GIL while it checks a
# signature, so on two cores two threads verify PDU-sized objects ~1.4x faster
# than the event loop alone (measured: 22,600/s inline, 30,000-33,600/s in two
# threads), and the loop stays free for other calls meanwhile. Through the RPC,
# with client and service in one process, the gain shrinks to a few per cent
# (~14,000/s either way for 50 small objects): gRPC costs dominate there.
VERIFY_IN_THREADS_FROM = 32
VERIFY_THREADS = min(os.cpu_count() or 1, 4)


class KeyFetchClient(Protocol):
    """What the keyring needs from the outbound federation client."""

    async def get_json(self, destination: str, path: str, **kwargs: Any) -> Any: ...

    async def post_json(
        self, destination: str, path: str, json_body: Any, **kwargs: Any
    ) -> Any: ...


class KeyResponseError(ValueError):
    """A server key object is malformed or not properly self-signed."""


@dataclass(frozen=True)
class KeyNeed:
    """A usable key of ``server_name`` among ``key_ids``, at ``at_ts``."""

    server_name: str
    key_ids: tuple[str, ...]
    at_ts: int
    enforce_validity: bool = True
    allow_old: bool = True

    def accepts(self, key: RemoteKey) -> bool:
        if key.expired_ts is not None and not self.allow_old:
            return False
        return not self.enforce_validity or key.usable_until_ts >= self.at_ts


@dataclass(frozen=True)
class JsonCheck:
    """One item of a batch verification.

    ``signed_json`` (with ``signatures``, ``server_name``'s by key ID)
    replaces ``json``: the bytes the signatures cover, encoded by the caller.
    """

    json: bytes
    server_name: str
    at_ts: int
    enforce_validity: bool
    signed_json: bytes | None = None
    signatures: Mapping[str, str] | None = None


@dataclass(frozen=True)
class _Signed:
    """What one check verifies: the object (its payload made in a worker thread)
    or the payload as given, and the server's signatures by key ID."""

    obj: dict[str, Any] | None
    payload: bytes | None
    signatures: Mapping[str, Any]


@dataclass(frozen=True)
class Notary:
    server_name: str
    verify_keys: dict[str, nacl.signing.VerifyKey]

    @classmethod
    def from_config(cls, trusted: TrustedKeyServer) -> Notary:
        return cls(
            trusted.server_name,
            {key_id: decode_verify_key(key) for key_id, key in trusted.verify_keys.items()},
        )


@dataclass
class _Backoff:
    failures: int
    retry_at: float  # monotonic


def parse_server_keys(
    obj: Any, server_name: str, fetched_at: int, source: str
) -> tuple[list[RemoteKey], int]:
    """The keys of a ``/_matrix/key/v2/server`` object and its ``valid_until_ts``.

    Raises :class:`KeyResponseError` unless the object is for ``server_name``
    and every one of its signatures by a key in its own ``verify_keys`` (at
    least one) verifies. Malformed ``old_verify_keys`` entries are skipped.
    """
    if not isinstance(obj, dict):
        raise KeyResponseError("key response is not a JSON object")
    if obj.get("server_name") != server_name:
        raise KeyResponseError(f"key response is for {obj.get('server_name')!r}, not {server_name}")
    valid_until_ts = obj.get("valid_until_ts")
    if not isinstance(valid_until_ts, int) or isinstance(valid_until_ts, bool):
        raise KeyResponseError("valid_until_ts is missing or not an integer")
    verify_keys = obj.get("verify_keys")
    if not isinstance(verify_keys, dict) or not verify_keys:
        raise KeyResponseError("verify_keys is missing or empty")
    keys: list[RemoteKey] = []
    for key_id, entry in verify_keys.items():
        if not is_valid_key_id(key_id) or not isinstance(entry, dict):
            continue
        verify_key = entry.get("key")
        if not isinstance(verify_key, str):  # what decoding it below would reject too
            raise KeyResponseError(f"verify key {key_id} is not an ed25519 key")
        key = RemoteKey(server_name, key_id, verify_key, valid_until_ts, None, fetched_at, source)
        try:
            key.nacl_key  # noqa: B018 - decodes (and caches) the key, or raises
        except SignatureError:
            raise KeyResponseError(f"verify key {key_id} is not an ed25519 key") from None
        keys.append(key)
    signed_by = set(verifiable_key_ids(obj, server_name)) & {key.key_id for key in keys}
    if not signed_by:
        raise KeyResponseError("key response is not signed by any of its own verify_keys")
    for key in keys:
        if key.key_id in signed_by:
            try:
                verify_json_signature(obj, server_name, key.key_id, key.nacl_key)
            except SignatureError as exc:
                raise KeyResponseError(f"bad self-signature: {exc}") from None
    current_ids = {key.key_id for key in keys}
    old_verify_keys = obj.get("old_verify_keys")
    if isinstance(old_verify_keys, dict):
        for key_id, entry in old_verify_keys.items():
            if key_id in current_ids or not is_valid_key_id(key_id) or not isinstance(entry, dict):
                continue
            expired_ts = entry.get("expired_ts")
            if not isinstance(expired_ts, int) or isinstance(expired_ts, bool):
                continue
            old_key = entry.get("key")
            if not isinstance(old_key, str):  # what decoding it below would reject too
                continue
            try:
                decode_verify_key(old_key)
            except (SignatureError, ValueError):
                continue
            keys.append(
                RemoteKey(server_name, key_id, old_key, expired_ts, expired_ts, fetched_at, source)
            )
    return keys, valid_until_ts


def signed_by_notary(obj: dict[str, Any], notary: Notary) -> bool:
    """True when ``obj`` carries a signature by a pinned key of ``notary`` and
    every such signature verifies."""
    checked = False
    for key_id in verifiable_key_ids(obj, notary.server_name):
        verify_key = notary.verify_keys.get(key_id)
        if verify_key is None:
            continue
        try:
            verify_json_signature(obj, notary.server_name, key_id, verify_key)
        except SignatureError:
            return False
        checked = True
    return checked


def _only_signatures_of(obj: dict[str, Any], server_name: str) -> dict[str, Any]:
    signatures = obj.get("signatures")
    mine = signatures.get(server_name, {}) if isinstance(signatures, dict) else {}
    return {**obj, "signatures": {server_name: mine}}


def _response_has_keys(key_json: bytes, key_ids: Iterable[str]) -> bool:
    obj = decode_json(key_json)
    known = set(obj.get("verify_keys", {})) | set(obj.get("old_verify_keys", {}))
    return all(key_id in known for key_id in key_ids)


def _verify_object(signed: _Signed, need: KeyNeed, keys: list[RemoteKey]) -> str | None:
    if not keys:
        return (
            f"M_UNAUTHORIZED: no usable key of {need.server_name} among {', '.join(need.key_ids)}"
        )
    payload = signed.payload
    if payload is None:
        assert signed.obj is not None
        try:
            payload = signing_payload(signed.obj)
        except CanonicalJsonError as exc:
            return f"M_BAD_JSON: no canonical form: {exc}"
    try:
        verify_signed_payload(
            payload, need.server_name, signed.signatures, {key.key_id: key.nacl_key for key in keys}
        )
    except SignatureError as exc:
        return f"M_UNAUTHORIZED: {exc}"
    return None


def _verify_objects(work: list[tuple[_Signed, KeyNeed, list[RemoteKey]]]) -> list[str | None]:
    """Pure CPU work on objects nobody else touches: safe in a worker thread."""
    return [_verify_object(signed, need, keys) for signed, need, keys in work]


class Keyring:
    def __init__(
        self,
        storage: KeysStorage,
        own_keys: OwnKeys,
        client: KeyFetchClient,
        notaries: Sequence[Notary] = (),
        *,
        clock: Callable[[], int] = now_ms,
        fetch_timeout: float = 15.0,
        min_backoff: float = 5.0,
        max_backoff: float = 600.0,
        refetch_interval: float = 10.0,
        max_servers: int = 10_000,
        fetch_rate: float = 10.0,
        fetch_burst: int = 50,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.storage = storage
        self.own_keys = own_keys
        self.client = client
        self.notaries = list(notaries)
        self.clock = clock
        self.fetch_timeout = fetch_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.refetch_interval = refetch_interval
        self._monotonic = monotonic
        # Keyed by server names remote input chooses: bounded.
        self._keys: BoundedDict[str, dict[str, RemoteKey]] = BoundedDict(
            "keys_server_keys", max_servers
        )
        self._backoff: BoundedDict[str, _Backoff] = BoundedDict("keys_fetch_backoff", max_servers)
        # Monotonic time of the last good fetch.
        self._fetched_at: BoundedDict[str, float] = BoundedDict("keys_fetched_at", max_servers)
        self._unknown_fetches = TokenBucket(fetch_rate, fetch_burst, monotonic)
        self._own: dict[str, RemoteKey] = {}
        self._inflight: dict[str, asyncio.Task[None]] = {}  # bounded by the requests in flight

    @property
    def server_name(self) -> str:
        return self.own_keys.server_name

    # -- looking keys up ---------------------------------------------------------

    def _known(self, server_name: str) -> Mapping[str, RemoteKey]:
        if server_name == self.server_name:
            return self._own
        return self._keys.get(server_name, {})

    def usable_keys(self, need: KeyNeed) -> list[RemoteKey]:
        known = self._known(need.server_name)
        return [
            key
            for key_id in need.key_ids
            if (key := known.get(key_id)) is not None and need.accepts(key)
        ]

    async def _load(self, server_names: Iterable[str]) -> None:
        names = set(server_names)
        remote = [name for name in names if name != self.server_name]
        if self.server_name in names:
            self._own = {key.key_id: key for key in (await self.own_keys.server_keys()).verify_keys}
        if remote:
            loaded = await self.storage.load_remote_keys(remote)
            for name in remote:
                self._keys[name] = {key.key_id: key for key in loaded.get(name, [])}

    async def ensure_keys(self, needs: Iterable[KeyNeed]) -> None:
        """Make the keys for ``needs`` available, fetching what is missing.

        Servers are looked up in the database in one query and fetched
        concurrently, each at most once.
        """
        await self.usable_keys_for(list(needs))

    async def usable_keys_for(self, needs: Sequence[KeyNeed]) -> list[list[RemoteKey]]:
        """:meth:`ensure_keys`, and then the usable keys of each need (in order)."""
        servers = {need.server_name for need in needs}
        unloaded = {name for name in servers if name == self.server_name or name not in self._keys}
        if unloaded:
            await self._load(unloaded)
        usable = [self.usable_keys(need) for need in needs]
        missing: dict[str, list[KeyNeed]] = {}
        misses: list[int] = []
        for index, (need, keys) in enumerate(zip(needs, usable, strict=True)):
            if not keys:
                misses.append(index)
                missing.setdefault(need.server_name, []).append(need)
        if len(needs) > len(misses):
            CACHE_LOOKUPS.labels("hit").inc(len(needs) - len(misses))
        if misses:
            CACHE_LOOKUPS.labels("miss").inc(len(misses))
        missing.pop(self.server_name, None)  # our own keys are all known
        if missing:
            await asyncio.gather(
                *(self._fetch(server, server_needs) for server, server_needs in missing.items())
            )
            for index in misses:
                usable[index] = self.usable_keys(needs[index])
        return usable

    async def lookup(self, need: KeyNeed) -> list[RemoteKey]:
        await self.ensure_keys([need])
        return self.usable_keys(need)

    # -- fetching ----------------------------------------------------------------

    def backoff_remaining(self, server_name: str) -> float:
        backoff = self._backoff.get(server_name)
        if backoff is None:
            return 0.0
        return max(0.0, backoff.retry_at - self._monotonic())

    async def _fetch(self, server_name: str, needs: list[KeyNeed], force: bool = False) -> None:
        task = self._inflight.get(server_name)
        if task is None:
            if self.backoff_remaining(server_name) > 0:
                FETCHES_SKIPPED.labels("backoff").inc()
                return
            last = self._fetched_at.get(server_name)
            if not force and last is not None and self._monotonic() - last < self.refetch_interval:
                FETCHES_SKIPPED.labels("recent").inc()
                return
            if not self._keys.get(server_name) and not self._unknown_fetches.take():
                # No key of this server known (_load looked in the database first).
                FETCHES_SKIPPED.labels("rate").inc()
                return
            task = asyncio.create_task(self._fetch_now(server_name, needs))
            self._inflight[server_name] = task
            task.add_done_callback(lambda _: self._inflight.pop(server_name, None))
        await asyncio.shield(task)

    async def _fetch_now(self, server_name: str, needs: list[KeyNeed]) -> None:
        def satisfied() -> bool:
            return all(self.usable_keys(need) for need in needs)

        # Another replica may have fetched the keys in the meantime.
        await self._load([server_name])
        if satisfied():
            return
        key_ids = sorted({key_id for need in needs for key_id in need.key_ids})
        minimum_valid_until_ts = max(
            (need.at_ts for need in needs if need.enforce_validity), default=0
        )
        got_any = False
        sources: list[Notary | None] = [None, *self.notaries]
        for notary in sources:
            kind = "direct" if notary is None else "notary"
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self.fetch_timeout):
                    if notary is None:
                        objs = await self._fetch_direct(server_name)
                    else:
                        objs = await self._fetch_from_notary(
                            notary, server_name, key_ids, minimum_valid_until_ts
                        )
            except Exception as exc:  # any failure of a source: try the next one
                FETCHES.labels(kind, "error").inc()
                log.info(
                    "key fetch failed",
                    extra={
                        "server": server_name,
                        "source": notary.server_name if notary else SOURCE_DIRECT,
                        "error": f"{type(exc).__name__}: {exc}",
                    },
                )
                continue
            finally:
                FETCH_SECONDS.observe(time.perf_counter() - started)
            FETCHES.labels(kind, "ok").inc()
            source = SOURCE_DIRECT if notary is None else notary.server_name
            for obj in objs:
                if await self._store(server_name, obj, source):
                    got_any = True
            await self._load([server_name])
            if satisfied():
                break
        if got_any:
            self._backoff.pop(server_name, None)
            self._fetched_at[server_name] = self._monotonic()
        else:
            previous = self._backoff.get(server_name)
            failures = previous.failures + 1 if previous else 1
            delay = min(self.min_backoff * 2 ** (failures - 1), self.max_backoff)
            self._backoff[server_name] = _Backoff(failures, self._monotonic() + delay)
            log.info(
                "no keys for server, backing off",
                extra={"server": server_name, "failures": failures, "retry_in": delay},
            )

    async def _fetch_direct(self, server_name: str) -> list[Any]:
        return [await self.client.get_json(server_name, KEY_SERVER_PATH, sign=False)]

    async def _fetch_from_notary(
        self, notary: Notary, server_name: str, key_ids: list[str], minimum_valid_until_ts: int
    ) -> list[Any]:
        # Synapse refuses key criteria without minimum_valid_until_ts (M_MISSING_PARAM).
        criteria = {"minimum_valid_until_ts": minimum_valid_until_ts or self.clock()}
        body = {"server_keys": {server_name: {key_id: criteria for key_id in key_ids}}}
        answer = await self.client.post_json(
            notary.server_name, KEY_QUERY_PATH, body, sign=False, idempotent=True
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("server_keys"), list):
            raise KeyResponseError("notary answer has no server_keys list")
        accepted = []
        for obj in answer["server_keys"]:
            if not isinstance(obj, dict) or obj.get("server_name") != server_name:
                continue
            if signed_by_notary(obj, notary):
                accepted.append(_only_signatures_of(obj, server_name))
            else:
                log.warning(
                    "notary answer without a valid notary signature",
                    extra={"server": server_name, "notary": notary.server_name},
                )
        return accepted

    async def _store(self, server_name: str, obj: Any, source: str) -> bool:
        fetched_at = self.clock()
        try:
            keys, valid_until_ts = parse_server_keys(obj, server_name, fetched_at, source)
        except KeyResponseError as exc:
            log.warning(
                "rejected key response",
                extra={"server": server_name, "source": source, "error": str(exc)},
            )
            return False
        own_signed = _only_signatures_of(obj, server_name)
        await self.storage.store_response(
            StoredResponse(
                server_name, encode_json(own_signed), valid_until_ts, fetched_at, source
            ),
            keys,
        )
        return True

    # -- notary ------------------------------------------------------------------

    async def query_server_keys(
        self, criteria: Sequence[tuple[str, Sequence[str], int]]
    ) -> list[bytes]:
        """Key objects for (server, key ids, minimum_valid_until_ts), co-signed by us.

        A cached response is served while it satisfies the criteria (or, with
        no minimum given, until half of its lifetime has passed); otherwise
        the server is fetched first. If that fails, the last response we have
        is served anyway, as the spec asks of notaries.
        """
        wanted: dict[str, tuple[set[str], int]] = {}
        for server_name, key_ids, minimum in criteria:
            if not is_valid_server_name(server_name):
                continue  # no such server can have keys: absent, like an offline one
            ids, previous = wanted.get(server_name, (set(), 0))
            wanted[server_name] = (ids | set(key_ids), max(previous, minimum))
        result: list[bytes] = []
        if wanted.pop(self.server_name, None) is not None:
            result.append((await self.own_keys.server_keys()).json)
        if not wanted:
            return result
        stored = await self.storage.load_responses(wanted)
        now = self.clock()
        stale = [
            server_name
            for server_name, (key_ids, minimum) in wanted.items()
            if not self._serves(stored.get(server_name), key_ids, minimum, now)
        ]
        if stale:
            await asyncio.gather(
                *(
                    self._fetch(
                        server_name,
                        [
                            KeyNeed(
                                server_name,
                                tuple(sorted(wanted[server_name][0])),
                                wanted[server_name][1] or now,
                            )
                        ],
                        force=True,
                    )
                    for server_name in stale
                )
            )
            stored.update(await self.storage.load_responses(stale))
        for server_name in wanted:
            response = stored.get(server_name)
            if response is not None:
                result.append(encode_json(self.own_keys.sign(decode_json(response.key_json))))
        return result

    @staticmethod
    def _serves(response: StoredResponse | None, key_ids: set[str], minimum: int, now: int) -> bool:
        if response is None or not _response_has_keys(response.key_json, key_ids):
            return False
        if minimum:
            return response.valid_until_ts >= minimum
        half_life_end = response.fetched_at + (response.valid_until_ts - response.fetched_at) // 2
        return now < half_life_end

    # -- verification ------------------------------------------------------------

    async def verify_json_batch(
        self, checks: Sequence[JsonCheck]
    ) -> tuple[list[str | None], list[RemoteKey]]:
        """Verify every item; ``None`` for a good one, else why it failed; and the keys
        the good ones were verified with (each once).

        Each item needs a valid signature by its server; every signature of
        that server made with a usable key must verify. Keys missing for any
        item are fetched first, each server once, all servers concurrently.
        """
        errors: list[str | None] = [None] * len(checks)
        parsed: list[tuple[int, _Signed, KeyNeed]] = []
        for index, check in enumerate(checks):
            if check.signed_json is not None:
                signed = _Signed(None, check.signed_json, check.signatures or {})
            else:
                try:
                    obj = decode_json(check.json)
                except ValueError:
                    errors[index] = "M_NOT_JSON: not valid JSON"
                    continue
                if not isinstance(obj, dict):
                    errors[index] = "M_BAD_JSON: not a JSON object"
                    continue
                signatures = obj.get("signatures")
                by_key = signatures.get(check.server_name) if isinstance(signatures, dict) else None
                signed = _Signed(obj, None, by_key if isinstance(by_key, dict) else {})
            key_ids = tuple(verifiable_signature_key_ids(signed.signatures))
            if not key_ids:
                errors[index] = f"M_UNAUTHORIZED: not signed by {check.server_name}"
                continue
            need = KeyNeed(check.server_name, key_ids, check.at_ts, check.enforce_validity)
            parsed.append((index, signed, need))
        usable = await self.usable_keys_for([need for _, _, need in parsed])
        work = [
            (signed, need, keys) for (_, signed, need), keys in zip(parsed, usable, strict=True)
        ]
        if len(work) < VERIFY_IN_THREADS_FROM:
            results = _verify_objects(work)
        else:
            size = math.ceil(len(work) / VERIFY_THREADS)
            slices = await asyncio.gather(
                *(
                    asyncio.to_thread(_verify_objects, work[start : start + size])
                    for start in range(0, len(work), size)
                )
            )
            results = [result for part in slices for result in part]
        used: dict[tuple[str, str], RemoteKey] = {}
        for (index, _, _), keys, result in zip(parsed, usable, results, strict=True):
            errors[index] = result
            if result is None:
                used.update(((key.server_name, key.key_id), key) for key in keys)
        failed = sum(1 for error in errors if error)
        if failed:
            VERIFICATIONS.labels("json", "fail").inc(failed)
        if len(errors) > failed:
            VERIFICATIONS.labels("json", "ok").inc(len(errors) - failed)
        return errors, list(used.values())

    async def verify_request(
        self,
        method: str,
        uri: str,
        origin: str,
        destination: str | None,
        content: Any,
        signatures: Sequence[tuple[str, str]],
    ) -> tuple[str | None, list[RemoteKey]]:
        """Check an X-Matrix signed request; ``None`` if good, else why not; and the
        keys it was verified with (none when it was not).

        Only current keys (``verify_keys``) valid now verify requests; every
        signature made with such a key must verify, and there must be one.
        """
        error, keys = await self._verify_request(
            method, uri, origin, destination, content, signatures
        )
        VERIFICATIONS.labels("request", "fail" if error else "ok").inc()
        return error, [] if error else keys

    async def _verify_request(
        self,
        method: str,
        uri: str,
        origin: str,
        destination: str | None,
        content: Any,
        signatures: Sequence[tuple[str, str]],
    ) -> tuple[str | None, list[RemoteKey]]:
        if not signatures:
            return "no signature", []
        need = KeyNeed(
            origin,
            tuple(key_id for key_id, _ in signatures),
            self.clock(),
            enforce_validity=True,
            allow_old=False,
        )
        keys = await self.lookup(need)
        try:
            verify_request_credentials(
                [
                    XMatrixCredentials(origin, key_id, sig, destination)
                    for key_id, sig in signatures
                ],
                method,
                uri,
                self.server_name,
                content,
                {key.key_id: key.nacl_key for key in keys},
            )
        except SignatureError as exc:
            return str(exc), []
        return None, keys

    def sign(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.own_keys.sign(obj)
