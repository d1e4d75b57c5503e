"""State resolution v1 (room version 1 only; known to cause state resets).

Spec: https://spec.matrix.org/v1.19/rooms/v1/#state-resolution

Where the spec is silent this follows Synapse's ``synapse/state/v1.py`` so
that the result converges with the rest of the network:

* only the unconflicted state and the already resolved keys count as "R";
  an event's own ``auth_events`` are not a fallback;
* join rules are resolved after power levels, then every conflicted member
  key, each against the same R (members do not see each other's outcome),
  then the other keys, each against R as it stands after the members;
* for an "other" key where no candidate passes auth, the candidate with the
  lowest depth (the last in the order) is used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence

from matrix_protocol.auth_events import JOIN_RULES, MEMBER, POWER_LEVELS
from matrix_protocol.auth_rules import AuthError, check_auth_rules
from matrix_protocol.events import Event, StateKey
from matrix_protocol.room_versions import RoomVersion
from matrix_protocol.state_resolution.v2 import EventGraph, StateMap, as_id_set, overlay_state

_PL_KEY: StateKey = (POWER_LEVELS, "")


def resolve(
    room_version: RoomVersion,
    state_sets: Sequence[StateMap],
    events: Mapping[str, Event],
    rejected: Collection[str],
) -> dict[StateKey, str]:
    """Resolve power levels, join rules, members, then everything else."""
    state, conflicted = _partition(state_sets)
    if not conflicted:
        return state
    graph = EventGraph(events, room_version)
    resolver = _Resolver(graph, room_version, rejected)

    if _PL_KEY in conflicted:
        state[_PL_KEY] = resolver.auth_key(_PL_KEY, conflicted[_PL_KEY], state)
    for event_type in (JOIN_RULES, MEMBER):
        keys = [key for key in conflicted if key[0] == event_type]
        resolved = {key: resolver.auth_key(key, conflicted[key], state) for key in keys}
        state.update(resolved)
    others = [key for key in conflicted if key[0] not in (POWER_LEVELS, JOIN_RULES, MEMBER)]
    resolved = {key: resolver.other_key(conflicted[key], state) for key in others}
    state.update(resolved)
    return state


def _partition(
    state_sets: Sequence[StateMap],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """A conflict is one key with different event IDs; a missing key is not."""
    values: dict[StateKey, set[str]] = {}
    for state in state_sets:
        for key, event_id in state.items():
            values.setdefault(key, set()).add(event_id)
    unconflicted = {key: next(iter(ids)) for key, ids in values.items() if len(ids) == 1}
    conflicted = {key: ids for key, ids in values.items() if len(ids) > 1}
    return unconflicted, conflicted


def _sha1(event_id: str) -> str:
    return hashlib.sha1(event_id.encode("utf-8")).hexdigest()


class _Resolver:
    __slots__ = ("_graph", "_room_version", "_rejected")

    def __init__(
        self, graph: EventGraph, room_version: RoomVersion, rejected: Collection[str]
    ) -> None:
        self._graph = graph
        self._room_version = room_version
        self._rejected = as_id_set(rejected)

    def _newest_first(self, event_ids: set[str]) -> list[Event]:
        """Descending ``depth``, then ascending ``sha1(event_id)``."""
        candidates = [self._graph.get(event_id) for event_id in event_ids]
        return sorted(candidates, key=lambda e: (-e.depth, _sha1(e.event_id)))

    def _passes(self, event: Event, state: StateMap) -> bool:
        auth_state: dict[StateKey, Event] = {}
        overlay_state(self._graph, self._room_version, event, state, self._rejected, auth_state)
        try:
            check_auth_rules(event, auth_state)
        except AuthError:
            return False
        return True

    def auth_key(self, key: StateKey, event_ids: set[str], state: StateMap) -> str:
        """Step 2: oldest candidate first, then each next one while it passes
        auth against R holding the previous winner."""
        ordered = self._newest_first(event_ids)
        ordered.reverse()
        working = dict(state)
        winner = ordered[0].event_id
        for event in ordered[1:]:
            working[key] = winner
            if not self._passes(event, working):
                break
            winner = event.event_id
        return winner

    def other_key(self, event_ids: set[str], state: StateMap) -> str:
        """Step 4: the newest candidate that passes auth against R."""
        ordered = self._newest_first(event_ids)
        for event in ordered:
            if self._passes(event, state):
                return event.event_id
        return ordered[-1].event_id
