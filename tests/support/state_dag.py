"""A DAG helper for the state resolution tests, and the scenarios they share.

:class:`Dag` places events of one room with chosen IDs (``$NAME:example.com``,
``$NAME`` in v12), timestamps in construction order, and given auth and prev
events; :class:`Graph` builds a Synapse-style scenario (nodes plus prev edges)
on top of Synapse's starting room, computing the state before each merge with
:func:`resolve_state` itself. The scenarios re-express the cases of Synapse's
``tests/state/test_v2.py``; :func:`walkthrough` is a worked example of our own, step
by step.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from matrix_protocol.auth_events import select_auth_event_ids
from matrix_protocol.events import Event, StateKey
from matrix_protocol.room_versions import EventFormat, RoomVersion, room_version
from matrix_protocol.state_resolution import resolve_state
from tests.support.room_builder import RoomBuilder

ALICE = "@alice:example.com"
BOB = "@bob:example.com"
CHARLIE = "@charlie:example.com"
EVELYN = "@evelyn:example.com"
ZARA = "@zara:example.com"

MEMBER, PL, JR, TOPIC = "m.room.member", "m.room.power_levels", "m.room.join_rules", "m.room.topic"
TOPIC_KEY = (TOPIC, "")
JOIN = {"membership": "join"}
BAN = {"membership": "ban"}

# DAG helper ----------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """An event to be placed in a :class:`Dag`; ``name`` becomes its ID."""

    name: str
    sender: str
    type: str
    state_key: str | None
    content: Mapping[str, Any] = field(default_factory=dict)


def member(name: str, sender: str, target: str, content: Mapping[str, Any]) -> Node:
    return Node(name, sender, MEMBER, target, content)


class Dag:
    """Events of one room with chosen IDs, timestamps, auth and prev events."""

    def __init__(self, version: str | RoomVersion, *, create: str = "CREATE") -> None:
        """``create`` names the create event (v12 derives the room ID from it)."""
        self.version = room_version(version) if isinstance(version, str) else version
        self.events: dict[str, Event] = {}
        v12 = self.version.room_id_from_create_event
        self.room_id = f"!{create}" if v12 else "!r:example.com"
        self._ts = itertools.count(1)

    def id(self, name: str) -> str:
        if self.version.room_id_from_create_event:
            return f"${name}"
        return f"${name}:example.com"

    def add(
        self,
        node: Node,
        *,
        auth: Iterable[str],
        prev: Iterable[str],
        ts: int | None = None,
        depth: int | None = None,
    ) -> Event:
        """``auth`` / ``prev`` are event IDs (v12: the create is implied, not listed)."""
        event_id = self.id(node.name)
        auth_ids, prev_ids = list(auth), list(prev)
        pdu: dict[str, Any] = {
            "type": node.type,
            "sender": node.sender,
            "content": dict(node.content),
            "origin_server_ts": next(self._ts) if ts is None else ts,
            "depth": depth
            if depth is not None
            else max((self.events[p].depth for p in prev_ids), default=0) + 1,
            "hashes": {"sha256": "fake"},
            "signatures": {},
        }
        if node.state_key is not None:
            pdu["state_key"] = node.state_key
        if not (self.version.room_id_from_create_event and node.type == "m.room.create"):
            pdu["room_id"] = self.room_id
        if self.version.event_format is EventFormat.V1:
            pdu["event_id"] = event_id
            pdu["auth_events"] = [[i, {"sha256": "fake"}] for i in auth_ids]
            pdu["prev_events"] = [[i, {"sha256": "fake"}] for i in prev_ids]
        else:
            pdu["auth_events"] = auth_ids
            pdu["prev_events"] = prev_ids
        event = Event(pdu, self.version, event_id)
        self.events[event_id] = event
        return event

    def add_on(
        self, state: Mapping[StateKey, str], node: Node, *, prev: Iterable[str], **kwargs: Any
    ) -> Event:
        """Add ``node`` with auth events selected from ``state`` (spec:
        https://spec.matrix.org/v1.19/server-server-api/#auth-events-selection)."""
        auth = select_auth_event_ids(
            node.type, node.sender, node.state_key, node.content, self.version, state
        )
        return self.add(node, auth=auth, prev=prev, **kwargs)

    def resolve(
        self,
        *state_sets: Mapping[StateKey, str],
        events: Mapping[str, Event] | None = None,
        rejected: Iterable[str] = (),
    ) -> dict[StateKey, str]:
        """Resolve with this DAG's events (or ``events``)."""
        events = self.events if events is None else events
        return resolve_state(self.version, state_sets, events, rejected=set(rejected))


def initial_nodes(version: RoomVersion) -> list[Node]:
    """Synapse's starting room: Alice creates (PL 100), Bob, Charlie, Zara join."""
    create_content: dict[str, Any] = {"room_version": version.identifier}
    if not version.creator_is_sender:
        create_content["creator"] = ALICE
    return [
        Node("CREATE", ALICE, "m.room.create", "", create_content),
        member("IMA", ALICE, ALICE, JOIN),
        Node("IPOWER", ALICE, PL, "", {"users": pl_users({ALICE: 100}, version)}),
        Node("IJR", ALICE, JR, "", {"join_rule": "public"}),
        member("IMB", BOB, BOB, JOIN),
        member("IMC", CHARLIE, CHARLIE, JOIN),
        member("IMZ", ZARA, ZARA, JOIN),
        Node("START", ZARA, "m.room.message", None),
        Node("END", ZARA, "m.room.message", None),
    ]


INITIAL_EDGES = ["START", "IMZ", "IMC", "IMB", "IJR", "IPOWER", "IMA", "CREATE"]


def pl_users(users: Mapping[str, int], version: RoomVersion) -> dict[str, int]:
    """``users`` for a PL event; v12 forbids listing the creator (Alice)."""
    if version.privileged_creators:
        return {user: level for user, level in users.items() if user != ALICE}
    return dict(users)


class Graph:
    """Synapse-style scenario: nodes plus prev edges ``[[A, B, C]]`` (A→B→C).

    Nodes are added in lexicographic topological order (smallest name first
    among the ready ones), which fixes their timestamps; the state before a
    node is the resolution of its prevs' states after.
    """

    def __init__(self, version: str, nodes: Sequence[Node], edges: Sequence[Sequence[str]]):
        self.dag = Dag(version)
        all_nodes = {n.name: n for n in [*initial_nodes(self.dag.version), *nodes]}
        prevs: dict[str, set[str]] = {name: set() for name in all_nodes}
        for chain in [INITIAL_EDGES, *edges]:
            for later, earlier in itertools.pairwise(chain):
                prevs[later].add(earlier)
        self.state_after: dict[str, dict[StateKey, str]] = {}
        for name in _lexicographic_topological_order(prevs):
            node = all_nodes[name]
            before = self.dag.resolve(*(self.state_after[p] for p in sorted(prevs[name])))
            event = self.dag.add_on(before, node, prev=[self.dag.id(p) for p in prevs[name]])
            after = dict(before)
            if event.is_state:
                after[event.state_tuple] = event.event_id
            self.state_after[name] = after

    def state_with(self, *names: str) -> dict[StateKey, str]:
        """The state at START with the named events applied on top."""
        state = dict(self.state_after["START"])
        for name in names:
            event = self.dag.events[self.dag.id(name)]
            state[event.state_tuple] = event.event_id
        return state

    def changes_at_end(self, expected: Iterable[str]) -> tuple[dict, dict]:
        """(expected keys → IDs, END state entries that are expected or changed)."""
        want = {}
        for name in expected:
            event = self.dag.events[self.dag.id(name)]
            want[event.state_tuple] = event.event_id
        start, end = self.state_after["START"], self.state_after["END"]
        got = {k: v for k, v in end.items() if k in want or start.get(k) != v}
        return want, got


def _lexicographic_topological_order(prevs: Mapping[str, set[str]]) -> list[str]:
    children: dict[str, list[str]] = {name: [] for name in prevs}
    waiting = {name: len(p) for name, p in prevs.items()}
    for name, parents in prevs.items():
        for parent in parents:
            children[parent].append(name)
    ready = [name for name, count in waiting.items() if not count]
    heapq.heapify(ready)
    order = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for child in children[name]:
            waiting[child] -= 1
            if not waiting[child]:
                heapq.heappush(ready, child)
    return order


def check_scenario(
    version: str, nodes: Sequence[Node], edges: Sequence[Sequence[str]], expected: Iterable[str]
) -> None:
    want, got = Graph(version, nodes, edges).changes_at_end(expected)
    assert got == want


# Synapse's scenarios -------------------------------------------------------


def ban_vs_pl(version: RoomVersion) -> tuple[list[Node], list[list[str]], list[str]]:
    nodes = [
        Node("PA", ALICE, PL, "", {"users": pl_users({ALICE: 100, BOB: 50}, version)}),
        member("MA", ALICE, ALICE, JOIN),
        member("MB", ALICE, BOB, BAN),
        Node("PB", BOB, PL, "", {"users": pl_users({ALICE: 100, BOB: 50}, version)}),
    ]
    edges = [["END", "MB", "MA", "PA", "START"], ["END", "PB", "PA"]]
    return nodes, edges, ["PA", "MA", "MB"]


def join_rule_evasion(version: RoomVersion) -> tuple[list[Node], list[list[str]], list[str]]:
    # Synapse's JR content uses the (wrong) key "join_rules": no join_rule means
    # "invite", so Evelyn's concurrent join must lose.
    nodes = [
        Node("JR", ALICE, JR, "", {"join_rules": "private"}),
        member("ME", EVELYN, EVELYN, JOIN),
    ]
    return nodes, [["END", "JR", "START"], ["END", "ME", "START"]], ["JR"]


def offtopic_pl(version: RoomVersion) -> tuple[list[Node], list[list[str]], list[str]]:
    nodes = [
        Node("PA", ALICE, PL, "", {"users": pl_users({ALICE: 100, BOB: 50}, version)}),
        Node("PB", BOB, PL, "", {"users": pl_users({ALICE: 100, BOB: 50, CHARLIE: 50}, version)}),
        Node(
            "PC", CHARLIE, PL, "", {"users": pl_users({ALICE: 100, BOB: 50, CHARLIE: 0}, version)}
        ),
    ]
    return nodes, [["END", "PC", "PB", "PA", "START"], ["END", "PA"]], ["PC"]


def topic_basic(version: RoomVersion) -> tuple[list[Node], list[list[str]], list[str]]:
    nodes = [
        Node("T1", ALICE, TOPIC, ""),
        Node("PA1", ALICE, PL, "", {"users": pl_users({ALICE: 100, BOB: 50}, version)}),
        Node("T2", ALICE, TOPIC, ""),
        Node("PA2", ALICE, PL, "", {"users": pl_users({ALICE: 100, BOB: 0}, version)}),
        Node("PB", BOB, PL, "", {"users": pl_users({ALICE: 100, BOB: 50}, version)}),
        Node("T3", BOB, TOPIC, ""),
    ]
    edges = [["END", "PA2", "T2", "PA1", "T1", "START"], ["END", "T3", "PB", "PA1"]]
    return nodes, edges, ["PA2", "T2"]


def topic_reset(version: RoomVersion) -> tuple[list[Node], list[list[str]], list[str]]:
    nodes = [
        Node("T1", ALICE, TOPIC, ""),
        Node("PA", ALICE, PL, "", {"users": pl_users({ALICE: 100, BOB: 50}, version)}),
        Node("T2", BOB, TOPIC, ""),
        member("MB", ALICE, BOB, BAN),
    ]
    edges = [["END", "MB", "T2", "PA", "T1", "START"], ["END", "T1"]]
    return nodes, edges, ["T1", "MB", "PA"]


def topic_of_pl_users(version: RoomVersion) -> tuple[list[Node], list[list[str]], list[str]]:
    nodes = [
        Node("T1", ALICE, TOPIC, ""),
        Node("PA1", ALICE, PL, "", {"users": pl_users({ALICE: 100, BOB: 50}, version)}),
        Node("T2", ALICE, TOPIC, ""),
        Node("PA2", ALICE, PL, "", {"users": pl_users({ALICE: 100, BOB: 0}, version)}),
        Node("PB", BOB, PL, "", {"users": pl_users({ALICE: 100, BOB: 50}, version)}),
        Node("T3", BOB, TOPIC, ""),
        Node("MZ1", ZARA, "m.room.message", None),
        Node("T4", ALICE, TOPIC, ""),
    ]
    edges = [
        ["END", "T4", "MZ1", "PA2", "T2", "PA1", "T1", "START"],
        ["END", "MZ1", "T3", "PB", "PA1"],
    ]
    return nodes, edges, ["T4", "PA2"]


def mainline_sort(version: RoomVersion) -> tuple[list[Node], list[list[str]], list[str]]:
    # T3 wins: T4 was sent later but is based on an older PL (PB → PA1).
    nodes = [
        Node("T1", ALICE, TOPIC, ""),
        Node("PA1", ALICE, PL, "", {"users": pl_users({ALICE: 100, BOB: 50}, version)}),
        Node("T2", ALICE, TOPIC, ""),
        Node(
            "PA2",
            ALICE,
            PL,
            "",
            {"users": pl_users({ALICE: 100, BOB: 50}, version), "events": {PL: 100}},
        ),
        Node("PB", BOB, PL, "", {"users": pl_users({ALICE: 100, BOB: 50}, version)}),
        Node("T3", BOB, TOPIC, ""),
        Node("T4", ALICE, TOPIC, ""),
    ]
    edges = [
        ["END", "T3", "PA2", "T2", "PA1", "T1", "START"],
        ["END", "T4", "PB", "PA1"],
    ]
    return nodes, edges, ["T3", "PA2"]


SCENARIOS = [
    ban_vs_pl,
    join_rule_evasion,
    offtopic_pl,
    topic_basic,
    topic_reset,
    topic_of_pl_users,
    mainline_sort,
]


CACHE_NODES = [
    Node("PA", ALICE, PL, "", {"users": {ALICE: 100, BOB: 50}}),
    Node("T1", BOB, TOPIC, ""),
    Node("T2", BOB, TOPIC, ""),
    member("ZJ1", ZARA, ZARA, JOIN),
    member("ZJ2", ZARA, ZARA, JOIN),
    member("INV1", ZARA, EVELYN, {"membership": "invite"}),
    member("INV2", ZARA, EVELYN, {"membership": "invite"}),
]
CACHE_EDGES = [["PA", "START"], ["T1", "START"], ["T2", "START"]]
CACHE_EDGES += [["INV1", "ZJ1", "START"], ["INV2", "ZJ2", "START"]]


# A worked walk-through of v2 resolution, step by step ------------------------


def walkthrough(version: str) -> tuple[RoomBuilder, dict[str, Event], list[dict[StateKey, str]]]:
    """Alice bans X on one branch while X changes the topic on the other."""
    alice, x = "@alice:test", "@x:test"
    room = RoomBuilder(version)
    room.create(alice)
    room.join(alice)
    room.power_levels(alice, events={TOPIC: 0})
    room.join_rules("public")
    join_x = room.join(x)
    t0 = room.event(TOPIC, alice, "", {"topic": "T0"})
    base = room.state_ids()
    ban = room.ban(alice, x, apply=False)
    topic = room.event(TOPIC, x, "", {"topic": "C"}, apply=False)
    events = {"J_X": join_x, "T0": t0, "B": ban, "C": topic}
    states = [{**base, ban.state_tuple: ban.event_id}, {**base, TOPIC_KEY: topic.event_id}]
    return room, events, states
