"""State resolution v1 (room version 1): https://spec.matrix.org/v1.19/rooms/v1/#state-resolution"""

from __future__ import annotations

import hashlib

import pytest

from matrix_protocol.events import Event, StateKey
from matrix_protocol.room_versions import room_version
from matrix_protocol.state_resolution import MissingEventError
from tests.support.state_dag import (
    ALICE,
    BAN,
    BOB,
    CHARLIE,
    EVELYN,
    MEMBER,
    PL,
    TOPIC,
    TOPIC_KEY,
    ZARA,
    Graph,
    Node,
    ban_vs_pl,
    join_rule_evasion,
    member,
)

PL_KEY = (PL, "")


def sha1(event_id: str) -> str:
    return hashlib.sha1(event_id.encode()).hexdigest()


class Room:
    """Synapse's starting room in version 1, with helpers to branch off START."""

    def __init__(self) -> None:
        self.graph = Graph("1", [], [])
        self.dag = self.graph.dag
        self.start = self.graph.state_after["START"]
        self.start_id = self.dag.id("START")

    def on(self, state: dict[StateKey, str], node: Node, prev: Event | None = None) -> Event:
        """Add ``node`` after ``prev`` (default START), authed from ``state``."""
        prev_id = prev.event_id if prev is not None else self.start_id
        return self.dag.add_on(state, node, prev=[prev_id])

    def branch(self, *events: Event) -> dict[StateKey, str]:
        state = dict(self.start)
        for event in events:
            state[event.state_tuple] = event.event_id
        return state


def pl(name: str, sender: str, users: dict[str, int]) -> Node:
    return Node(name, sender, PL, "", {"users": users})


def test_power_levels_at_equal_depth_all_pass_lowest_sha1_wins() -> None:
    room = Room()
    a = room.on(room.start, pl("PA", ALICE, {ALICE: 100, BOB: 50}))
    b = room.on(room.start, pl("PB", ALICE, {ALICE: 100, CHARLIE: 50}))
    result = room.dag.resolve(room.branch(a), room.branch(b))
    # Ascending depth, descending sha1: the last one checked (and passing)
    # has the lowest sha1.
    assert result[PL_KEY] == min([a.event_id, b.event_id], key=sha1)


def test_power_levels_stop_at_the_first_failure() -> None:
    room = Room()
    a = room.on(room.start, pl("PA", ALICE, {ALICE: 100, BOB: 50}))
    # Bob (50) tries to give Charlie 75: fails against PA, so PA stays.
    b = room.on(room.branch(a), pl("PB", BOB, {ALICE: 100, BOB: 50, CHARLIE: 75}), prev=a)
    assert room.dag.resolve(room.branch(a), room.branch(a, b))[PL_KEY] == a.event_id
    # A valid follow-up by Bob (Charlie 50) passes and wins.
    c = room.on(room.branch(a), pl("PC", BOB, {ALICE: 100, BOB: 50, CHARLIE: 50}), prev=a)
    assert room.dag.resolve(room.branch(a), room.branch(a, c))[PL_KEY] == c.event_id


def test_ban_is_not_undone_by_a_later_self_leave() -> None:
    room = Room()
    ban = room.on(room.start, member("MB", ALICE, ZARA, BAN))
    message = room.on(room.start, Node("M", ZARA, "m.room.message", None))
    leave = room.on(room.start, member("ML", ZARA, ZARA, {"membership": "leave"}), prev=message)
    assert leave.depth > ban.depth
    result = room.dag.resolve(room.branch(ban), room.branch(leave))
    assert result[(MEMBER, ZARA)] == ban.event_id


def test_ban_beats_the_earlier_join() -> None:
    room = Room()
    ban = room.on(room.start, member("MB", ALICE, ZARA, BAN))
    result = room.dag.resolve(room.branch(ban), room.branch())
    assert result[(MEMBER, ZARA)] == ban.event_id


def test_other_keys_prefer_the_deepest_event_that_passes() -> None:
    room = Room()
    t1 = room.on(room.start, Node("T1", ALICE, TOPIC, ""))
    t2 = room.on(room.branch(t1), Node("T2", ALICE, TOPIC, ""), prev=t1)
    bob_topic = room.on(room.branch(t1, t2), Node("T3", BOB, TOPIC, ""), prev=t2)
    assert room.dag.resolve(room.branch(t1), room.branch(t2))[TOPIC_KEY] == t2.event_id
    # Bob (0) may not set the topic (state_default 50): T2 is the deepest that passes.
    candidates = [room.branch(t1), room.branch(t2), room.branch(bob_topic)]
    assert room.dag.resolve(*candidates)[TOPIC_KEY] == t2.event_id


def test_other_keys_fall_back_to_the_shallowest_when_none_passes() -> None:
    room = Room()
    b1 = room.on(room.start, Node("B1", BOB, TOPIC, ""))
    b2 = room.on(room.branch(b1), Node("B2", BOB, TOPIC, ""), prev=b1)
    assert room.dag.resolve(room.branch(b1), room.branch(b2))[TOPIC_KEY] == b1.event_id


def test_a_key_missing_from_a_state_is_not_a_conflict() -> None:
    room = Room()
    topic = room.on(room.start, Node("T", BOB, TOPIC, ""))  # would fail auth
    result = room.dag.resolve(room.branch(topic), room.branch(), events={})
    assert result[TOPIC_KEY] == topic.event_id


def test_conflicted_events_must_be_supplied() -> None:
    room = Room()
    a = room.on(room.start, pl("PA", ALICE, {ALICE: 100, BOB: 50}))
    b = room.on(room.start, pl("PB", ALICE, {ALICE: 100, CHARLIE: 50}))
    events = dict(room.dag.events)
    del events[b.event_id]
    with pytest.raises(MissingEventError) as info:
        room.dag.resolve(room.branch(a), room.branch(b), events=events)
    assert info.value.event_id == b.event_id


def test_join_rule_evasion_succeeds_in_v1() -> None:
    """The known v1 weakness: Evelyn's member key is missing from the other
    state, so it is not a conflict and her join survives the private rule."""
    nodes, edges, _ = join_rule_evasion(room_version("1"))
    graph = Graph("1", nodes, edges)
    end = graph.state_after["END"]
    assert end[(MEMBER, EVELYN)] == graph.dag.id("ME")
    assert end[("m.room.join_rules", "")] == graph.dag.id("JR")


def test_ban_vs_power_levels_state_reset_in_v1() -> None:
    """Members are resolved against R without each other's outcome: Alice's
    own membership is conflicted (IMA vs her re-join MA), so her ban of Bob
    is checked as if she were not joined and fails; Bob stays joined. Bob's
    PB fails the same way (his membership is conflicted too), so PA stays."""
    nodes, edges, _ = ban_vs_pl(room_version("1"))
    graph = Graph("1", nodes, edges)
    end = graph.state_after["END"]
    assert end[(MEMBER, BOB)] == graph.dag.id("IMB")
    assert end[(MEMBER, ALICE)] == graph.dag.id("MA")
    assert end[PL_KEY] == graph.dag.id("PA")
