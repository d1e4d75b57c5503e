"""State at events: forks resolved with state resolution, deltas, state/auth-chain reads."""

from __future__ import annotations

import math

from mxfed_api.events.v1 import events_pb2
from tests.support.events_service import (
    EventsService,
    RemoteServer,
    _public_room_with_remote_member,
)


async def test_fork_is_resolved(events: EventsService, remote: RemoteServer) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote, "10")
    admin = f"@admin:{events.server_name}"
    await events.send(
        room_id,
        admin,
        "m.room.power_levels",
        {"users": {admin: 100, alice: 50}, "state_default": 50},
        state_key="",
    )
    base = await events.head(room_id)
    fork = await events.head(room_id)
    # Two branches from the same point, each setting the topic.
    topic_a, a_id = remote.pdu(base, "m.room.topic", alice, {"topic": "A"}, "")
    topic_b, b_id = remote.pdu(fork, "m.room.topic", alice, {"topic": "B"}, "")
    assert await events.transaction(remote.name, [topic_a, topic_b]) == {
        "pdus": {a_id: {}, b_id: {}}
    }
    head = await events.head(room_id)
    assert sorted(head.extremities) == sorted([a_id, b_id])
    # v2: same mainline position, so the later origin_server_ts (B) wins.
    assert head.state[("m.room.topic", "")] == b_id

    # A merge event citing both: its state before is the resolved state.
    merged = await events.head(room_id)
    merged.extremities = [a_id, b_id]
    merge, merge_id = remote.pdu(merged, "m.room.message", alice, {"body": "merge"})
    assert await events.transaction(remote.name, [merge]) == {"pdus": {merge_id: {}}}
    state = await events.stub.QueryStateAtEvent(
        events_pb2.QueryStateAtEventRequest(room_id=room_id, event_id=merge_id, ids_only=True)
    )
    assert state.found and b_id in state.state_event_ids and a_id not in state.state_event_ids
    assert (await events.head(room_id)).extremities == [merge_id]


async def test_state_groups_store_deltas(events: EventsService, remote: RemoteServer) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote, "10")
    head = await events.head(room_id)
    pdus = []
    for i in range(40):
        pdus.append(remote.pdu(head, "m.room.message", alice, {"body": str(i)})[0])
        if i % 4 == 0:
            name = f"@u{i}:{remote.name}"
            pdus.append(remote.pdu(head, "m.room.member", name, {"membership": "join"}, name)[0])
    for start in range(0, len(pdus), 50):
        response = await events.transaction(remote.name, pdus[start : start + 50])
        assert all(answer == {} for answer in response["pdus"].values())
    state_events = await events.pool.fetchval(
        "SELECT count(*) FROM events.events WHERE room_id = $1 AND state_key IS NOT NULL", room_id
    )
    entries = await events.pool.fetchval(
        "SELECT count(*) FROM events.state_group_entries s"
        " JOIN events.state_groups g ON g.id = s.group_id WHERE g.room_id = $1",
        room_id,
    )
    current = len((await events.head(room_id)).state)
    assert state_events == current == 17
    # A full copy per state event would be ~ 17 * 17 / 2 = 144 rows; layered deltas
    # rewrite each row at most about log2(17) times as their layers merge.
    assert entries <= state_events * (1 + math.ceil(math.log2(state_events)))


async def test_state_and_auth_chain_reads(events: EventsService, remote: RemoteServer) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote, "12")
    head = await events.head(room_id)
    message, event_id = remote.pdu(head, "m.room.message", alice, {"body": "hi"})
    await events.transaction(remote.name, [message])
    reply = await events.stub.QueryStateAtEvent(
        events_pb2.QueryStateAtEventRequest(
            room_id=room_id, event_id=event_id, include_auth_chain=True
        )
    )
    assert reply.found
    assert sorted(reply.state_event_ids) == sorted(head.state.values())
    assert {r.event_id for r in reply.state_events} == set(reply.state_event_ids)
    create_id = head.state[("m.room.create", "")]
    assert create_id in reply.auth_chain_ids
    chain = await events.stub.QueryAuthChain(
        events_pb2.QueryAuthChainRequest(room_id=room_id, event_ids=[event_id])
    )
    assert create_id in chain.event_ids
    assert set(message["auth_events"]) <= set(chain.event_ids)
    assert {r.event_id for r in chain.events} == set(chain.event_ids)
    unknown = await events.stub.QueryStateAtEvent(
        events_pb2.QueryStateAtEventRequest(room_id=room_id, event_id="$nope")
    )
    assert not unknown.found


async def test_visibility_and_server_access(events: EventsService, remote: RemoteServer) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote, "10")
    admin = f"@admin:{events.server_name}"
    early = await events.send(room_id, admin, "m.room.message", {"body": "shared"})
    await events.send(
        room_id, admin, "m.room.history_visibility", {"history_visibility": "joined"}, state_key=""
    )
    await events.send(room_id, admin, "m.room.member", {"membership": "leave"}, state_key=alice)
    hidden = await events.send(room_id, admin, "m.room.message", {"body": "members only"})
    # remote has no joined member now: the room is not readable at all
    assert await events.event(hidden.event_id, as_server=remote.name) is None
    allowed = await events.stub.QueryServerAllowed(
        events_pb2.QueryServerAllowedRequest(
            room_id=room_id, server_name=remote.name, require_joined=True
        )
    )
    assert allowed.room_exists and not allowed.allowed

    other = remote.user("bob")
    head = await events.head(room_id)
    await events.send(room_id, admin, "m.room.join_rules", {"join_rule": "public"}, state_key="")
    head = await events.head(room_id)
    join, _ = remote.pdu(head, "m.room.member", other, {"membership": "join"}, other)
    await events.transaction(remote.name, [join])
    record = await events.event(hidden.event_id, as_server=remote.name)
    assert record is not None and record.redacted
    record = await events.event(early.event_id, as_server=remote.name)
    assert record is not None and not record.redacted

    await events.send(
        room_id, admin, "m.room.server_acl", {"allow": ["*"], "deny": ["127.0.0.1"]}, state_key=""
    )
    acl = await events.stub.QueryServerAllowed(
        events_pb2.QueryServerAllowedRequest(
            room_id=room_id, server_name=remote.name, check_acl=True, require_joined=True
        )
    )
    assert not acl.allowed and "ACL" in acl.reason
