"""State resolution v2 (room versions 2–11) and v2.1 (room version 12).

Spec: https://spec.matrix.org/v1.19/rooms/v2/#definitions,
https://spec.matrix.org/v1.19/rooms/v2/#algorithm (v2) and
https://spec.matrix.org/v1.19/rooms/v12/#state-resolution (the v2.1 changes:
conflicted state subgraph, and an empty map at step 2).

Pure: every event the algorithm touches is looked up in the caller's
``events`` mapping, and a missing one raises :class:`MissingEventError`.
Where the spec leaves a choice open (marked **[Synapse]**), this module follows
Synapse so that the result converges with the rest of the network:

* ``m.room.create`` counts as a power event and power levels / join rules /
  create only count with ``state_key`` ``""``;
* the auth chain of a state set *includes* the set's own events (so an
  unconflicted event is never in the auth difference);
* step 1 pulls in auth ancestors of the power events only through events that
  are themselves in the full conflicted set.

In room v12 the create event is an implicit auth event of every other event
(``"$" + room_id[1:]``); it is treated as listed everywhere here: auth chains,
the sender power level used for ordering, and the iterative auth checks.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TypeAlias

from matrix_protocol.auth_events import (
    CREATE,
    JOIN_RULES,
    MEMBER,
    POWER_LEVELS,
    auth_types_for_event,
)
from matrix_protocol.auth_rules import AuthError, check_auth_rules
from matrix_protocol.events import Event, StateKey
from matrix_protocol.power_levels import user_power_level
from matrix_protocol.room_versions import RoomVersion, StateResolution

StateMap: TypeAlias = Mapping[StateKey, str]

_PL_KEY: StateKey = (POWER_LEVELS, "")
_CREATE_KEY: StateKey = (CREATE, "")
_POWER_STATE_KEYS = frozenset({_PL_KEY, (JOIN_RULES, ""), _CREATE_KEY})


class MissingEventError(KeyError):
    """An event state resolution needs is not in the ``events`` mapping.

    ``event_id`` names it: fetch it (and its auth chain) and call again.
    """

    def __init__(self, event_id: str) -> None:
        super().__init__(event_id)
        self.event_id = event_id

    def __str__(self) -> str:
        return f"event {self.event_id} is needed for state resolution but was not supplied"


class EventGraph:
    """The caller's events seen as an auth DAG, with the edges memoised.

    ``auth_ids`` lists an event's auth events without duplicates, plus (v12)
    the implied create event. One instance serves one resolution.
    """

    __slots__ = ("_events", "_implicit_create", "_auth", "_pl")

    def __init__(self, events: Mapping[str, Event], room_version: RoomVersion) -> None:
        self._events = events
        self._implicit_create = room_version.room_id_from_create_event
        self._auth: dict[str, tuple[str, ...]] = {}
        self._pl: dict[str, str | None] = {}

    def get(self, event_id: str) -> Event:
        try:
            return self._events[event_id]
        except KeyError:
            raise MissingEventError(event_id) from None

    def auth_ids(self, event_id: str) -> tuple[str, ...]:
        ids = self._auth.get(event_id)
        if ids is None:
            event = self.get(event_id)
            listed = dict.fromkeys(event.auth_event_ids)
            if self._implicit_create and event.type != CREATE:
                listed["$" + event.room_id[1:]] = None
            ids = self._auth[event_id] = tuple(listed)
        return ids

    def power_levels_auth_id(self, event_id: str) -> str | None:
        """The ``m.room.power_levels`` event among ``event_id``'s auth events."""
        try:
            return self._pl[event_id]
        except KeyError:
            pass
        found = None
        for auth_id in self.auth_ids(event_id):
            auth_event = self.get(auth_id)
            if auth_event.type == POWER_LEVELS and auth_event.state_key == "":
                found = auth_id
                break
        self._pl[event_id] = found
        return found

    def closure(self, event_ids: Iterable[str]) -> set[str]:
        """``event_ids`` together with their full auth chains."""
        seen = set(event_ids)
        stack = list(seen)
        while stack:
            for auth_id in self.auth_ids(stack.pop()):
                if auth_id not in seen:
                    seen.add(auth_id)
                    stack.append(auth_id)
        return seen


def auth_chain(
    event_ids: Iterable[str], events: Mapping[str, Event], room_version: RoomVersion
) -> set[str]:
    """The union of the auth chains of ``event_ids`` (v2 "Definitions").

    An event's auth chain is its ``auth_events``, their ``auth_events`` and so
    on; the starting events themselves are excluded unless one is in another's
    chain. In room v12 the create event counts as an auth event of every other
    event. ``events`` must hold every event of the chains, else
    :class:`MissingEventError`.
    """
    graph = EventGraph(events, room_version)
    seen: set[str] = set()
    stack = list(event_ids)
    while stack:
        for auth_id in graph.auth_ids(stack.pop()):
            if auth_id not in seen:
                seen.add(auth_id)
                stack.append(auth_id)
    return seen


def partition(
    state_sets: Sequence[StateMap],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """Split into the unconflicted state map and the conflicted state set ("Definitions").

    A key missing from some state set is conflicted too.
    """
    first, rest = state_sets[0], state_sets[1:]
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, set[str]] = {}
    for key, event_id in first.items():
        if all(other.get(key) == event_id for other in rest):
            unconflicted[key] = event_id
        else:
            conflicted[key] = {event_id}
    for other in rest:
        for key, event_id in other.items():
            if key not in unconflicted:
                conflicted.setdefault(key, set()).add(event_id)
    return unconflicted, conflicted


def is_power_event(event: Event) -> bool:
    """Definitions, "power event" (with Synapse's create / empty-``state_key`` reading)."""
    if event.type == MEMBER:
        return event.membership in ("leave", "ban") and event.sender != event.state_key
    return event.is_state and event.state_tuple in _POWER_STATE_KEYS


def iterative_auth_checks(
    room_version: RoomVersion,
    event_ids: Iterable[str],
    base_state: StateMap,
    events: Mapping[str, Event],
    *,
    rejected: Collection[str] = (),
) -> dict[StateKey, str]:
    """Definitions, "iterative auth checks": apply ``event_ids`` in order onto ``base_state``.

    Each event is checked with :func:`check_auth_rules` against, for every key
    the rules need (``auth_types_for_event``), the event in the state built so
    far, else the event's own auth event for that key (v12: plus the implied
    create event). Events in ``rejected`` are never used as auth events. An
    event that passes is put in the state at its ``(type, state_key)``; one
    that fails is skipped. Returns the new state (``base_state`` is not
    modified).
    """
    graph = EventGraph(events, room_version)
    return _iterative_auth_checks(
        graph, room_version, event_ids, dict(base_state), as_id_set(rejected)
    )


def as_id_set(ids: Collection[str]) -> Collection[str]:
    """``ids`` with O(1) membership tests (not copied when already a set)."""
    return ids if isinstance(ids, (set, frozenset)) else frozenset(ids)


def _iterative_auth_checks(
    graph: EventGraph,
    room_version: RoomVersion,
    event_ids: Iterable[str],
    state: dict[StateKey, str],
    rejected: Collection[str],
) -> dict[StateKey, str]:
    """Run the checks, updating and returning ``state`` itself."""
    for event_id in event_ids:
        event = graph.get(event_id)
        auth_state: dict[StateKey, Event] = {}
        for auth_id in graph.auth_ids(event_id):
            if auth_id not in rejected:
                auth_event = graph.get(auth_id)
                if auth_event.is_state:
                    auth_state[auth_event.state_tuple] = auth_event
        overlay_state(graph, room_version, event, state, rejected, auth_state)
        try:
            check_auth_rules(event, auth_state)
        except AuthError:
            continue
        state[event.state_tuple] = event_id
    return state


def overlay_state(
    graph: EventGraph,
    room_version: RoomVersion,
    event: Event,
    state: StateMap,
    rejected: Collection[str],
    auth_state: dict[StateKey, Event],
) -> None:
    """Put into ``auth_state`` the (non-rejected) events ``state`` holds at the
    keys the auth rules need for ``event``."""
    for key in auth_types_for_event(
        event.type, event.sender, event.state_key, event.content, room_version
    ):
        state_id = state.get(key)
        if state_id is not None and state_id not in rejected:
            auth_state[key] = graph.get(state_id)


def resolve(
    room_version: RoomVersion,
    state_sets: Sequence[StateMap],
    events: Mapping[str, Event],
    rejected: Collection[str],
) -> dict[StateKey, str]:
    """The v2 "Algorithm", or v2.1 when ``room_version.state_resolution`` is ``V2_1``."""
    unconflicted, conflicted = partition(state_sets)
    if not conflicted:
        return unconflicted
    v2_1 = room_version.state_resolution is StateResolution.V2_1
    graph = EventGraph(events, room_version)
    rejected = as_id_set(rejected)

    conflicted_ids = set().union(*conflicted.values())
    # Per state set: its conflicted events with their auth chains. The full
    # auth chain of the set is this plus the closure of the unconflicted map.
    chains = [
        graph.closure(event_id for key, event_id in state.items() if key in conflicted)
        for state in state_sets
    ]
    full_conflicted = conflicted_ids | _auth_difference(graph, unconflicted, chains)
    if v2_1:
        full_conflicted |= _conflicted_subgraph(graph, conflicted_ids, set().union(*chains))

    # Step 1–2: power events in reverse topological power order.
    power_ids = [e for e in full_conflicted if is_power_event(graph.get(e))]
    sorted_power = _reverse_topological_power_sort(graph, power_ids, full_conflicted)
    start: dict[StateKey, str] = {} if v2_1 else dict(unconflicted)
    state = _iterative_auth_checks(graph, room_version, sorted_power, start, rejected)

    # Step 3–4: everything else in mainline order of the resolved power levels.
    power_set = set(sorted_power)
    others = [e for e in full_conflicted if e not in power_set]
    sorted_others = _mainline_sort(graph, others, state.get(_PL_KEY))
    state = _iterative_auth_checks(graph, room_version, sorted_others, state, rejected)

    # Step 5.
    state.update(unconflicted)
    return state


def _auth_difference(
    graph: EventGraph, unconflicted: StateMap, chains: Sequence[set[str]]
) -> set[str]:
    """Definitions, "auth difference", ∪Cᵢ − ∩Cᵢ with Cᵢ = U ∪ Xᵢ.

    U is the closure of the unconflicted map (common to every set) and Xᵢ the
    closure of set i's conflicted events, so the difference is
    (∪Xᵢ − ∩Xᵢ) − U. U is walked lazily: only until every candidate is found,
    and never below an event of ∩Xᵢ (whose whole chain is in ∩Xᵢ as well).
    """
    common = chains[0].intersection(*chains[1:])
    candidates = set().union(*chains) - common
    if not candidates:
        return candidates
    seen = set(unconflicted.values())
    stack = list(seen)
    candidates -= seen
    while stack and candidates:
        for auth_id in graph.auth_ids(stack.pop()):
            if auth_id not in seen and auth_id not in common:
                seen.add(auth_id)
                candidates.discard(auth_id)
                stack.append(auth_id)
    return candidates


def _conflicted_subgraph(
    graph: EventGraph, conflicted_ids: set[str], ancestors: set[str]
) -> set[str]:
    """v2.1 "conflicted state subgraph": events on an auth path between two
    conflicted events, endpoints included.

    ``ancestors`` is the conflicted events with their auth chains; an event of
    it is in the subgraph iff it is conflicted or reaches a conflicted event.
    """
    reaches: dict[str, bool] = dict.fromkeys(conflicted_ids, True)
    for start in ancestors:
        stack = [start]
        while stack:
            node = stack[-1]
            if node in reaches:
                stack.pop()
                continue
            auth_ids = graph.auth_ids(node)
            pending = [a for a in auth_ids if a not in reaches]
            if pending:
                stack.extend(pending)
                continue
            reaches[node] = any(reaches[a] for a in auth_ids)
            stack.pop()
    return {event_id for event_id in ancestors if reaches[event_id]}


def _sender_power_level(graph: EventGraph, event_id: str) -> int | float:
    """The sender's power level according to the event's own auth events.

    Uses the cited power levels and create events (v12: creators are
    infinite); a create event counts as its own. An event citing no create
    event (malformed; it fails the auth checks anyway) gets 0.
    """
    event = graph.get(event_id)
    create = event if event.type == CREATE else None
    power_levels = None
    for auth_id in graph.auth_ids(event_id):
        auth_event = graph.get(auth_id)
        if auth_event.state_key == "":
            if auth_event.type == POWER_LEVELS:
                power_levels = auth_event
            elif auth_event.type == CREATE:
                create = auth_event
    if create is None:
        return 0
    return user_power_level(event.sender, power_levels, create)


def _reverse_topological_power_sort(
    graph: EventGraph, power_ids: Iterable[str], full_conflicted: set[str]
) -> list[str]:
    """Algorithm step 1: the power events plus their auth ancestors inside the full
    conflicted set, in reverse topological power ordering.

    Kahn's algorithm over the ``auth_events`` edges within the set; among the
    ready events the smallest ``(-sender power level, origin_server_ts,
    event_id)`` goes first.
    """
    parents: dict[str, list[str]] = {}
    stack = list(power_ids)
    while stack:
        event_id = stack.pop()
        if event_id in parents:
            continue
        in_set = [a for a in graph.auth_ids(event_id) if a in full_conflicted]
        parents[event_id] = in_set
        stack.extend(a for a in in_set if a not in parents)

    children: dict[str, list[str]] = {event_id: [] for event_id in parents}
    waiting: dict[str, int] = {}
    ready: list[tuple[int | float, int, str]] = []
    for event_id, in_set in parents.items():
        waiting[event_id] = len(in_set)
        for parent in in_set:
            children[parent].append(event_id)
        if not in_set:
            ready.append(_power_order_key(graph, event_id))
    heapq.heapify(ready)

    ordered: list[str] = []
    while ready:
        event_id = heapq.heappop(ready)[2]
        ordered.append(event_id)
        for child in children[event_id]:
            waiting[child] -= 1
            if not waiting[child]:
                heapq.heappush(ready, _power_order_key(graph, child))
    return ordered


def _power_order_key(graph: EventGraph, event_id: str) -> tuple[int | float, int, str]:
    return (
        -_sender_power_level(graph, event_id),
        graph.get(event_id).origin_server_ts,
        event_id,
    )


def _mainline_sort(
    graph: EventGraph, event_ids: list[str], power_levels_id: str | None
) -> list[str]:
    """Algorithm step 3: mainline ordering relative to ``power_levels_id``'s mainline.

    Positions are numbered as Synapse does (oldest mainline PL 1, the resolved
    PL n, not found 0) so that a plain ascending sort on
    ``(position, origin_server_ts, event_id)`` gives the "mainline ordering". Positions
    of the PL events walked through are memoised.
    """
    if not event_ids:
        return event_ids
    mainline: list[str] = []
    seen: set[str] = set()
    current = power_levels_id
    while current is not None and current not in seen:
        seen.add(current)
        mainline.append(current)
        current = graph.power_levels_auth_id(current)
    position: dict[str, int] = {
        event_id: len(mainline) - index for index, event_id in enumerate(mainline)
    }

    def position_of(event_id: str) -> int:
        path: list[str] = []
        current = graph.power_levels_auth_id(event_id)
        while current is not None and current not in position:
            if current in path:  # a cycle (only forgeable with v1/v2 event IDs)
                break
            path.append(current)
            current = graph.power_levels_auth_id(current)
        found = position.get(current, 0) if current is not None else 0
        for walked in path:
            position[walked] = found
        return found

    keys = {
        event_id: (position_of(event_id), graph.get(event_id).origin_server_ts, event_id)
        for event_id in event_ids
    }
    return sorted(event_ids, key=keys.__getitem__)
