"""Inbound ``m.presence``, kept minimal: the latest state of each remote user,
one row per user (``accounts.remote_presence``).

Spec: https://spec.matrix.org/v1.19/server-server-api/#presence

A ``push`` entry is kept when its ``user_id`` is a user of the origin server,
``presence`` is ``online``, ``unavailable`` or ``offline`` and
``last_active_ago`` a non-negative integer; ``status_msg`` (a string) and
``currently_active`` (a boolean, default false) are optional. Anything else
about an entry makes it ignored; other entries of the EDU still count.
Nothing is sent: outbound presence is off (``presence_enabled``), and with
it off inbound presence is ignored too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import asyncpg

from mxfed.clock import now_ms
from mxfed.service_errors import BadRequest
from services.accounts import storage
from services.accounts.validation import user_server

log = logging.getLogger(__name__)

PRESENCE_STATES = frozenset({"online", "unavailable", "offline"})
MAX_QUERY_USERS = 1000


@dataclass(frozen=True)
class PresenceState:
    user_id: str
    presence: str
    last_active_ts: int
    status_msg: str | None
    currently_active: bool
    received_ts: int


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_push(origin: str, entry: Any, received: int) -> PresenceState | None:
    if not isinstance(entry, dict):
        return None
    user_id = entry.get("user_id")
    presence = entry.get("presence")
    ago = entry.get("last_active_ago")
    status_msg = entry.get("status_msg")
    active = entry.get("currently_active", False)
    if (
        not isinstance(user_id, str)
        or user_server(user_id) != origin
        or presence not in PRESENCE_STATES
        or not _is_int(ago)
        or ago < 0
        or not (status_msg is None or isinstance(status_msg, str))
        or not isinstance(active, bool)
    ):
        return None
    return PresenceState(user_id, presence, received - ago, status_msg, active, received)


class RemotePresence:
    def __init__(self, pool: asyncpg.Pool, server_name: str, enabled: bool) -> None:
        self.pool = pool
        self.server_name = server_name
        self.enabled = enabled

    async def input_edus(self, origin: str, contents: Sequence[Any]) -> tuple[int, int]:
        """(stored, ignored) push entries of a transaction's m.presence contents."""
        entries: list[Any] = []
        for content in contents:
            push = content.get("push") if isinstance(content, dict) else None
            entries.extend(push if isinstance(push, list) else [None])
        if not self.enabled or origin == self.server_name:
            return 0, len(entries)
        received = now_ms()
        latest: dict[str, PresenceState] = {}
        ignored = 0
        for entry in entries:
            state = parse_push(origin, entry, received)
            if state is None:
                ignored += 1
            else:
                latest[state.user_id] = state  # a later entry for the same user wins
        if latest:
            rows = [
                (s.user_id, s.presence, s.last_active_ts, s.status_msg, s.currently_active)
                for s in sorted(latest.values(), key=lambda s: s.user_id)
            ]
            await storage.upsert_remote_presence(self.pool, [(*row, received) for row in rows])
        if ignored:
            log.info("presence entries ignored", extra={"origin": origin, "ignored": ignored})
        return len(entries) - ignored, ignored

    async def query(self, user_ids: Sequence[str]) -> list[PresenceState]:
        wanted = sorted(set(user_ids))
        if len(wanted) > MAX_QUERY_USERS:
            raise BadRequest(f"at most {MAX_QUERY_USERS} users per query")
        if not wanted:
            return []
        rows = await storage.remote_presence(self.pool, wanted)
        return [PresenceState(**dict(row)) for row in rows]
