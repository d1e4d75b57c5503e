"""Other servers' device lists: a cache filled by ``GET /user/devices/{userId}``
and kept current by m.device_list_update / m.signing_key_update EDUs.

Spec: https://spec.matrix.org/v1.19/server-server-api/#device-management
and #end-to-end-encryption (``m.signing_key_update``).
An EDU replaces one device when every ``prev_id`` is
known (not above the last resync's stream_id, or an EDU we applied);
otherwise, or when it has no ``prev_id`` at all ([Synapse]), the list is
marked stale and resynced in the background.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, TypeGuard

import asyncpg

from matrix_protocol.canonical_json import decode_json, encode_json
from mxfed.clock import now_ms
from mxfed.federation_client import FederationClient, FederationError, federation_path
from mxfed.service_errors import BadRequest, Unavailable
from services.accounts import storage
from services.accounts.validation import (
    JsonDict,
    check_cross_signing_key,
    check_device_keys,
    require_user,
    user_server,
)

log = logging.getLogger(__name__)

# [Synapse] refuses to cache users with more devices than this.
MAX_CACHED_DEVICES = 1000
# A list nobody told us about for this long is fetched again.
MAX_CACHE_AGE_MS = 24 * 3600 * 1000


def _dumps(value: Any) -> str:
    return encode_json(value).decode()


def _int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


class RemoteDeviceLists:
    def __init__(
        self, pool: asyncpg.Pool, server_name: str, client: FederationClient | None
    ) -> None:
        self.pool = pool
        self.server_name = server_name
        self.client = client
        self._resyncs: dict[str, asyncio.Task[JsonDict]] = {}
        self._background: set[asyncio.Task[Any]] = set()

    async def close(self) -> None:
        for task in [*self._background, *self._resyncs.values()]:
            task.cancel()
        await asyncio.gather(*self._background, *self._resyncs.values(), return_exceptions=True)

    def _require_remote(self, user_id: str) -> str:
        server = require_user(user_id)
        if server == self.server_name:
            raise BadRequest(f"{user_id} is a user of this server")
        return server

    # ------------------------------------------------------------ reads

    async def devices(self, user_id: str, force_resync: bool = False) -> tuple[JsonDict, bool]:
        """(the /user/devices body, whether it came from the cache)."""
        self._require_remote(user_id)
        if not force_resync:
            cached = await self._cached(user_id, fresh_only=True)
            if cached is not None:
                return cached, True
        try:
            return await self.resync(user_id), False
        except Unavailable:
            cached = await self._cached(user_id, fresh_only=False)
            if cached is None:
                raise
            log.warning("serving a stale device list", extra={"user_id": user_id})
            return cached, True

    async def _cached(self, user_id: str, fresh_only: bool) -> JsonDict | None:
        async with self.pool.acquire() as conn:
            row = await storage.remote_device_list(conn, user_id)
            if row is None:
                return None
            if fresh_only and (row["stale"] or row["synced_ts"] < now_ms() - MAX_CACHE_AGE_MS):
                return None
            devices = await storage.remote_devices(conn, user_id)
            applied = await storage.latest_applied_remote_stream_id(conn, user_id)
        body: JsonDict = {
            "user_id": user_id,
            "stream_id": max(row["stream_id"], applied or 0),
            "devices": [],
        }
        for device in devices:
            entry: JsonDict = {"device_id": device["device_id"]}
            if device["keys_json"] is not None:
                entry["keys"] = decode_json(device["keys_json"])
            if device["display_name"] is not None:
                entry["device_display_name"] = device["display_name"]
            body["devices"].append(entry)
        if row["master_key_json"] is not None:
            body["master_key"] = decode_json(row["master_key_json"])
        if row["self_signing_key_json"] is not None:
            body["self_signing_key"] = decode_json(row["self_signing_key_json"])
        return body

    async def query_keys(self, wanted: dict[str, list[str]]) -> JsonDict:
        """/user/keys/query answers for remote users, from their device lists."""
        result: JsonDict = {
            "device_keys": {},
            "master_keys": {},
            "self_signing_keys": {},
            "failures": {},
        }
        users = list(wanted)
        replies = await asyncio.gather(
            *(self.devices(user_id) for user_id in users), return_exceptions=True
        )
        for user_id, reply in zip(users, replies, strict=True):
            if isinstance(reply, BaseException):
                if not isinstance(reply, (Unavailable, BadRequest)):
                    raise reply
                server = user_server(user_id) or user_id
                result["failures"][server] = {"status": 503, "message": reply.message}
                continue
            body, _ = reply
            only = set(wanted[user_id])
            devices = {}
            for device in body["devices"]:
                if "keys" not in device or (only and device["device_id"] not in only):
                    continue
                keys = dict(device["keys"])
                if "device_display_name" in device:
                    keys["unsigned"] = {"device_display_name": device["device_display_name"]}
                devices[device["device_id"]] = keys
            result["device_keys"][user_id] = devices
            if "master_key" in body:
                result["master_keys"][user_id] = body["master_key"]
            if "self_signing_key" in body:
                result["self_signing_keys"][user_id] = body["self_signing_key"]
        return result

    # ------------------------------------------------------------ resync

    async def resync(self, user_id: str) -> JsonDict:
        """Fetch the list now; concurrent callers for one user share one fetch."""
        task = self._resyncs.get(user_id)
        if task is None:
            task = asyncio.create_task(self._resync(user_id))
            self._resyncs[user_id] = task
            task.add_done_callback(lambda _: self._resyncs.pop(user_id, None))
        return await asyncio.shield(task)

    async def _resync(self, user_id: str) -> JsonDict:
        server = self._require_remote(user_id)
        if self.client is None:
            raise Unavailable("no federation client")
        path = federation_path("_matrix", "federation", "v1", "user", "devices", user_id)
        try:
            body = await self.client.get_json(server, path)
        except FederationError as error:
            raise Unavailable(f"could not fetch the devices of {user_id}: {error}") from None
        if (
            not isinstance(body, dict)
            or body.get("user_id") != user_id
            or not _int(body.get("stream_id"))
            or not isinstance(body.get("devices"), list)
        ):
            raise Unavailable(f"{server} sent an invalid /user/devices response")
        devices = []
        for device in body["devices"]:
            if not isinstance(device, dict) or not isinstance(device.get("device_id"), str):
                continue
            entry: JsonDict = {"device_id": device["device_id"]}
            keys = device.get("keys")
            if keys is not None and check_device_keys(keys, user_id, device["device_id"]) is None:
                entry["keys"] = keys
            name = device.get("device_display_name")
            if isinstance(name, str):
                entry["device_display_name"] = name
            devices.append(entry)
        clean: JsonDict = {"user_id": user_id, "stream_id": body["stream_id"], "devices": devices}
        for field, usage in (("master_key", "master"), ("self_signing_key", "self_signing")):
            key = body.get(field)
            if key is not None and check_cross_signing_key(key, user_id, usage) is None:
                clean[field] = key
        if len(devices) > MAX_CACHED_DEVICES:
            log.warning("not caching a huge device list", extra={"user_id": user_id})
            return clean
        await self._store(clean)
        return clean

    async def _store(self, body: JsonDict) -> None:
        user_id = body["user_id"]
        async with self.pool.acquire() as conn, conn.transaction():
            await storage.delete_remote_devices(conn, user_id)
            await storage.delete_remote_stream_ids(conn, user_id, body["stream_id"])
            await storage.insert_remote_devices(
                conn,
                [
                    (
                        user_id,
                        device["device_id"],
                        device.get("device_display_name"),
                        _dumps(device["keys"]) if "keys" in device else None,
                    )
                    for device in body["devices"]
                ],
            )
            master = body.get("master_key")
            self_signing = body.get("self_signing_key")
            await storage.upsert_remote_device_list(
                conn,
                user_id,
                body["stream_id"],
                now_ms(),
                None if master is None else _dumps(master),
                None if self_signing is None else _dumps(self_signing),
            )

    def _resync_later(self, user_id: str) -> None:
        async def run() -> None:
            try:
                await self.resync(user_id)
            except Unavailable as error:
                log.info(
                    "device list resync failed", extra={"user_id": user_id, "error": str(error)}
                )

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------ EDUs

    async def input_edus(
        self, origin: str, device_updates: list[Any], signing_updates: list[Any]
    ) -> tuple[int, int, int]:
        """(applied, resyncs, ignored)."""
        applied = resyncs = ignored = 0
        to_resync: set[str] = set()
        for content in device_updates:
            outcome = await self._device_update(origin, content)
            if outcome == "applied":
                applied += 1
            elif outcome == "ignored":
                ignored += 1
            else:
                to_resync.add(outcome)
        for content in signing_updates:
            if await self._signing_update(origin, content):
                applied += 1
            else:
                ignored += 1
        for user_id in to_resync:
            self._resync_later(user_id)
            resyncs += 1
        return applied, resyncs, ignored

    async def _device_update(self, origin: str, content: Any) -> str:
        """ "applied", "ignored", or the user id to resync."""
        if not isinstance(content, dict):
            return "ignored"
        user_id = content.get("user_id")
        device_id = content.get("device_id")
        stream_id = content.get("stream_id")
        if (
            not isinstance(user_id, str)
            or user_server(user_id) != origin
            or origin == self.server_name
            or not isinstance(device_id, str)
            or not _int(stream_id)
        ):
            return "ignored"
        prev_ids = content.get("prev_id") or []
        if not isinstance(prev_ids, list) or not all(_int(p) for p in prev_ids):
            prev_ids = None
        async with self.pool.acquire() as conn, conn.transaction():
            synced = await storage.lock_remote_device_list(conn, user_id)
            if synced is None:
                return "ignored"  # not tracked: the first query fetches the whole list
            seen = await storage.applied_remote_stream_ids(conn, user_id)
            if stream_id <= synced or stream_id in seen:
                return "ignored"  # already have it
            if not prev_ids or any(p > synced and p not in seen for p in prev_ids):
                await storage.mark_remote_device_list_stale(conn, user_id)
                return user_id
            if content.get("deleted") is True:
                await storage.delete_remote_device(conn, user_id, device_id)
            else:
                keys = content.get("keys")
                if keys is not None and check_device_keys(keys, user_id, device_id) is not None:
                    keys = None
                name = content.get("device_display_name")
                await storage.upsert_remote_device(
                    conn,
                    user_id,
                    device_id,
                    name if isinstance(name, str) else None,
                    None if keys is None else _dumps(keys),
                )
            await storage.insert_remote_stream_id(conn, user_id, stream_id)
        return "applied"

    async def _signing_update(self, origin: str, content: Any) -> bool:
        if not isinstance(content, dict):
            return False
        user_id = content.get("user_id")
        if (
            not isinstance(user_id, str)
            or user_server(user_id) != origin
            or origin == self.server_name
        ):
            return False
        updates = {}
        for field, usage in (("master_key", "master"), ("self_signing_key", "self_signing")):
            key = content.get(field)
            if key is None:
                continue
            if check_cross_signing_key(key, user_id, usage) is not None:
                return False
            updates[f"{field}_json"] = _dumps(key)
        if not updates:
            return False
        async with self.pool.acquire() as conn:
            return await storage.update_remote_cross_signing_keys(conn, user_id, updates)
