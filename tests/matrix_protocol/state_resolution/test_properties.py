"""Properties of state resolution (https://spec.matrix.org/v1.19/rooms/v2/#state-resolution
and the same section of rooms v1 and v12): the result does
not depend on the order of the state sets nor on the iteration order of the
``events`` mapping."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from matrix_protocol.events import StateKey
from tests.support.state_dag import (
    ALICE,
    BAN,
    BOB,
    EVELYN,
    JOIN,
    JR,
    PL,
    TOPIC,
    ZARA,
    Graph,
    Node,
    member,
    pl_users,
)

# (sender, type, state_key, content) templates; PL contents are adjusted per version.
ACTIONS: list[tuple[str, str, str, Any]] = [
    (ALICE, TOPIC, "", {"topic": "a"}),
    (BOB, TOPIC, "", {"topic": "b"}),
    (ZARA, TOPIC, "", {"topic": "z"}),
    (ALICE, PL, "", {ALICE: 100, BOB: 50}),
    (ALICE, PL, "", {ALICE: 100, ZARA: 50}),
    (BOB, PL, "", {ALICE: 100, BOB: 50, ZARA: 50}),
    (ALICE, "m.room.member", ZARA, BAN),
    (ALICE, "m.room.member", BOB, BAN),
    (ZARA, "m.room.member", ZARA, {"membership": "leave"}),
    (EVELYN, "m.room.member", EVELYN, JOIN),
    (ALICE, JR, "", {"join_rule": "invite"}),
]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Graph, list[dict[StateKey, str]]]:
    version = draw(st.sampled_from(["1", "2", "11", "12"]))
    graph = Graph(version, [], [])
    dag = graph.dag
    start = graph.state_after["START"]
    states = []
    for branch in range(draw(st.integers(2, 3))):
        state, prev = dict(start), dag.id("START")
        for step in range(draw(st.integers(1, 4))):
            sender, event_type, state_key, content = draw(st.sampled_from(ACTIONS))
            if event_type == PL:
                content = {"users": pl_users(content, dag.version)}
            node = Node(f"b{branch}e{step}", sender, event_type, state_key, content)
            ts = draw(st.integers(0, 3))  # few values: ties reach the event ID
            event = dag.add_on(state, node, prev=[prev], ts=ts)
            state[event.state_tuple] = event.event_id
            prev = event.event_id
        states.append(state)
    return graph, states


@settings(max_examples=150, deadline=None)
@given(scenario=scenarios(), data=st.data())
def test_result_ignores_state_set_and_event_map_order(scenario: Any, data: st.DataObject) -> None:
    graph, states = scenario
    dag = graph.dag
    expected = dag.resolve(*states)
    shuffled_states = data.draw(st.permutations(states))
    shuffled_ids = data.draw(st.permutations(list(dag.events)))
    shuffled_events = {event_id: dag.events[event_id] for event_id in shuffled_ids}
    assert dag.resolve(*shuffled_states, events=shuffled_events) == expected


@settings(max_examples=50, deadline=None)
@given(scenario=scenarios())
def test_unconflicted_entries_are_kept(scenario: Any) -> None:
    graph, states = scenario
    result = graph.dag.resolve(*states)
    for key, event_id in states[0].items():
        if all(other.get(key) == event_id for other in states[1:]):
            assert result[key] == event_id


def test_resolving_one_state_with_itself_is_the_identity() -> None:
    graph = Graph("12", [member("ZB", ALICE, ZARA, BAN)], [["ZB", "START"]])
    state = graph.state_after["ZB"]
    assert graph.dag.resolve(state, dict(state), dict(state)) == state
