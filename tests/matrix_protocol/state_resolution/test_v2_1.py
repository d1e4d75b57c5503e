"""State resolution v2.1 (room version 12): https://spec.matrix.org/v1.19/rooms/v12/#state-resolution
and the worked walk-through of :func:`tests.support.state_dag.walkthrough`.

MSC4297's "Problem A" (an empty starting map keeps a join rule change that
v2 loses) and "Problem B" (the conflicted state subgraph keeps a power level
chain that v2 resets) are re-expressed from the scenarios of Ruma's
state-res fixtures and run against both algorithms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from matrix_protocol.events import StateKey
from matrix_protocol.room_versions import room_version
from matrix_protocol.state_resolution import auth_chain, resolve_state, v2
from tests.support.state_dag import (
    ALICE,
    BOB,
    CACHE_EDGES,
    CHARLIE,
    JOIN,
    JR,
    MEMBER,
    PL,
    SCENARIOS,
    TOPIC,
    TOPIC_KEY,
    ZARA,
    Dag,
    Graph,
    Node,
    check_scenario,
    member,
    pl_users,
    walkthrough,
)

EVE = "@eve:example.com"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_synapse_scenarios_resolve_the_same_way(scenario: Any) -> None:
    nodes, edges, expected = scenario(room_version("12"))
    check_scenario("12", nodes, edges, expected)


def test_walkthrough_section_6() -> None:
    room, ev, states = walkthrough("12")
    result = resolve_state(room.room_version, states, room.events)
    assert result[(MEMBER, "@x:test")] == ev["B"].event_id
    assert result[TOPIC_KEY] == ev["T0"].event_id


def build(dag: Dag, spec: Sequence[tuple[Node, list[str], int]]) -> None:
    """Add ``(node, auth names, ts)`` entries; pre-v12 auth also lists the create."""
    for node, auth, ts in spec:
        if node.type != "m.room.create" and dag.version.create_event_in_auth_events:
            auth = ["00-create", *auth]
        dag.add(node, auth=[dag.id(n) for n in auth], prev=[], ts=ts, depth=ts + 1)


def contrived_state(dag: Dag, names: Sequence[str]) -> dict[StateKey, str]:
    events = [dag.events[dag.id(name)] for name in names]
    return {event.state_tuple: event.event_id for event in events}


def create_node(version: str) -> Node:
    content: dict[str, Any] = {"room_version": version}
    if not room_version(version).creator_is_sender:
        content["creator"] = ALICE
    return Node("00-create", ALICE, "m.room.create", "", content)


def problem_a(version: str) -> dict[StateKey, str]:
    """Alice changes the join rule to invite, then leaves; Bob's and Charlie's
    servers each know only part of that. Both states hold Alice's leave."""
    dag = Dag(version, create="00-create")
    levels = pl_users({ALICE: 100}, dag.version)
    build(
        dag,
        [
            (create_node(version), [], 0),
            (member("00-join-alice", ALICE, ALICE, JOIN), [], 1),
            (Node("00-pl", ALICE, PL, "", {"users": levels}), ["00-join-alice"], 2),
            (Node("00-jr", ALICE, JR, "", {"join_rule": "public"}), ["00-join-alice", "00-pl"], 3),
            (member("00-join-bob", BOB, BOB, JOIN), ["00-pl", "00-jr"], 4),
            (member("00-join-charlie", CHARLIE, CHARLIE, JOIN), ["00-pl", "00-jr"], 5),
            (Node("01-jr", ALICE, JR, "", {"join_rule": "invite"}), ["00-pl", "00-join-alice"], 6),
            (
                member("01-leave-alice", ALICE, ALICE, {"membership": "leave"}),
                ["00-pl", "00-join-alice"],
                7,
            ),
            (
                member("01-bob++", BOB, BOB, {"membership": "join", "displayname": "bob++"}),
                ["00-pl", "00-join-bob", "01-jr"],
                8,
            ),
            (
                member(
                    "01-charlie++", CHARLIE, CHARLIE, {"membership": "join", "displayname": "c"}
                ),
                ["00-pl", "00-join-charlie", "01-jr"],
                9,
            ),
        ],
    )
    bob = contrived_state(
        dag, ["00-create", "00-pl", "00-join-charlie", "01-jr", "01-leave-alice", "01-bob++"]
    )
    charlie = contrived_state(
        dag, ["00-create", "00-pl", "00-jr", "00-join-bob", "01-leave-alice", "01-charlie++"]
    )
    result = dag.resolve(bob, charlie)
    expected_common = {
        (MEMBER, ALICE): dag.id("01-leave-alice"),
        (MEMBER, BOB): dag.id("01-bob++"),
        (MEMBER, CHARLIE): dag.id("01-charlie++"),
        (PL, ""): dag.id("00-pl"),
        ("m.room.create", ""): dag.id("00-create"),
    }
    assert {k: v for k, v in result.items() if k != (JR, "")} == expected_common
    return {k: v for k, v in result.items() if k == (JR, "")}


def test_problem_a_v2_1_keeps_the_join_rule_change() -> None:
    """From an empty map, 01-jr is checked against its own auth events, where
    Alice is still joined, so it passes."""
    assert problem_a("12") == {(JR, ""): "$01-jr"}


def test_problem_a_v2_loses_every_join_rule() -> None:
    """From the unconflicted map Alice has left, so both join rules fail."""
    assert problem_a("11") == {}


def problem_b(version: str) -> str:
    """Alice gives Bob 50 (01-pl), Bob gives Charlie 50 (02-pl); Eve's server
    saw only the original 00-pl in its state, Zara's the final 02-pl."""
    dag = Dag(version, create="00-create")
    build(
        dag,
        [
            (create_node(version), [], 0),
            (member("00-join-alice", ALICE, ALICE, JOIN), [], 1),
            (
                Node("00-pl", ALICE, PL, "", {"users": pl_users({ALICE: 100}, dag.version)}),
                ["00-join-alice"],
                2,
            ),
            (Node("00-jr", ALICE, JR, "", {"join_rule": "public"}), ["00-join-alice", "00-pl"], 3),
            (member("00-join-bob", BOB, BOB, JOIN), ["00-pl", "00-jr"], 4),
            (member("00-join-charlie", CHARLIE, CHARLIE, JOIN), ["00-pl", "00-jr"], 5),
            (
                Node(
                    "01-pl", ALICE, PL, "", {"users": pl_users({ALICE: 100, BOB: 50}, dag.version)}
                ),
                ["00-pl", "00-join-alice"],
                6,
            ),
            (
                Node(
                    "02-pl",
                    BOB,
                    PL,
                    "",
                    {"users": pl_users({ALICE: 100, BOB: 50, CHARLIE: 50}, dag.version)},
                ),
                ["01-pl", "00-join-bob"],
                7,
            ),
            (member("00-join-zara", ZARA, ZARA, JOIN), ["02-pl", "00-jr"], 8),
            (member("00-join-eve", EVE, EVE, JOIN), ["02-pl", "00-jr"], 9),
            (
                member("01-eve++", EVE, EVE, {"membership": "join", "displayname": "eve++"}),
                ["02-pl", "00-join-eve", "00-jr"],
                9,
            ),
        ],
    )
    common = ["00-create", "00-join-alice", "00-jr", "00-join-bob", "00-join-charlie"]
    eve = contrived_state(dag, [*common, "00-pl", "01-eve++"])
    zara = contrived_state(dag, [*common, "02-pl", "00-join-zara"])
    result = dag.resolve(eve, zara)
    assert result[(MEMBER, EVE)] == dag.id("01-eve++")
    assert result[(MEMBER, ZARA)] == dag.id("00-join-zara")
    assert result[(JR, "")] == dag.id("00-jr")
    return result[(PL, "")]


def test_problem_b_v2_1_follows_the_power_levels_chain() -> None:
    """01-pl sits on the auth path 02-pl → 01-pl → 00-pl between two conflicted
    events, so it joins the full conflicted set and authorises 02-pl."""
    assert problem_b("12") == "$02-pl"


def test_problem_b_v2_resets_to_the_first_power_levels() -> None:
    """Without 01-pl, Bob (0 under 00-pl) cannot send 02-pl."""
    assert problem_b("11") == "$00-pl:example.com"


def test_empty_starting_map_ignores_unconflicted_power_levels() -> None:
    """Bob's topics cite IPOWER (Bob 0). v2 checks them against the
    unconflicted PA (Bob 50) and keeps one; v2.1 starts from nothing and, as
    PA is not conflicted, never applies it before the topics, so both fail."""
    results = {}
    for version in ("11", "12"):
        users = pl_users({ALICE: 100, BOB: 50}, room_version(version))
        nodes = [
            Node("PA", ALICE, PL, "", {"users": users}),
            Node("T1", BOB, TOPIC, ""),
            Node("T2", BOB, TOPIC, ""),
        ]
        graph = Graph(version, nodes, CACHE_EDGES[:3])
        state = graph.dag.resolve(graph.state_with("PA", "T1"), graph.state_with("PA", "T2"))
        results[version] = state.get(TOPIC_KEY)
        assert state[(PL, "")] == graph.dag.id("PA")
    assert results == {"11": "$T2:example.com", "12": None}


def test_conflicted_subgraph_is_the_paths_between_conflicted_events() -> None:
    """c2 → m → c1 → below, and side → c1: only c1, m, c2 are on a path
    between conflicted events; ``below`` and ``side`` are not."""
    dag = Dag("12", create="00-create")
    create = dag.add(create_node("12"), auth=[], prev=[])
    below = dag.add(Node("below", ALICE, TOPIC, ""), auth=[], prev=[])
    c1 = dag.add(Node("c1", ALICE, TOPIC, ""), auth=[below.event_id], prev=[])
    mid = dag.add(Node("m", ALICE, TOPIC, ""), auth=[c1.event_id], prev=[])
    c2 = dag.add(Node("c2", ALICE, TOPIC, ""), auth=[mid.event_id], prev=[])
    side = dag.add(Node("side", ALICE, TOPIC, ""), auth=[c1.event_id], prev=[])
    graph = v2.EventGraph(dag.events, dag.version)
    conflicted = {c1.event_id, c2.event_id}
    ancestors = graph.closure(conflicted)
    assert create.event_id in ancestors
    assert v2._conflicted_subgraph(graph, conflicted, ancestors) == {
        c1.event_id,
        mid.event_id,
        c2.event_id,
    }
    assert side.event_id not in ancestors


def test_auth_chain_includes_the_implied_create_event() -> None:
    dag = Dag("12", create="00-create")
    create = dag.add(create_node("12"), auth=[], prev=[])
    join = dag.add(member("join", ALICE, ALICE, JOIN), auth=[], prev=[create.event_id])
    levels = dag.add(Node("pl", ALICE, PL, "", {}), auth=[join.event_id], prev=[])
    assert auth_chain([levels.event_id], dag.events, dag.version) == {
        join.event_id,
        create.event_id,
    }
    assert auth_chain([create.event_id], dag.events, dag.version) == set()
