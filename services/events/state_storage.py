"""State groups: room states stored as deltas, without copying full state per event.

A state group is ``prev_group``'s state plus its own entry rows (an entry with
``event_id`` NULL removes a key). Every :data:`SNAPSHOT_INTERVAL` deltas a
group is written as a full snapshot instead, so reading any group touches at
most that many groups (one recursive query). The state *before* each event
and *after* each state event are groups
(https://spec.matrix.org/v1.19/server-server-api/#room-state-resolution);
a non-state event shares its before-group with its prev's after-group. Groups are
immutable, so full maps of recently used groups are kept in a bounded LRU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import asyncpg

from matrix_protocol.events import StateKey
from services.events.cache import LruCache

StateMap = Mapping[StateKey, str]
SNAPSHOT_INTERVAL = 32


@dataclass(frozen=True)
class StateGroup:
    id: int
    state: StateMap
    distance: int  # deltas since the last full snapshot


@dataclass
class PendingGroups:
    """Groups made during a room batch, written when the batch commits."""

    ids: list[int] = field(default_factory=list)  # reserved, not yet used
    groups: list[tuple[int, str, int | None, int]] = field(default_factory=list)
    entries: list[tuple[int, str, str, str | None]] = field(default_factory=list)


class StateStore:
    def __init__(self, pool: asyncpg.Pool, cache_size: int = 512) -> None:
        self.pool = pool
        self._cache: LruCache[int, StateGroup] = LruCache("events_state_groups", cache_size)

    @staticmethod
    async def reserve_ids(conn: asyncpg.Connection, pending: PendingGroups, count: int) -> None:
        """Reserve group ids in one round trip (unused ones are simply skipped)."""
        if len(pending.ids) >= count:
            return
        rows = await conn.fetch(
            "SELECT nextval('events.state_group_ids') AS id FROM generate_series(1, $1)",
            count - len(pending.ids),
        )
        pending.ids.extend(row["id"] for row in rows)

    async def get(self, conn: asyncpg.Connection, group_id: int) -> StateGroup:
        cached = self._cache.get(group_id)
        if cached is not None:
            return cached
        rows = await conn.fetch(
            """
            WITH RECURSIVE chain(id, prev_group, n) AS (
                SELECT id, prev_group, 0 FROM events.state_groups WHERE id = $1
                UNION ALL
                SELECT g.id, g.prev_group, c.n + 1
                FROM events.state_groups g JOIN chain c ON g.id = c.prev_group
            )
            SELECT c.n, s.type, s.state_key, s.event_id
            FROM chain c LEFT JOIN events.state_group_entries s ON s.group_id = c.id
            ORDER BY c.n DESC
            """,
            group_id,
        )
        if not rows:
            raise KeyError(f"unknown state group {group_id}")
        state: dict[StateKey, str] = {}
        distance = 0
        for row in rows:
            distance = max(distance, row["n"])
            if row["type"] is None:
                continue
            key = (row["type"], row["state_key"])
            if row["event_id"] is None:
                state.pop(key, None)
            else:
                state[key] = row["event_id"]
        group = StateGroup(group_id, state, distance)
        self._cache.put(group_id, group)
        return group

    def derive(
        self,
        room_id: str,
        base: StateGroup | None,
        state: StateMap,
        pending: PendingGroups,
        delta: Mapping[StateKey, str | None] | None = None,
    ) -> StateGroup:
        """A new group holding ``state``, stored as a delta on ``base`` when that is cheap.

        ``delta`` (base → state), when the caller knows it, saves a diff.
        """
        group_id = pending.ids.pop()
        if base is not None and base.distance + 1 < SNAPSHOT_INTERVAL:
            if delta is None:
                delta = {k: v for k, v in state.items() if base.state.get(k) != v}
                delta.update({k: None for k in base.state if k not in state})
            group = StateGroup(group_id, state, base.distance + 1)
            pending.groups.append((group_id, room_id, base.id, group.distance))
            pending.entries.extend((group_id, t, k, v) for (t, k), v in delta.items())
        else:
            group = StateGroup(group_id, state, 0)
            pending.groups.append((group_id, room_id, None, 0))
            pending.entries.extend((group_id, t, k, v) for (t, k), v in state.items())
        self._cache.put(group_id, group)
        return group

    @staticmethod
    async def write(conn: asyncpg.Connection, pending: PendingGroups) -> None:
        if pending.groups:
            await conn.copy_records_to_table(
                "state_groups",
                schema_name="events",
                columns=["id", "room_id", "prev_group", "distance"],
                records=pending.groups,
            )
        if pending.entries:
            await conn.copy_records_to_table(
                "state_group_entries",
                schema_name="events",
                columns=["group_id", "type", "state_key", "event_id"],
                records=pending.entries,
            )
