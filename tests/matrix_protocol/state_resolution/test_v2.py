"""State resolution v2 (room versions 2–11): https://spec.matrix.org/v1.19/rooms/v2/#state-resolution
and the worked walk-through of :func:`tests.support.state_dag.walkthrough`.

The scenarios re-express, in this project's own code, the cases of Synapse's
``tests/state/test_v2.py`` (ban vs power levels, join rule evasion, off-topic
power levels, topic basic / reset / of PL users, mainline sort, the
lexicographic sort, the conflict-cache base-state case) and the tie-break
fixture of Ruma's state-res tests. The DAG helper and the
scenarios live in ``tests/support/state_dag.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from matrix_protocol.events import StateKey
from matrix_protocol.room_versions import room_version
from matrix_protocol.state_resolution import (
    MissingEventError,
    auth_chain,
    iterative_auth_checks,
    resolve_state,
    v2,
)
from tests.support.state_dag import (
    ALICE,
    BOB,
    CACHE_EDGES,
    CACHE_NODES,
    CHARLIE,
    EVELYN,
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
    initial_nodes,
    walkthrough,
)

V2_VERSIONS = ["2", "3", "6", "10", "11"]


@pytest.mark.parametrize("version", V2_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_synapse_scenarios(scenario: Any, version: str) -> None:
    nodes, edges, expected = scenario(room_version(version))
    check_scenario(version, nodes, edges, expected)


def test_unconflicted_power_levels_authorise_conflicted_topics() -> None:
    """Bob's topics (authed by IPOWER, where he has 0) pass iff the
    unconflicted state holds PA (Bob 50): v2 starts from the unconflicted map."""
    graph = Graph("11", CACHE_NODES, CACHE_EDGES)
    powerless = graph.dag.resolve(graph.state_with("T1"), graph.state_with("T2"))
    powered = graph.dag.resolve(graph.state_with("PA", "T1"), graph.state_with("PA", "T2"))
    assert TOPIC_KEY not in powerless
    # Same mainline position and PL: the later timestamp (T2) is applied last.
    assert powered[TOPIC_KEY] == graph.dag.id("T2")


def test_unconflicted_state_is_reapplied_even_if_resolution_disagrees() -> None:
    """Zara's joins reach the full conflicted set only through the auth
    difference of the two invites; the unconflicted IMZ still wins (step 5)."""
    graph = Graph("11", CACHE_NODES, CACHE_EDGES)
    zara = (MEMBER, ZARA)
    agreed = graph.dag.resolve(graph.state_with("INV1"), graph.state_with("INV2"))
    assert agreed[zara] == graph.dag.id("IMZ")
    assert agreed[(MEMBER, EVELYN)] == graph.dag.id("INV2")
    conflicting = graph.dag.resolve(
        graph.state_with("ZJ1", "INV1"), graph.state_with("ZJ2", "INV2")
    )
    assert conflicting[zara] == graph.dag.id("ZJ2")


# The worked walk-through (tests/support/state_dag.py) ----------------------


@pytest.mark.parametrize("version", ["11", "2"])
def test_walkthrough_section_6(version: str) -> None:
    room, ev, states = walkthrough(version)
    result = resolve_state(room.room_version, states, room.events)
    assert result[(MEMBER, "@x:test")] == ev["B"].event_id
    assert result[TOPIC_KEY] == ev["T0"].event_id
    unchanged = {k: v for k, v in states[0].items() if k not in {(MEMBER, "@x:test"), TOPIC_KEY}}
    assert {k: result[k] for k in unchanged} == unchanged


def test_walkthrough_step_by_step() -> None:
    room, ev, states = walkthrough("11")
    unconflicted, conflicted = v2.partition(states)
    assert set(conflicted) == {(MEMBER, "@x:test"), TOPIC_KEY}
    graph = v2.EventGraph(room.events, room.room_version)
    full = {ev[n].event_id for n in ("J_X", "B", "T0", "C")}
    power = [e for e in full if v2.is_power_event(graph.get(e))]
    assert power == [ev["B"].event_id]
    assert v2._reverse_topological_power_sort(graph, power, full) == [
        ev["J_X"].event_id,
        ev["B"].event_id,
    ]
    others = [ev["C"].event_id, ev["T0"].event_id]
    assert v2._mainline_sort(graph, others, unconflicted[(PL, "")]) == [
        ev["T0"].event_id,
        ev["C"].event_id,
    ]


# Orderings -----------------------------------------------------------------


def test_reverse_topological_power_order_ties_break_on_event_id() -> None:
    """Synapse's lexicographic sort case: o ← {l, m, n, p}, n ← m."""
    dag = Dag("11")
    create = dag.add(initial_nodes(dag.version)[0], auth=[], prev=[])
    ids = {}
    for name, parents in [("o", []), ("n", ["o"]), ("l", ["o"]), ("m", ["n", "o"]), ("p", ["o"])]:
        auth = [create.event_id, *(ids[p] for p in parents)]
        node = Node(name, ALICE, PL, "", {})
        ids[name] = dag.add(node, auth=auth, prev=[], ts=5).event_id
    graph = v2.EventGraph(dag.events, dag.version)
    order = v2._reverse_topological_power_sort(graph, ids.values(), set(ids.values()))
    assert order == [ids[n] for n in ["o", "l", "n", "m", "p"]]


def test_reverse_topological_power_order_prefers_power_then_age() -> None:
    dag = Dag("11")
    create = dag.add(initial_nodes(dag.version)[0], auth=[], prev=[])
    pl = dag.add(
        Node("pl", ALICE, PL, "", {"users": {ALICE: 100, BOB: 50}}), auth=[create.event_id], prev=[]
    )
    auth = [create.event_id, pl.event_id]
    low_old = dag.add(Node("a", CHARLIE, JR, "", {}), auth=auth, prev=[], ts=1)
    mid = dag.add(Node("b", BOB, JR, "", {}), auth=auth, prev=[], ts=9)
    high = dag.add(Node("c", ALICE, JR, "", {}), auth=auth, prev=[], ts=10)
    low_new = dag.add(Node("d", ZARA, JR, "", {}), auth=auth, prev=[], ts=2)
    ids = [low_new.event_id, mid.event_id, high.event_id, low_old.event_id]
    graph = v2.EventGraph(dag.events, dag.version)
    order = v2._reverse_topological_power_sort(graph, ids, set(ids))
    assert order == [high.event_id, mid.event_id, low_old.event_id, low_new.event_id]


def test_origin_server_ts_breaks_ties_before_event_id() -> None:
    """Ruma's origin-server-ts-tiebreak: equal power, the older event first
    even though its ID sorts later; so the newer join rule wins."""
    dag = Dag("11")
    nodes = initial_nodes(dag.version)
    state: dict[StateKey, str] = {}
    prev: list[str] = []
    for node in nodes[:4]:
        event = dag.add_on(state, node, prev=prev)
        state[event.state_tuple] = event.event_id
        prev = [event.event_id]
    older = dag.add_on(
        state, Node("zzz", ALICE, JR, "", {"join_rule": "invite"}), prev=prev, ts=100
    )
    newer = dag.add_on(state, Node("aaa", ALICE, JR, "", {"join_rule": "knock"}), prev=prev, ts=200)
    result = dag.resolve({**state, (JR, ""): older.event_id}, {**state, (JR, ""): newer.event_id})
    assert result[(JR, "")] == newer.event_id


def test_mainline_position_of_event_without_power_levels_sorts_first() -> None:
    dag = Dag("11")
    create = dag.add(initial_nodes(dag.version)[0], auth=[], prev=[])
    p1 = dag.add(Node("p1", ALICE, PL, "", {}), auth=[create.event_id], prev=[])
    p2 = dag.add(Node("p2", ALICE, PL, "", {}), auth=[create.event_id, p1.event_id], prev=[])
    on_p2 = dag.add(Node("x", ALICE, TOPIC, ""), auth=[create.event_id, p2.event_id], prev=[], ts=1)
    on_p1 = dag.add(Node("y", ALICE, TOPIC, ""), auth=[create.event_id, p1.event_id], prev=[], ts=2)
    none = dag.add(Node("z", ALICE, TOPIC, ""), auth=[create.event_id], prev=[], ts=3)
    graph = v2.EventGraph(dag.events, dag.version)
    ids = [on_p2.event_id, on_p1.event_id, none.event_id]
    assert v2._mainline_sort(graph, ids, p2.event_id) == [
        none.event_id,
        on_p1.event_id,
        on_p2.event_id,
    ]


# API details ---------------------------------------------------------------


def test_no_conflict_needs_no_events() -> None:
    state = {("m.room.create", ""): "$c", (TOPIC, ""): "$t"}
    assert resolve_state(room_version("11"), [state, dict(state)], {}) == state
    assert resolve_state(room_version("11"), [state], {}) == state
    assert resolve_state(room_version("11"), [], {}) == {}


def test_missing_event_is_reported_by_id() -> None:
    graph = Graph(
        "11",
        [Node("T1", ALICE, TOPIC, ""), Node("T2", ALICE, TOPIC, "")],
        [
            ["T1", "START"],
            ["T2", "START"],
        ],
    )
    events = dict(graph.dag.events)
    missing = graph.dag.id("IPOWER")
    del events[missing]
    states = [graph.state_with("T1"), graph.state_with("T2")]
    with pytest.raises(MissingEventError) as info:
        resolve_state(graph.dag.version, states, events)
    assert info.value.event_id == missing
    assert isinstance(info.value, KeyError)
    assert missing in str(info.value)


def test_auth_chain_excludes_the_starting_events() -> None:
    graph = Graph("11", [], [])
    imb = graph.dag.id("IMB")
    expected = {graph.dag.id(n) for n in ("CREATE", "IMA", "IPOWER", "IJR")}
    assert auth_chain([imb], graph.dag.events, graph.dag.version) == expected


def test_rejected_events_are_not_used_as_auth_events() -> None:
    """Bob's topic is authorised by PA (Bob 50); once PA is marked rejected
    the checks fall back to the topics' own auth event IPOWER, where Bob has 0."""
    graph = Graph("11", CACHE_NODES, CACHE_EDGES)
    dag = graph.dag
    states = [graph.state_with("PA", "T1"), graph.state_with("PA", "T2")]
    assert TOPIC_KEY in dag.resolve(*states)
    assert TOPIC_KEY not in dag.resolve(*states, rejected={dag.id("PA")})


def test_iterative_auth_checks_skips_failures_and_keeps_base_state() -> None:
    graph = Graph("11", CACHE_NODES, CACHE_EDGES)
    dag = graph.dag
    base = graph.state_after["START"]
    order = [dag.id("T1"), dag.id("PA"), dag.id("T2")]
    result = iterative_auth_checks(dag.version, order, base, dag.events)
    assert result[TOPIC_KEY] == dag.id("T2")
    assert result[(PL, "")] == dag.id("PA")
    assert TOPIC_KEY not in base
