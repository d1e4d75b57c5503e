"""Our published signing keys .

Spec: https://spec.matrix.org/v1.19/server-server-api/#publishing-keys


The current key is the one in the signing key file (shared by every process
that signs, re-read when it is replaced); keys rotated out live in the
database with their ``expired_ts`` and are published in ``old_verify_keys``.
The signed ``/_matrix/key/v2/server`` object says ``valid_until_ts = now +
key_valid_for_ms``; it is cached and signed again once half of that time has
passed, or as soon as the current key changes.

On rotation the old key's ``expired_ts`` is the rotation time plus
:data:`ROTATION_GRACE_MS`: every process that signs switches to the new key
file within ``SIGNING_KEY_CHECK_INTERVAL`` (a second), and what one signed
with the old key in that second must still verify elsewhere (room versions
5+ check the key's validity at the event's ``origin_server_ts``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from matrix_protocol.signing import encode_verify_key, sign_json
from mxfed.clock import now_ms
from mxfed.config import Config
from mxfed.database_claim import record_signing_key
from mxfed.identity_files import (
    SIGNING_KEY_CHECK_INTERVAL,
    ServerSigningKey,
    current_signing_key,
    new_signing_key,
    write_signing_key,
)
from services.keys.storage import KeysStorage, OwnOldKey, RemoteKey

ROTATION_GRACE_MS = int(2 * SIGNING_KEY_CHECK_INTERVAL * 1000)

# Our own current key never needs fetching; treat it as valid far ahead.
_OWN_KEY_VALID_UNTIL = 2**62


@dataclass(frozen=True)
class SignedServerKeys:
    key_id: str
    json: bytes
    signed_at: int
    valid_until_ts: int
    verify_keys: list[RemoteKey]


@dataclass(frozen=True)
class Rotation:
    new_key_id: str
    old_key_id: str
    expired_ts: int


class OwnKeys:
    def __init__(
        self, config: Config, storage: KeysStorage, clock: Callable[[], int] = now_ms
    ) -> None:
        self.config = config
        self.storage = storage
        self.clock = clock
        self._signed: SignedServerKeys | None = None
        self._lock = asyncio.Lock()

    @property
    def server_name(self) -> str:
        return self.config.server_name

    def current(self, max_age: float | None = None) -> ServerSigningKey:
        if max_age is None:
            return current_signing_key(self.config.signing_key)
        return current_signing_key(self.config.signing_key, max_age)

    def sign(self, obj: dict[str, Any]) -> dict[str, Any]:
        key = self.current()
        return sign_json(obj, key.signing_key, self.server_name, key.key_id)

    async def server_keys(self) -> SignedServerKeys:
        """Our signed key object, signed again when half expired or the key changed."""
        key = self.current()
        signed = self._signed
        if signed is None or not self._fresh(signed, key):
            async with self._lock:
                key = self.current()
                signed = self._signed
                if signed is None or not self._fresh(signed, key):
                    signed = await self._sign_server_keys(key)
                    self._signed = signed
        return signed

    def _fresh(self, signed: SignedServerKeys, key: ServerSigningKey) -> bool:
        half_life = self.config.key_valid_for_ms // 2
        return signed.key_id == key.key_id and self.clock() < signed.signed_at + half_life

    async def _sign_server_keys(self, key: ServerSigningKey) -> SignedServerKeys:
        now = self.clock()
        old_keys = [old for old in await self.storage.own_old_keys() if old.key_id != key.key_id]
        current_b64 = encode_verify_key(key.signing_key.verify_key)
        valid_until_ts = now + self.config.key_valid_for_ms
        obj: dict[str, Any] = {
            "server_name": self.server_name,
            "verify_keys": {key.key_id: {"key": current_b64}},
            "old_verify_keys": {
                old.key_id: {"key": old.verify_key, "expired_ts": old.expired_ts}
                for old in old_keys
            },
            "valid_until_ts": valid_until_ts,
        }
        signed = sign_json(obj, key.signing_key, self.server_name, key.key_id)
        verify_keys = [
            RemoteKey(
                self.server_name, key.key_id, current_b64, _OWN_KEY_VALID_UNTIL, None, now, "own"
            ),
            *(
                RemoteKey(
                    self.server_name,
                    old.key_id,
                    old.verify_key,
                    old.expired_ts,
                    old.expired_ts,
                    now,
                    "own",
                )
                for old in old_keys
            ),
        ]
        return SignedServerKeys(key.key_id, orjson.dumps(signed), now, valid_until_ts, verify_keys)

    async def rotate(self) -> Rotation:
        """Make a new current key; the old one is published as expired from now on.

        The old key goes into the database before the new file replaces the
        old one, so a process that sees the new key also finds the old one;
        the new key is recorded as this server's (``mxfed.database_claim``)
        before it takes effect, so the next start accepts it.
        """
        async with self._lock:
            old = self.current(max_age=0)
            expired_ts = self.clock() + ROTATION_GRACE_MS
            await self.storage.add_own_old_key(
                OwnOldKey(old.key_id, encode_verify_key(old.signing_key.verify_key), expired_ts)
            )
            new = new_signing_key()
            await record_signing_key(self.storage.pool, new)
            write_signing_key(self.config.signing_key, new)
            self.current(max_age=0)
            self._signed = None
        return Rotation(new.key_id, old.key_id, expired_ts)
