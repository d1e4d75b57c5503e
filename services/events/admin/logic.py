"""The operator's actions: block lists, room shutdown, blocking and purging, each audited.

Every action that changes something writes its audit record (who: the
caller certificate's identity; what; when) in the same transaction as the
change, and logs it. After a change of the lists this replica reloads them
at once; the other replicas and parts within their refresh interval.

Purging history keeps what later events need to authorise: see
:func:`services.events.storage.purge_history`. Spec for the auth
rules that rely on it: https://spec.matrix.org/v1.19/server-server-api/#authorization-rules
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from mxfed.clock import now_ms
from mxfed.server_policy import valid_pattern
from mxfed.service_errors import BadRequest, NotFound
from services.events import storage as room_storage
from services.events.admin import storage
from services.events.admin.blocks import PolicyMirror
from services.events.cache import LruCache
from services.events.local_events import LocalEvents
from services.events.storage import StoredEvent

log = logging.getLogger(__name__)
audit = logging.getLogger("mxfed.audit")

MEMBER = "m.room.member"


class Action(enum.Enum):
    BLOCK_SERVER = "block_server"
    UNBLOCK_SERVER = "unblock_server"
    ALLOW_SERVER = "allow_server"
    DISALLOW_SERVER = "disallow_server"
    SET_ALLOW_LIST_MODE = "set_allow_list_mode"
    SHUTDOWN_ROOM = "shutdown_room"
    BLOCK_ROOM = "block_room"
    UNBLOCK_ROOM = "unblock_room"
    PURGE_HISTORY = "purge_history"


def _room_id(room_id: str) -> str:
    if not room_id.startswith("!") or len(room_id) > 255:
        raise BadRequest("room_id must be a room id (!...)", "M_INVALID_PARAM")
    return room_id


@dataclass
class ShutdownResult:
    left_users: list[str]
    purged_events: int


class AdminActions:
    def __init__(
        self,
        pool: asyncpg.Pool,
        local: LocalEvents,
        server_name: str,
        mirror: PolicyMirror,
        event_cache: LruCache[str, StoredEvent],
    ) -> None:
        self.pool = pool
        self.local = local
        self.server_name = server_name
        self.mirror = mirror
        self.event_cache = event_cache

    async def _audit(
        self, conn: asyncpg.Connection, caller: str, action: Action, target: str, **details: Any
    ) -> None:
        ts = now_ms()
        record_id = await storage.add_audit(
            conn, ts, caller, action.value, target, orjson.dumps(details).decode()
        )
        audit.info(
            "admin action",
            extra={
                "audit_id": record_id,
                "caller": caller,
                "action": action.value,
                "target": target,
                **{f"detail_{k}": v for k, v in details.items()},
            },
        )

    # ----------------------------------------------------------------- servers

    async def block_server(self, caller: str, pattern: str, reason: str, allow: bool) -> bool:
        pattern = pattern.strip().lower()
        if not valid_pattern(pattern):
            raise BadRequest(f"not a server name pattern: {pattern!r}", "M_INVALID_PARAM")
        if not allow and pattern == self.server_name.lower():
            raise BadRequest("this server cannot block itself", "M_INVALID_PARAM")
        async with self.pool.acquire() as conn, conn.transaction():
            added = await storage.add_server_rule(
                conn, storage.ServerRuleRow(pattern, allow, reason, caller, now_ms())
            )
            if added:
                action = Action.ALLOW_SERVER if allow else Action.BLOCK_SERVER
                await self._audit(conn, caller, action, pattern, reason=reason)
        await self.mirror.refresh()
        return added

    async def unblock_server(self, caller: str, pattern: str, allow: bool) -> bool:
        pattern = pattern.strip().lower()
        async with self.pool.acquire() as conn, conn.transaction():
            removed = await storage.remove_server_rule(conn, pattern, allow)
            if removed:
                action = Action.DISALLOW_SERVER if allow else Action.UNBLOCK_SERVER
                await self._audit(conn, caller, action, pattern)
        await self.mirror.refresh()
        return removed

    async def set_allow_list_mode(self, caller: str, enabled: bool) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            was = await storage.set_allow_list_mode(conn, enabled)
            if was != enabled:
                await self._audit(
                    conn, caller, Action.SET_ALLOW_LIST_MODE, "allow_list_mode", enabled=enabled
                )
        await self.mirror.refresh()
        return was

    async def policy(self) -> storage.PolicyRows:
        async with self.pool.acquire() as conn:
            return await storage.load_policy(conn)

    async def policy_version(self) -> int:
        return await storage.policy_version(self.pool)

    # ------------------------------------------------------------------- rooms

    async def block_room(self, caller: str, room_id: str, reason: str, unblock: bool) -> bool:
        room_id = _room_id(room_id)
        async with self.pool.acquire() as conn, conn.transaction():
            if unblock:
                changed = await storage.unblock_room(conn, room_id)
            else:
                changed = await storage.block_room(
                    conn, storage.BlockedRoomRow(room_id, reason, caller, now_ms())
                )
            if changed:
                action = Action.UNBLOCK_ROOM if unblock else Action.BLOCK_ROOM
                await self._audit(conn, caller, action, room_id, reason=reason)
        await self.mirror.refresh()
        return changed

    async def shutdown_room(
        self, caller: str, room_id: str, reason: str, purge: bool
    ) -> ShutdownResult:
        """Every local member leaves (a leave event each, sent to the other servers), then
        the room is blocked and, with ``purge``, deleted."""
        room_id = _room_id(room_id)
        if not await storage.room_known(self.pool, room_id):
            raise NotFound(f"unknown room {room_id}")
        members = await storage.local_joined_members(self.pool, room_id, self.server_name)
        left = []
        content: dict[str, Any] = {"membership": "leave"}
        if reason:
            content["reason"] = reason
        for user_id in members:
            try:
                await self.local.send_event(room_id, user_id, MEMBER, user_id, content)
            except Exception as exc:
                log.warning(
                    "a member could not leave the room being shut down",
                    extra={"room_id": room_id, "user_id": user_id, "error": str(exc)},
                )
                continue
            left.append(user_id)
        purged: list[str] = []
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await storage.block_room(
                    conn, storage.BlockedRoomRow(room_id, reason, caller, now_ms())
                )
            await self.mirror.refresh()
            if purge:
                purged = await room_storage.purge_room(conn, room_id)
            async with conn.transaction():
                await self._audit(
                    conn,
                    caller,
                    Action.SHUTDOWN_ROOM,
                    room_id,
                    reason=reason,
                    left_users=left,
                    purged_events=len(purged),
                )
        self._forget(purged)
        return ShutdownResult(left, len(purged))

    async def purge_history(
        self, caller: str, room_id: str, before_ts: int | None, before_event_id: str | None
    ) -> tuple[int, int]:
        room_id = _room_id(room_id)
        if not await storage.room_known(self.pool, room_id):
            raise NotFound(f"unknown room {room_id}")
        depth = None
        if before_event_id is not None:
            depth = await storage.event_depth(self.pool, room_id, before_event_id)
            if depth is None:
                raise NotFound(f"unknown event {before_event_id} in {room_id}")
        elif before_ts is None:
            raise BadRequest("give a timestamp or an event to purge before", "M_MISSING_PARAM")
        async with self.pool.acquire() as conn:
            purged, kept = await room_storage.purge_history(
                conn, room_id, before_depth=depth, before_ts=before_ts
            )
            async with conn.transaction():
                await self._audit(
                    conn,
                    caller,
                    Action.PURGE_HISTORY,
                    room_id,
                    before_ts=before_ts,
                    before_event_id=before_event_id,
                    purged_events=len(purged),
                    kept_events=kept,
                )
        self._forget(purged)
        return len(purged), kept

    def _forget(self, event_ids: list[str]) -> None:
        for event_id in event_ids:
            self.event_cache.pop(event_id)

    async def audit_log(self, limit: int) -> list[storage.AuditRow]:
        return await storage.audit_log(self.pool, limit)
