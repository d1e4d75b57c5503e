"""What the events process refuses: blocked rooms and blocked servers, as held in memory.

Each events replica keeps the lists current by reading the version row of
its own tables every ``server_policy_refresh_interval`` seconds (and at
once after a change made through it), and refuses:

- a blocked room: joins, invites, knocks and leaves over federation and
  locally, events received for it (dropped from /send with M_FORBIDDEN) and
  events sent in it;
- a blocked server's events arriving through other servers (soft-failed,
  :func:`sender_blocked`), on top of the gateway refusing its own requests.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from matrix_protocol.membership import forbidden
from mxfed.server_policy import SERVER_POLICY, PolicySnapshot, ServerPolicy
from services.events.admin import storage

log = logging.getLogger(__name__)


class BlockedRooms:
    def __init__(self) -> None:
        self.rooms: frozenset[str] = frozenset()

    def blocks(self, room_id: str) -> bool:
        return room_id in self.rooms

    def check(self, room_id: str) -> None:
        """Raise 403 M_FORBIDDEN for a blocked room."""
        if room_id in self.rooms:
            raise forbidden("This room has been blocked on this server")


#: This replica's copy of the blocked rooms.
BLOCKED_ROOMS = BlockedRooms()


def sender_blocked(sender: str, policy: ServerPolicy = SERVER_POLICY) -> bool:
    """Whether ``sender``'s (a user id's) server is blocked."""
    _, _, server = sender.partition(":")
    return bool(server) and policy.blocks(server)


class PolicyMirror:
    """Loads the lists from the events tables into :data:`SERVER_POLICY` and
    :data:`BLOCKED_ROOMS` whenever their version changes."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        policy: ServerPolicy = SERVER_POLICY,
        rooms: BlockedRooms = BLOCKED_ROOMS,
    ) -> None:
        self.pool = pool
        self.policy = policy
        self.rooms = rooms
        self.version = 0

    async def refresh(self) -> None:
        async with self.pool.acquire() as conn:
            if await storage.policy_version(conn) == self.version:
                return
            rows = await storage.load_policy(conn)
        self.policy.update(
            PolicySnapshot(
                version=rows.version,
                allow_list_mode=rows.allow_list_mode,
                blocked=tuple(r.pattern for r in rows.rules if not r.allow),
                allowed=tuple(r.pattern for r in rows.rules if r.allow),
            )
        )
        self.rooms.rooms = frozenset(r.room_id for r in rows.blocked_rooms)
        self.version = rows.version

    async def run(self, interval: float) -> None:
        failing = False
        while True:
            try:
                await self.refresh()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    log.warning("admin policy refresh failed", extra={"error": str(exc)})
                failing = True
            await asyncio.sleep(interval)
