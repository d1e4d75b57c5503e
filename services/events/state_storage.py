"""State groups: room states as layers of deltas that share structure, on disk and in memory.

The state *before* each event and *after* each state event are groups
(https://spec.matrix.org/v1.19/rooms/v2/#state-resolution); a non-state event
shares its before-group with its prev's after-group. A group is its
``prev_group``'s state plus its own entry rows (an entry with ``event_id``
NULL removes a key); a group without ``prev_group`` is a full snapshot.

Layers merge like a binary counter, so neither a write nor a read grows
with the room:

* a new group's delta goes on top of its base; while it is at least as big
  as the delta of the layer under it, the two merge (the new group then sits
  on that layer's parent) — the chain under any group stays short (about
  log₂ of the deltas since the snapshot) and each entry is rewritten only
  that many times;
* a delta that grows as big as the snapshot it would sit on becomes a new
  snapshot, whose cost the as-many state events before it already paid.

A state event in a 20,000-member room therefore writes a handful of rows,
like one in a 100-member room (the old policy wrote a 20,000-row snapshot
every 32nd state event), and reading any group reads one snapshot and a few
small deltas (one recursive query).

In memory a group is a :class:`LayeredState`: its delta over its parent
group's object, so groups of a room share their snapshot and layers instead
of each holding a full map (memory grows with the deltas, not with groups ×
room size). Lookups walk the few layers; iterating materialises.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, Mapping, ValuesView
from dataclasses import dataclass, field

import asyncpg

from matrix_protocol.events import StateKey
from services.events.cache import LruCache

StateMap = Mapping[StateKey, str]
Delta = dict[StateKey, str | None]


class LayeredState(Mapping[StateKey, str]):
    """An immutable state map: ``delta`` (None removes a key) over ``parent``, or a snapshot."""

    __slots__ = ("group_id", "parent", "delta", "layers", "_size")

    def __init__(
        self, group_id: int, parent: LayeredState | None, delta: Mapping[StateKey, str | None]
    ) -> None:
        self.group_id = group_id  # the state group this layer is
        self.parent = parent
        if parent is None:
            self.delta: Delta = {k: v for k, v in delta.items() if v is not None}
            self.layers = 0
            self._size = len(self.delta)
            return
        self.delta = dict(delta)
        self.layers = parent.layers + 1
        size = len(parent)
        for key, value in self.delta.items():
            had = key in parent
            if value is None and had:
                size -= 1
            elif value is not None and not had:
                size += 1
        self._size = size

    def __getitem__(self, key: StateKey) -> str:
        node: LayeredState | None = self
        while node is not None:
            delta = node.delta
            if key in delta:
                value = delta[key]
                if value is None:
                    raise KeyError(key)
                return value
            node = node.parent
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        node: LayeredState | None = self
        while node is not None:
            if key in node.delta:
                return node.delta[key] is not None
            node = node.parent
        return False

    def get(self, key: StateKey, default: str | None = None) -> str | None:  # type: ignore[override]
        try:
            return self[key]
        except KeyError:
            return default

    def __len__(self) -> int:
        return self._size

    def flat(self) -> dict[StateKey, str]:
        """The whole map (a copy: O(room state))."""
        chain = []
        node: LayeredState | None = self
        while node is not None:
            chain.append(node)
            node = node.parent
        result: dict[StateKey, str] = {k: v for k, v in chain[-1].delta.items() if v is not None}
        for layer in reversed(chain[:-1]):
            for key, value in layer.delta.items():
                if value is None:
                    result.pop(key, None)
                else:
                    result[key] = value
        return result

    def __iter__(self) -> Iterator[StateKey]:
        return iter(self.flat())

    def items(self) -> ItemsView[StateKey, str]:
        return self.flat().items()

    def values(self) -> ValuesView[str]:
        return self.flat().values()

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if isinstance(other, LayeredState):
            if len(self) != len(other):
                return False
            changed, removed = diff(self, other)
            return not changed and not removed
        if isinstance(other, Mapping):
            return len(self) == len(other) and self.flat() == dict(other)
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LayeredState({len(self)} keys, {self.layers} layers)"


def _chain(state: LayeredState) -> list[LayeredState]:
    nodes = []
    node: LayeredState | None = state
    while node is not None:
        nodes.append(node)
        node = node.parent
    return nodes


def diff(
    old: Mapping[StateKey, str], new: Mapping[StateKey, str]
) -> tuple[dict[StateKey, str], list[StateKey]]:
    """(keys whose value is new or changed → new value, keys removed) from ``old`` to ``new``.

    Two layered states with a common layer compare only the deltas above
    it (a few rows for consecutive states of a room); anything else compares
    everything.
    """
    if isinstance(old, LayeredState) and isinstance(new, LayeredState):
        old_chain, new_chain = _chain(old), _chain(new)
        old_ids = {id(n): i for i, n in enumerate(old_chain)}
        common = next((n for n in new_chain if id(n) in old_ids), None)
        if common is not None:
            touched: set[StateKey] = set()
            for node in old_chain[: old_ids[id(common)]]:
                touched.update(node.delta)
            for node in new_chain:
                if node is common:
                    break
                touched.update(node.delta)
            changed: dict[StateKey, str] = {}
            removed: list[StateKey] = []
            for key in touched:
                before, after = old.get(key), new.get(key)
                if after is None:
                    if before is not None:
                        removed.append(key)
                elif after != before:
                    changed[key] = after
            return changed, removed
    old_map = old.flat() if isinstance(old, LayeredState) else old
    new_map = new.flat() if isinstance(new, LayeredState) else new
    changed = {k: v for k, v in new_map.items() if old_map.get(k) != v}
    removed = [k for k in old_map if k not in new_map]
    return changed, removed


@dataclass(frozen=True)
class StateGroup:
    id: int
    state: LayeredState
    distance: int  # layers above the snapshot (the chain a read walks)


@dataclass
class PendingGroups:
    """Groups made during a room batch, written when the batch commits."""

    ids: list[int] = field(default_factory=list)  # reserved (storage.room_head), not yet used
    groups: list[tuple[int, str, int | None, int]] = field(default_factory=list)
    entries: list[tuple[int, str, str, str | None]] = field(default_factory=list)


class StateStore:
    def __init__(self, pool: asyncpg.Pool, cache_size: int = 512) -> None:
        self.pool = pool
        self._cache: LruCache[int, StateGroup] = LruCache("events_state_groups", cache_size)

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
            SELECT c.id, c.n, s.type, s.state_key, s.event_id
            FROM chain c LEFT JOIN events.state_group_entries s ON s.group_id = c.id
            ORDER BY c.n DESC
            """,
            group_id,
        )
        if not rows:
            raise KeyError(f"unknown state group {group_id}")
        # One layer per group of the chain, snapshot first; layers already in
        # memory are shared instead of built again.
        deltas: dict[int, Delta] = {}
        order: list[int] = []
        for row in rows:
            gid = row["id"]
            if gid not in deltas:
                deltas[gid] = {}
                order.append(gid)
            if row["type"] is not None:
                deltas[gid][(row["type"], row["state_key"])] = row["event_id"]
        parent: StateGroup | None = None
        for gid in order:
            known = self._cache.get(gid)
            if known is None:
                layer = LayeredState(gid, parent.state if parent else None, deltas[gid])
                known = StateGroup(gid, layer, layer.layers)
                self._cache.put(gid, known)
            parent = known
        assert parent is not None and parent.id == group_id
        return parent

    def derive(
        self,
        room_id: str,
        base: StateGroup | None,
        pending: PendingGroups,
        *,
        delta: Mapping[StateKey, str | None] | None = None,
        state: StateMap | None = None,
    ) -> StateGroup:
        """A new group: ``base`` changed by ``delta``, or holding ``state`` (a diff to ``base``).

        The delta merges into the layers under it while it is at least as
        big as theirs, and becomes a snapshot once as big as the snapshot.
        """
        group_id = pending.ids.pop()
        if delta is None:
            assert state is not None
            if base is None:
                delta = dict(state)
            else:
                changed, removed = diff(base.state, state)
                delta = {**changed, **{k: None for k in removed}}
        merged: Delta = dict(delta)
        parent = base
        while parent is not None and len(merged) >= len(parent.state.delta):
            if parent.state.parent is None:
                parent = None  # as big as the snapshot: a new snapshot
                break
            merged = {**parent.state.delta, **merged}
            grandparent = parent.state.parent
            parent = StateGroup(grandparent.group_id, grandparent, grandparent.layers)
        if parent is None:
            full = dict(base.state.flat()) if base is not None else {}
            for key, value in delta.items():
                if value is None:
                    full.pop(key, None)
                else:
                    full[key] = value
            layer = LayeredState(group_id, None, full)
            pending.groups.append((group_id, room_id, None, 0))
            pending.entries.extend((group_id, t, k, v) for (t, k), v in layer.delta.items())
        else:
            layer = LayeredState(group_id, parent.state, merged)
            pending.groups.append((group_id, room_id, parent.id, layer.layers))
            pending.entries.extend((group_id, t, k, v) for (t, k), v in merged.items())
        group = StateGroup(group_id, layer, layer.layers)
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
