"""State at events: the state before an event, resolution at merges, joined servers.

Spec: https://spec.matrix.org/v1.19/server-server-api/#room-state-resolution
— S(E) = resolve {S′(P) for P in prev_events};
with one distinct prev state that is just S′(P), so resolution (and its
preloading) only runs at real merges. :func:`resolve_state` is pure and wants
every event of the state sets and of their auth chains in memory: those come
from the batch being written (not yet in the database) by walking their
``auth_events``, and from the database through one recursive query over the
``event_auth`` edges.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import asyncpg

from matrix_protocol.events import Event, StateKey
from matrix_protocol.room_versions import RoomVersion
from matrix_protocol.state_resolution import resolve_state
from services.events import storage
from services.events.cache import LruCache
from services.events.state_storage import StateGroup, StateMap
from services.events.storage import Status, StoredEvent

MEMBER = "m.room.member"


class EventSource(Protocol):
    """Where events come from: a batch's own unwritten events, then cache and database."""

    @property
    def pending(self) -> Mapping[str, StoredEvent]: ...

    async def events(self, event_ids: Iterable[str]) -> dict[str, StoredEvent]: ...


def _conflicted(maps: Sequence[StateMap]) -> bool:
    first = maps[0]
    return any(other != first for other in maps[1:])


class StateResolver:
    def __init__(self, cache_size: int = 2048) -> None:
        # group id → (joined members per server, those servers sorted)
        self._joined: LruCache[int, tuple[Mapping[str, int], tuple[str, ...]]] = LruCache(
            "events_joined_members", cache_size
        )

    async def resolve(
        self,
        conn: asyncpg.Connection,
        version: RoomVersion,
        create_event_id: str | None,
        maps: Sequence[StateMap],
        source: EventSource,
    ) -> dict[StateKey, str]:
        """Resolve state maps; raises :class:`MissingEventError` if an auth chain has gaps."""
        if len(maps) == 1 or not _conflicted(maps):
            return dict(maps[0])
        roots = {event_id for state in maps for event_id in state.values()}
        if create_event_id:
            roots.add(create_event_id)
        loaded = await self.load_with_auth_chains(conn, roots, source)
        rejected = {event_id for event_id, s in loaded.items() if s.status is Status.REJECTED}
        events = {event_id: s.event for event_id, s in loaded.items()}
        return resolve_state(version, maps, events, rejected=rejected)

    @staticmethod
    async def load_with_auth_chains(
        conn: asyncpg.Connection, roots: Iterable[str], source: EventSource
    ) -> dict[str, StoredEvent]:
        """``roots`` and their auth chains: batch events by walking, stored ones by one query."""
        loaded: dict[str, StoredEvent] = {}
        stored_roots: set[str] = set()
        todo = list(roots)
        while todo:
            event_id = todo.pop()
            if event_id in loaded or event_id in stored_roots:
                continue
            pending = source.pending.get(event_id)
            if pending is None:
                stored_roots.add(event_id)
                continue
            loaded[event_id] = pending
            todo.extend(pending.event.auth_event_ids)
        chain = await storage.auth_chain_ids(conn, stored_roots)
        loaded.update(await source.events([*stored_roots, *chain]))
        return loaded

    async def joined(
        self, conn: asyncpg.Connection, group: StateGroup, source: EventSource
    ) -> tuple[Mapping[str, int], tuple[str, ...]]:
        """Joined members per server in a group's state, and those servers (sorted).

        Counted over the whole state once per group; a group made from a
        counted one by one member event is counted from it
        (:meth:`derive_joined`), at the cost of the servers, not the members.
        """
        cached = self._joined.get(group.id)
        if cached is not None:
            return cached
        members = [(key, e) for (t, key), e in group.state.items() if t == MEMBER]
        memberships = await self._memberships(conn, [e for _, e in members], source)
        counts: dict[str, int] = {}
        for user_id, event_id in members:
            if memberships.get(event_id) == "join":
                server = user_id.split(":", 1)[1]
                counts[server] = counts.get(server, 0) + 1
        return self._remember(group.id, counts)

    def derive_joined(
        self, group_id: int, base_id: int, event: Event, previous_membership: str | None
    ) -> None:
        """Joined servers of ``base`` plus one member event (whose key had
        ``previous_membership`` in base), if base is counted."""
        base = self._joined.get(base_id)
        if base is None or event.type != MEMBER or event.state_key is None:
            return
        was, now = previous_membership == "join", event.membership == "join"
        if was == now:
            self._joined.put(group_id, base)
            return
        counts = dict(base[0])
        server = event.state_key.split(":", 1)[1]
        counts[server] = counts.get(server, 0) + (1 if now else -1)
        if counts[server] <= 0:
            del counts[server]
        self._remember(group_id, counts)

    def _remember(
        self, group_id: int, counts: dict[str, int]
    ) -> tuple[Mapping[str, int], tuple[str, ...]]:
        entry = (counts, tuple(sorted(counts)))
        self._joined.put(group_id, entry)
        return entry

    @staticmethod
    async def _memberships(
        conn: asyncpg.Connection, event_ids: Sequence[str], source: EventSource
    ) -> dict[str, str | None]:
        result: dict[str, str | None] = {}
        unknown = []
        for event_id in event_ids:
            pending = source.pending.get(event_id)
            if pending is not None:
                result[event_id] = pending.event.membership
            else:
                unknown.append(event_id)
        if unknown:
            result.update(await storage.memberships_of(conn, unknown))
        return result
