"""Local users: profiles, devices and their keys, cross-signing keys,
one-time key claims, OpenID tokens; the per-user device-list stream."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import Any

import asyncpg

from matrix_protocol.canonical_json import decode_json, encode_json
from mxfed.clock import now_ms
from mxfed.service_errors import BadRequest, NotFound
from services.accounts import storage
from services.accounts.notify import EduNotifier
from services.accounts.validation import (
    JsonDict,
    check_cross_signing_key,
    check_device_keys,
    parse_one_time_keys,
    require_user,
)

DEFAULT_OPENID_TTL_MS = 3600 * 1000
MAX_OPENID_TTL_MS = 24 * 3600 * 1000
MAX_DEVICE_ID_LENGTH = 255


def _loads(text: str | None) -> Any:
    return None if text is None else decode_json(text)


def _dumps(value: Any) -> str:
    return encode_json(value).decode()


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LocalAccounts:
    def __init__(self, pool: asyncpg.Pool, server_name: str, notifier: EduNotifier) -> None:
        self.pool = pool
        self.server_name = server_name
        self.notifier = notifier

    def require_local(self, user_id: str, what: str = "user_id") -> None:
        if require_user(user_id, what) != self.server_name:
            raise BadRequest(f"{user_id} is not a user of this server")

    # ------------------------------------------------------------ profiles

    async def set_profile(self, user_id: str, fields: JsonDict, replace: bool) -> JsonDict:
        self.require_local(user_id)
        for name, value in fields.items():
            if not name:
                raise BadRequest("profile field names must not be empty")
            if value is None:
                continue
            if name == "displayname" and not isinstance(value, str):
                raise BadRequest("displayname must be a string")
            if name == "avatar_url" and not (isinstance(value, str) and value.startswith("mxc://")):
                raise BadRequest("avatar_url must be an mxc:// URI")
        async with self.pool.acquire() as conn, conn.transaction():
            current = await storage.lock_profile(conn, user_id)
            profile: JsonDict = {} if replace or current is None else decode_json(current)
            for name, value in fields.items():
                if value is None:
                    profile.pop(name, None)
                else:
                    profile[name] = value
            await storage.upsert_profile(conn, user_id, _dumps(profile), now_ms())
        return profile

    async def profile(self, user_id: str, field: str = "") -> JsonDict | None:
        """The profile (or just ``field``); None for an unknown user or an unset field."""
        require_user(user_id)
        async with self.pool.acquire() as conn:
            text = await storage.profile(conn, user_id)
        if text is None:
            return None
        profile: JsonDict = decode_json(text)
        if field:
            if profile.get(field) is None:
                return None
            return {field: profile[field]}
        return profile

    # ------------------------------------------------------------ device-list stream

    async def _device_list_update(
        self,
        user_id: str,
        device_id: str,
        stream_id: int,
        *,
        deleted: bool = False,
        display_name: str | None = None,
        keys: JsonDict | None = None,
    ) -> None:
        content: JsonDict = {
            "user_id": user_id,
            "device_id": device_id,
            "stream_id": stream_id,
            "prev_id": [stream_id - 1] if stream_id > 1 else [],
            "deleted": deleted,
        }
        if display_name is not None and not deleted:
            content["device_display_name"] = display_name
        if keys is not None and not deleted:
            content["keys"] = keys
        await self.notifier.send(user_id, "m.device_list_update", content)

    # ------------------------------------------------------------ devices and keys

    async def upload_keys(
        self,
        user_id: str,
        device_id: str,
        *,
        display_name: str | None,
        device_keys: JsonDict | None,
        one_time_keys: JsonDict | None,
        fallback_keys: JsonDict | None,
    ) -> tuple[dict[str, int], int]:
        self.require_local(user_id)
        if not device_id or len(device_id) > MAX_DEVICE_ID_LENGTH:
            raise BadRequest("device_id must be 1-255 characters")
        if device_keys is not None:
            problem = check_device_keys(device_keys, user_id, device_id)
            if problem:
                raise BadRequest(problem)
        otks = parse_one_time_keys(one_time_keys or {}, "one_time_keys")
        fallbacks = parse_one_time_keys(fallback_keys or {}, "fallback_keys")
        changed = False
        async with self.pool.acquire() as conn, conn.transaction():
            row = await storage.lock_device(conn, user_id, device_id)
            name = row["display_name"] if row else None
            keys = _loads(row["keys_json"]) if row else None
            if row is None:
                changed = True
            if display_name is not None and display_name != name:
                name, changed = display_name, True
            if device_keys is not None and device_keys != keys:
                keys, changed = device_keys, True
            await storage.upsert_device(
                conn,
                user_id,
                device_id,
                name,
                None if keys is None else _dumps(keys),
                now_ms(),
            )
            for algorithm, key_id, key in otks:
                existing = await storage.one_time_key(conn, user_id, device_id, algorithm, key_id)
                if existing is not None:
                    if decode_json(existing) != key:
                        raise BadRequest(
                            f"one-time key {algorithm}:{key_id} already exists with other content"
                        )
                    continue
                await storage.insert_one_time_key(
                    conn,
                    user_id,
                    device_id,
                    algorithm,
                    key_id,
                    _dumps(key),
                )
            for algorithm, key_id, key in fallbacks:
                await storage.upsert_fallback_key(
                    conn,
                    user_id,
                    device_id,
                    algorithm,
                    key_id,
                    _dumps(key),
                )
            if changed:
                stream_id = await storage.bump_device_list_stream(conn, user_id)
            else:
                stream_id = await self._stream_id(conn, user_id)
            counts = await storage.unclaimed_one_time_key_counts(conn, user_id, device_id)
        if changed:
            await self._device_list_update(
                user_id, device_id, stream_id, display_name=name, keys=keys
            )
        return counts, stream_id

    @staticmethod
    async def _stream_id(conn: asyncpg.Connection, user_id: str) -> int:
        return await storage.device_list_stream_id(conn, user_id) or 0

    async def delete_device(self, user_id: str, device_id: str) -> tuple[bool, int]:
        self.require_local(user_id)
        async with self.pool.acquire() as conn, conn.transaction():
            if not await storage.delete_device(conn, user_id, device_id):
                return False, await self._stream_id(conn, user_id)
            await storage.delete_device_rows(conn, user_id, device_id)
            stream_id = await storage.bump_device_list_stream(conn, user_id)
        await self._device_list_update(user_id, device_id, stream_id, deleted=True)
        return True, stream_id

    async def upload_cross_signing_keys(self, user_id: str, keys: dict[str, JsonDict]) -> None:
        """``keys``: usage → CrossSigningKey (only the ones being set)."""
        self.require_local(user_id)
        for usage, key in keys.items():
            problem = check_cross_signing_key(key, user_id, usage)
            if problem:
                raise BadRequest(problem)
        changed: JsonDict = {}
        async with self.pool.acquire() as conn, conn.transaction():
            for usage, key in keys.items():
                previous = await storage.lock_cross_signing_key(conn, user_id, usage)
                if previous is not None and decode_json(previous) == key:
                    continue
                await storage.upsert_cross_signing_key(conn, user_id, usage, _dumps(key), now_ms())
                changed[usage] = key
        federated = {
            f"{usage}_key": key for usage, key in changed.items() if usage != "user_signing"
        }
        if federated:
            await self.notifier.send(
                user_id, "m.signing_key_update", {"user_id": user_id, **federated}
            )

    # ------------------------------------------------------------ reads

    async def user_devices(self, user_id: str) -> JsonDict:
        """The /user/devices body of a local user."""
        self.require_local(user_id)
        async with self.pool.acquire() as conn:
            stream_id = await self._stream_id(conn, user_id)
            rows = await storage.devices(conn, user_id)
            cross = await self._cross_signing(conn, [user_id], ("master", "self_signing"))
        devices = []
        for row in rows:
            device: JsonDict = {"device_id": row["device_id"]}
            if row["keys_json"] is not None:
                device["keys"] = decode_json(row["keys_json"])
            if row["display_name"] is not None:
                device["device_display_name"] = row["display_name"]
            devices.append(device)
        body: JsonDict = {"user_id": user_id, "stream_id": stream_id, "devices": devices}
        mine = cross.get(user_id, {})
        if "master" in mine:
            body["master_key"] = mine["master"]
        if "self_signing" in mine:
            body["self_signing_key"] = mine["self_signing"]
        return body

    @staticmethod
    async def _cross_signing(
        conn: asyncpg.Connection, user_ids: Sequence[str], usages: Sequence[str]
    ) -> dict[str, dict[str, JsonDict]]:
        rows = await storage.cross_signing_keys(conn, user_ids, usages)
        result: dict[str, dict[str, JsonDict]] = {}
        for row in rows:
            result.setdefault(row["user_id"], {})[row["usage"]] = decode_json(row["key_json"])
        return result

    async def query_keys(self, wanted: dict[str, list[str]]) -> JsonDict:
        """The /user/keys/query body for local users (``[]``: every device)."""
        for user_id in wanted:
            self.require_local(user_id, "device_keys")
        device_keys: dict[str, JsonDict] = {}
        async with self.pool.acquire() as conn:
            for user_id, device_ids in wanted.items():
                rows = await storage.devices_with_keys(conn, user_id, device_ids)
                devices: JsonDict = {}
                for row in rows:
                    keys = decode_json(row["keys_json"])
                    if row["display_name"] is not None:
                        keys["unsigned"] = {"device_display_name": row["display_name"]}
                    devices[row["device_id"]] = keys
                device_keys[user_id] = devices
            cross = await self._cross_signing(conn, list(wanted), ("master", "self_signing"))
        return {
            "device_keys": device_keys,
            "master_keys": {u: k["master"] for u, k in cross.items() if "master" in k},
            "self_signing_keys": {
                u: k["self_signing"] for u, k in cross.items() if "self_signing" in k
            },
        }

    async def claim_keys(self, wanted: dict[str, dict[str, str]]) -> JsonDict:
        """One key per (user, device, algorithm): the oldest unclaimed one-time key,
        else the fallback key. Concurrent claims never get the same one-time key."""
        for user_id in wanted:
            self.require_local(user_id, "one_time_keys")
        claimed: dict[str, JsonDict] = {}
        async with self.pool.acquire() as conn:
            for user_id, devices in wanted.items():
                for device_id, algorithm in devices.items():
                    key = await self._claim_one(conn, user_id, device_id, algorithm)
                    if key is not None:
                        claimed.setdefault(user_id, {})[device_id] = {key[0]: key[1]}
        return {"one_time_keys": claimed}

    @staticmethod
    async def _claim_one(
        conn: asyncpg.Connection, user_id: str, device_id: str, algorithm: str
    ) -> tuple[str, Any] | None:
        row = await storage.claim_one_time_key(conn, user_id, device_id, algorithm, now_ms())
        if row is None:
            row = await storage.use_fallback_key(conn, user_id, device_id, algorithm)
        if row is None:
            return None
        return f"{algorithm}:{row['key_id']}", decode_json(row["key_json"])

    # ------------------------------------------------------------ OpenID

    async def mint_openid_token(self, user_id: str, ttl_ms: int) -> tuple[str, int]:
        self.require_local(user_id)
        if ttl_ms < 0:
            raise BadRequest("ttl_ms must not be negative")
        ttl = min(ttl_ms or DEFAULT_OPENID_TTL_MS, MAX_OPENID_TTL_MS)
        token = secrets.token_urlsafe(32)
        async with self.pool.acquire() as conn:
            await storage.delete_expired_openid_tokens(conn, now_ms())
            await storage.insert_openid_token(conn, _token_hash(token), user_id, now_ms() + ttl)
        return token, ttl

    async def openid_user(self, token: str) -> str | None:
        if not token:
            return None
        async with self.pool.acquire() as conn:
            return await storage.openid_token_user(conn, _token_hash(token), now_ms())

    async def require_device(self, user_id: str, device_id: str) -> None:
        async with self.pool.acquire() as conn:
            if not await storage.device_exists(conn, user_id, device_id):
                raise NotFound(f"Unknown device {device_id} of {user_id}")
