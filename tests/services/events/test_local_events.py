"""Rooms created and events sent by local users (PerformCreateRoom, PerformSendEvent, aliases)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import grpc
import pytest
from prometheus_client import REGISTRY

from matrix_protocol.auth_events import select_auth_event_ids
from matrix_protocol.canonical_json import decode_json, encode_json
from matrix_protocol.events import Event
from matrix_protocol.hashes import content_hash_matches
from matrix_protocol.redaction import redact
from matrix_protocol.room_versions import room_version
from matrix_protocol.signing import verify_json_signature
from mxfed.identity_files import current_signing_key
from mxfed_api.events.v1 import events_pb2
from mxfed_api.keys.v1 import keys_pb2
from services.events import storage
from services.events.room_batch import RoomBatch
from tests.support.events_service import (
    EventsService,
    RemoteServer,
    _public_room_with_remote_member,
)
from tests.support.polling import wait_until
from tests.support.service_errors import described


async def _timeline(events: EventsService, room_id: str) -> list[Event]:
    reply = await events.stub.QueryTimeline(
        events_pb2.QueryTimelineRequest(room_id=room_id, limit=100)
    )
    return [
        Event.from_pdu(decode_json(r.pdu_json), room_version(r.room_version)) for r in reply.events
    ]


def _check_chain(
    events: EventsService, chain: list[Event], redacted: frozenset = frozenset()
) -> None:
    """Linear DAG, auth events selected from the state before, valid hashes and signatures."""
    state: dict[tuple[str, str], str] = {}
    verify_key = events.signing_key.signing_key.verify_key
    for index, event in enumerate(chain):
        version = event.room_version
        assert event.depth == index + 1
        assert event.prev_event_ids == ([chain[index - 1].event_id] if index else [])
        expected_auth = select_auth_event_ids(
            event.type, event.sender, event.state_key, event.content, version, state
        )
        assert event.auth_event_ids == expected_auth
        assert content_hash_matches(event.pdu) is (event.event_id not in redacted)
        verify_json_signature(
            redact(event.pdu, version), events.server_name, events.signing_key.key_id, verify_key
        )
        if event.is_state:
            state[event.state_tuple] = event.event_id


@pytest.mark.parametrize("version", ["10", "12"])
async def test_create_room(events: EventsService, version: str) -> None:
    admin = f"@admin:{events.server_name}"
    bob = f"@bob:{events.server_name}"
    reply = await events.stub.PerformCreateRoom(
        events_pb2.PerformCreateRoomRequest(
            creator=admin,
            room_version=version,
            preset="public_chat",
            name="Room",
            topic="Topic",
            alias_localpart=f"room{version}",
            invite=[bob],
            power_level_overrides_json=b'{"events_default": 10}',
        )
    )
    room_id = reply.room_id
    assert reply.room_alias == f"#room{version}:{events.server_name}"
    chain = await _timeline(events, room_id)
    types = [(e.type, e.state_key) for e in chain]
    assert types == [
        ("m.room.create", ""),
        ("m.room.member", admin),
        ("m.room.power_levels", ""),
        ("m.room.canonical_alias", ""),
        ("m.room.join_rules", ""),
        ("m.room.history_visibility", ""),
        ("m.room.guest_access", ""),
        ("m.room.name", ""),
        ("m.room.topic", ""),
        ("m.room.member", bob),
    ]
    create, _, power_levels = chain[0], chain[1], chain[2]
    if version == "12":
        assert room_id == "!" + create.event_id[1:]
        assert "room_id" not in create.pdu and "creator" not in create.content
        assert admin not in power_levels.content["users"]
    else:
        assert room_id.endswith(":" + events.server_name)
        assert create.content["creator"] == admin
        assert power_levels.content["users"][admin] == 100
    assert power_levels.content["events_default"] == 10
    _check_chain(events, chain)
    found = await events.stub.QueryAlias(events_pb2.QueryAliasRequest(alias=reply.room_alias))
    assert found.found and found.room_id == room_id
    info = await events.stub.QueryRoomInfo(events_pb2.QueryRoomInfoRequest(room_id=room_id))
    assert info.we_are_joined and info.create_event_id == create.event_id
    assert info.forward_extremities == [chain[-1].event_id]


@pytest.mark.parametrize("version", ["10", "12"])
async def test_send_messages_state_and_redactions(events: EventsService, version: str) -> None:
    admin = f"@admin:{events.server_name}"
    room_id = await events.create_room(version)
    message = await events.send(room_id, admin, "m.room.message", {"body": "secret"})
    topic = await events.send(room_id, admin, "m.room.topic", {"topic": "t"}, state_key="")
    redaction = await events.send(room_id, admin, "m.room.redaction", {}, redacts=message.event_id)
    assert message.stream_position < topic.stream_position < redaction.stream_position
    chain = await _timeline(events, room_id)
    _check_chain(events, chain, frozenset([message.event_id]))
    redaction_event = chain[-1]
    assert redaction_event.redacts == message.event_id
    if version == "12":
        assert redaction_event.content["redacts"] == message.event_id
    else:
        assert redaction_event.pdu["redacts"] == message.event_id
    record = await events.event(message.event_id)
    assert record is not None and record.redacted
    assert decode_json(record.pdu_json)["content"] == {}
    current = await events.head(room_id)
    assert current.state[("m.room.topic", "")] == topic.event_id


async def test_txn_id_is_idempotent_per_sender(events: EventsService) -> None:
    admin = f"@admin:{events.server_name}"
    room_id = await events.create_room("10")
    first = await events.send(room_id, admin, "m.room.message", {"body": "a"}, txn_id="t1")
    again = await events.send(room_id, admin, "m.room.message", {"body": "a"}, txn_id="t1")
    assert (first.event_id, first.stream_position) == (again.event_id, again.stream_position)


async def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value.code(), described(error.value)


async def test_unauthorised_local_event_is_refused(events: EventsService) -> None:
    admin = f"@admin:{events.server_name}"
    room_id = await events.create_room("10")
    outsider = f"@outsider:{events.server_name}"
    code, details = await _code(events.send(room_id, outsider, "m.room.message", {"body": "x"}))
    assert code is grpc.StatusCode.PERMISSION_DENIED and details.startswith("M_FORBIDDEN")
    # kick, invite and leave of a local user
    bob = f"@bob:{events.server_name}"
    await events.send(room_id, admin, "m.room.member", {"membership": "invite"}, state_key=bob)
    await events.send(room_id, bob, "m.room.member", {"membership": "join"}, state_key=bob)
    await events.send(room_id, bob, "m.room.message", {"body": "hi"})
    await events.send(room_id, admin, "m.room.member", {"membership": "leave"}, state_key=bob)
    code, _ = await _code(events.send(room_id, bob, "m.room.message", {"body": "x"}))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    count = await events.pool.fetchval(
        "SELECT count(*) FROM events.events WHERE room_id = $1 AND status <> 1", room_id
    )
    assert count == 0


async def test_remote_sender_and_bad_requests(events: EventsService) -> None:
    code, details = await _code(events.create_room("10", creator="@x:elsewhere.example"))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    code, details = await _code(events.create_room("99"))
    assert details.startswith("M_UNSUPPORTED_ROOM_VERSION")
    admin = f"@admin:{events.server_name}"
    code, _ = await _code(events.send("!missing:x", admin, "m.room.message", {}))
    assert code is grpc.StatusCode.NOT_FOUND
    # An alias localpart that is a whole alias, or none at all: refused, nothing created.
    for localpart in (f"#full:{events.server_name}", "a:b", "nul\x00"):
        code, details = await _code(events.create_room("10", alias_localpart=localpart))
        assert code is grpc.StatusCode.INVALID_ARGUMENT, localpart
        assert details.startswith("M_INVALID_PARAM: invalid alias localpart"), details


async def test_aliases(events: EventsService) -> None:
    room_id = await events.create_room("10")
    alias = f"#mine:{events.server_name}"
    await events.stub.PerformCreateAlias(
        events_pb2.PerformCreateAliasRequest(alias=alias, room_id=room_id, creator="@a:b")
    )
    code, _ = await _code(
        events.stub.PerformCreateAlias(
            events_pb2.PerformCreateAliasRequest(alias=alias, room_id=room_id)
        )
    )
    assert code is grpc.StatusCode.ALREADY_EXISTS
    found = await events.stub.QueryAlias(events_pb2.QueryAliasRequest(alias=alias))
    assert found.room_id == room_id and events.server_name in found.servers
    await events.stub.PerformDeleteAlias(events_pb2.PerformDeleteAliasRequest(alias=alias))
    found = await events.stub.QueryAlias(events_pb2.QueryAliasRequest(alias=alias))
    assert not found.found
    code, _ = await _code(
        events.stub.PerformCreateAlias(
            events_pb2.PerformCreateAliasRequest(alias="#x:elsewhere", room_id=room_id)
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT


async def test_local_events_obey_the_pdu_limits(events: EventsService) -> None:
    admin = f"@admin:{events.server_name}"
    room_id = await events.create_room("10")
    code, details = await _code(
        events.send(room_id, admin, "m.room.message", {"body": "x" * 70_000})
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("M_TOO_LARGE")
    code, details = await _code(events.send(room_id, admin, "m.room.message", {"n": 1.5}))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("M_BAD_JSON")
    code, details = await _code(
        events.send(room_id, admin, "m.room.topic", {"topic": "t"}, state_key="k" * 300)
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("M_BAD_JSON")
    stored = await events.pool.fetchval(
        "SELECT count(*) FROM events.events WHERE room_id = $1 AND type = 'm.room.message'",
        room_id,
    )
    assert stored == 0


async def test_every_replica_signs_with_the_rotated_key_without_a_restart(
    events_factory, keys_service
) -> None:
    """``mxfed keys rotate`` replaces the key file; each replica signs with the new key soon
    after (it looks at the file at most once a second)."""
    replicas = [await events_factory(), await events_factory()]
    admin = f"@admin:{replicas[0].server_name}"
    room_id = await replicas[0].create_room("12", admin)
    old_key_id = replicas[0].signing_key.key_id
    rotation = await keys_service.stub.PerformKeyRotation(keys_pb2.PerformKeyRotationRequest())
    assert rotation.old_key_id == old_key_id != rotation.new_key_id

    for replica in replicas:
        for _ in range(100):  # up to ~10 s on a loaded machine; a second normally
            sent = await replica.send(room_id, admin, "m.room.message", {"body": "after"})
            record = await replica.event(sent.event_id)
            assert record is not None
            signatures = decode_json(record.pdu_json)["signatures"][replica.server_name]
            if list(signatures) == [rotation.new_key_id]:
                break
            assert list(signatures) == [old_key_id]
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"still signing with {old_key_id}")
        new_key = current_signing_key(keys_service.keys.config.signing_key, max_age=0)
        assert new_key.key_id == rotation.new_key_id
        verify_json_signature(
            redact(decode_json(record.pdu_json), room_version("12")),
            replica.server_name,
            new_key.key_id,
            new_key.signing_key.verify_key,
        )


def _group_sizes_up_to(size: int) -> float:
    return (
        REGISTRY.get_sample_value(
            "mxfed_events_local_send_group_size_bucket", {"le": f"{float(size)}"}
        )
        or 0.0
    )


async def _busy_room(
    events: EventsService, room_id: str
) -> tuple[asyncpg.pool.PoolConnectionProxy, asyncpg.transaction.Transaction]:
    """The room's lock held by another transaction, as a write of the room would."""
    holder = await events.pool.acquire()
    transaction = holder.transaction()
    await transaction.start()
    await storage.lock_room(holder, room_id)
    return holder, transaction


async def _lock_waiters(events: EventsService) -> int:
    return await events.pool.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )


async def _sends_behind_a_blocked_write(
    events: EventsService, room_id: str, sends: list[tuple[str, dict, str]]
) -> list[Any]:
    """One send whose write waits for the room's lock, then ``sends`` (sender, content,
    txn id) made meanwhile; the lock let go once they all wait; every outcome."""
    holder, transaction = await _busy_room(events, room_id)
    waiting = REGISTRY.get_sample_value("mxfed_events_local_sends_waiting") or 0.0
    try:
        admin = f"@admin:{events.server_name}"
        first = asyncio.create_task(
            events.send(room_id, admin, "m.room.message", {"body": "first"})
        )
        await wait_until(
            lambda: _lock_waiters(events), interval=0.02, what="the first send waits for the lock"
        )
        rest = [
            asyncio.create_task(
                events.send(room_id, sender, "m.room.message", content, txn_id=txn_id)
            )
            for sender, content, txn_id in sends
        ]
        await wait_until(
            lambda: (
                (REGISTRY.get_sample_value("mxfed_events_local_sends_waiting") or 0.0)
                >= waiting + len(sends)
            ),
            interval=0.02,
            what=f"{len(sends)} sends wait behind the first",
        )
    finally:
        await transaction.rollback()
        await events.pool.release(holder)
    return await asyncio.gather(first, *rest, return_exceptions=True)


async def _stream_message(
    events: EventsService, sends: list[tuple[str, str, dict[str, Any], str]]
) -> list[events_pb2.SendEventResult]:
    """``sends`` (room id, sender, content, txn id) as one StreamSendEvents message; their
    results in order."""
    call = events.stub.StreamSendEvents()
    items = [
        events_pb2.SendEventItem(
            id=n,
            send=events_pb2.PerformSendEventRequest(
                room_id=room_id,
                sender=sender,
                type="m.room.message",
                content_json=encode_json(content),
                txn_id=txn_id,
            ),
            timeout_ms=30_000,
        )
        for n, (room_id, sender, content, txn_id) in enumerate(sends)
    ]
    results: dict[int, events_pb2.SendEventResult] = {}
    try:
        await call.write(events_pb2.StreamSendEventsRequest(sends=items))
        async with asyncio.timeout(30):
            async for message in call:
                results.update((result.id, result) for result in message.results)
                if len(results) == len(items):
                    break
    finally:
        call.cancel()
    return [results[n] for n in range(len(items))]


async def _transactions_of(events: EventsService, event_ids: list[str]) -> set[str]:
    rows = await events.pool.fetch(
        "SELECT DISTINCT xmin::text FROM events.events WHERE event_id = ANY($1::text[])",
        event_ids,
    )
    return {row["xmin"] for row in rows}


async def test_sends_into_a_busy_room_are_written_together_in_order(
    events: EventsService,
) -> None:
    admin = f"@admin:{events.server_name}"
    room_id = await events.create_room("12")
    before = _group_sizes_up_to(5) - _group_sizes_up_to(2)
    t1, t2 = f"t1-{room_id}", f"t2-{room_id}"  # unused by the module's other tests
    outcomes = await _sends_behind_a_blocked_write(
        events,
        room_id,
        [
            (admin, {"body": "one"}, t1),
            (admin, {"body": "two"}, t2),
            (admin, {"body": "one again"}, t1),  # the same transaction id: the same event
            (admin, {"body": "three"}, ""),
        ],
    )
    first, one, two, one_again, three = outcomes
    assert one_again.event_id == one.event_id
    assert one_again.stream_position == one.stream_position
    ids = [first.event_id, one.event_id, two.event_id, three.event_id]
    positions = [first.stream_position, one.stream_position, two.stream_position]
    assert len(set(ids)) == 4 and positions == sorted(positions)
    assert three.stream_position > two.stream_position
    # One group of four after the first send, in one database transaction.
    assert _group_sizes_up_to(5) - _group_sizes_up_to(2) == before + 1
    assert len(await _transactions_of(events, ids[1:])) == 1
    # Built one on the other, in the order sent.
    chain = await _timeline(events, room_id)
    assert [e.event_id for e in chain[-4:]] == ids
    assert all(chain[-i].prev_event_ids == [chain[-i - 1].event_id] for i in range(1, 4))
    assert [e.content["body"] for e in chain[-3:]] == ["one", "two", "three"]


async def test_a_refused_send_among_others_waiting_fails_alone(events: EventsService) -> None:
    admin = f"@admin:{events.server_name}"
    outsider = f"@outsider:{events.server_name}"
    room_id = await events.create_room("12")
    outcomes = await _sends_behind_a_blocked_write(
        events,
        room_id,
        [
            (admin, {"body": "one"}, ""),
            (outsider, {"body": "not a member"}, ""),
            (admin, {"body": "two"}, ""),
        ],
    )
    first, one, refused, two = outcomes
    assert isinstance(refused, grpc.aio.AioRpcError)
    assert refused.code() is grpc.StatusCode.PERMISSION_DENIED
    assert described(refused).startswith("M_FORBIDDEN")
    chain = await _timeline(events, room_id)
    assert [e.event_id for e in chain[-3:]] == [first.event_id, one.event_id, two.event_id]
    assert [e.content["body"] for e in chain[-2:]] == ["one", "two"]
    assert (
        await events.pool.fetchval(
            "SELECT count(*) FROM events.events WHERE room_id = $1 AND sender = $2",
            room_id,
            outsider,
        )
        == 0
    )


def _writer_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "events:local-sends"]


async def test_a_send_into_an_idle_room_is_written_by_its_own_call(
    events: EventsService,
) -> None:
    """No writer task to start and answer through; a send made meanwhile waits for it,
    then a writer task writes it."""
    admin = f"@admin:{events.server_name}"
    room_id = await events.create_room("12")
    holder, transaction = await _busy_room(events, room_id)
    try:
        first = asyncio.create_task(
            events.send(room_id, admin, "m.room.message", {"body": "first"})
        )
        await wait_until(
            lambda: _lock_waiters(events), interval=0.02, what="the first send waits for the lock"
        )
        assert _writer_tasks() == []
        waiting = REGISTRY.get_sample_value("mxfed_events_local_sends_waiting") or 0.0
        second = asyncio.create_task(
            events.send(room_id, admin, "m.room.message", {"body": "second"})
        )
        await wait_until(
            lambda: (
                (REGISTRY.get_sample_value("mxfed_events_local_sends_waiting") or 0.0)
                >= waiting + 1
            ),
            interval=0.02,
            what="the second send waits",
        )
    finally:
        await transaction.rollback()
        await events.pool.release(holder)
    sent = await asyncio.gather(first, second)
    assert sent[0].stream_position < sent[1].stream_position
    chain = await _timeline(events, room_id)
    assert [e.event_id for e in chain[-2:]] == [s.event_id for s in sent]
    await wait_until(lambda: not _writer_tasks(), interval=0.02, what="the writer ends")


async def test_a_sends_stages_are_timed(events: EventsService) -> None:
    stages = ("room_open", "build", "store", "write", "commit", "stream_round")

    def counts() -> list[float]:
        return [
            REGISTRY.get_sample_value(
                "mxfed_events_local_send_stage_seconds_count", {"stage": stage}
            )
            or 0.0
            for stage in stages
        ]

    room_id = await events.create_room("12")
    before = counts()
    await events.send(room_id, f"@admin:{events.server_name}", "m.room.message", {"body": "x"})
    assert [after - was for after, was in zip(counts(), before, strict=True)] == [1.0] * 6


async def test_the_sends_of_one_stream_message_go_together_into_an_idle_room(
    events: EventsService,
) -> None:
    """A bridge's sends that arrive in one StreamSendEvents message are one group (one
    transaction), even into a room nobody writes: none goes alone first."""
    admin = f"@admin:{events.server_name}"
    room_id = await events.create_room("12")

    def groups() -> tuple[float, float]:
        name = "mxfed_events_local_send_group_size"
        return (
            REGISTRY.get_sample_value(f"{name}_count") or 0.0,
            REGISTRY.get_sample_value(f"{name}_sum") or 0.0,
        )

    before = groups()
    results = await _stream_message(
        events, [(room_id, admin, {"body": f"together {n}"}, f"together-{n}") for n in range(5)]
    )
    assert all(result.HasField("sent") for result in results), results
    count, total = groups()
    assert (count - before[0], total - before[1]) == (1, 5)
    chain = await _timeline(events, room_id)
    assert [e.event_id for e in chain[-5:]] == [results[n].sent.event_id for n in range(5)]


async def test_the_groups_of_several_rooms_are_written_in_one_transaction(
    events: EventsService,
) -> None:
    """Sends into two rooms at once: both rooms' groups go into one database transaction,
    each built in order on its own room's head; a transaction id used before (by a send
    alone, earlier) gives that send's event and position again."""
    admin = f"@admin:{events.server_name}"
    first_room, second_room = await events.create_room("12"), await events.create_room("12")
    earlier = await events.send(
        first_room, admin, "m.room.message", {"body": "earlier"}, txn_id=f"e-{first_room}"
    )
    results = await _stream_message(
        events,
        [
            (first_room, admin, {"body": "a1"}, ""),
            (second_room, admin, {"body": "b1"}, f"b1-{second_room}"),
            (first_room, admin, {"body": "earlier again"}, f"e-{first_room}"),
            (first_room, admin, {"body": "a2"}, ""),
            (second_room, admin, {"body": "b2"}, ""),
        ],
    )
    assert all(result.HasField("sent") for result in results), results
    a1, b1, again, a2, b2 = (result.sent for result in results)
    assert (again.event_id, again.stream_position) == (earlier.event_id, earlier.stream_position)
    new = [a1.event_id, a2.event_id, b1.event_id, b2.event_id]
    assert len(await _transactions_of(events, new)) == 1
    for room_id, sent, bodies in (
        (first_room, [earlier, a1, a2], ["earlier", "a1", "a2"]),
        (second_room, [b1, b2], ["b1", "b2"]),
    ):
        chain = await _timeline(events, room_id)
        _check_chain(events, chain)
        assert [e.event_id for e in chain[-len(sent) :]] == [s.event_id for s in sent]
        assert [e.content["body"] for e in chain[-len(sent) :]] == bodies
        assert (await events.head(room_id)).extremities == [sent[-1].event_id]


async def test_a_refused_group_does_not_stop_another_rooms_group(events: EventsService) -> None:
    """One room's group holds a send that is refused (and a room that does not exist):
    the other room's group is stored in the transaction of groups; the refused room's
    other sends are stored each alone, the refused one is not."""
    admin = f"@admin:{events.server_name}"
    outsider = f"@outsider:{events.server_name}"
    first_room, second_room = await events.create_room("12"), await events.create_room("12")
    unknown_room = f"!nowhere:{events.server_name}"
    results = await _stream_message(
        events,
        [
            (first_room, admin, {"body": "a1"}, ""),
            (first_room, outsider, {"body": "not a member"}, ""),
            (second_room, admin, {"body": "b1"}, ""),
            (unknown_room, admin, {"body": "lost"}, ""),
            (first_room, admin, {"body": "a2"}, ""),
            (second_room, admin, {"body": "b2"}, ""),
        ],
    )
    a1, refused, b1, lost, a2, b2 = results
    assert refused.error.errcode == "M_FORBIDDEN"
    assert lost.error.errcode == "M_NOT_FOUND"
    assert all(r.HasField("sent") for r in (a1, b1, a2, b2)), results
    assert len(await _transactions_of(events, [b1.sent.event_id, b2.sent.event_id])) == 1
    assert len(await _transactions_of(events, [a1.sent.event_id, a2.sent.event_id])) == 2
    chain = await _timeline(events, first_room)
    assert [e.content.get("body") for e in chain[-2:]] == ["a1", "a2"]
    assert (
        await events.pool.fetchval(
            "SELECT count(*) FROM events.events WHERE room_id = $1 AND sender = $2",
            first_room,
            outsider,
        )
        == 0
    )


def _stale_heads() -> float:
    return REGISTRY.get_sample_value("mxfed_events_local_send_stale_heads_total") or 0.0


async def _stored_once(events: EventsService, event_id: str) -> None:
    async with events.pool.acquire() as conn:
        rows = await conn.fetchval(
            "SELECT count(*) FROM events.events WHERE event_id = $1", event_id
        )
    assert rows == 1


async def test_a_lone_send_after_one_of_ours_opens_on_the_kept_head(
    events: EventsService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second send in a row does not read the room's head (one round trip less)."""
    admin = f"@admin:{events.server_name}"
    room_id = await events.create_room("12")
    first = await events.send(room_id, admin, "m.room.message", {"body": "1"})
    reads = 0
    room_head = storage.room_head

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await room_head(*args, **kwargs)

    monkeypatch.setattr(storage, "room_head", counted)
    stale = _stale_heads()
    second = await events.send(room_id, admin, "m.room.message", {"body": "2"})
    assert (reads, _stale_heads()) == (0, stale)
    assert first.stream_position < second.stream_position
    chain = await _timeline(events, room_id)
    _check_chain(events, chain)
    assert [e.event_id for e in chain[-2:]] == [first.event_id, second.event_id]


@pytest.mark.parametrize("fork", [False, True])
async def test_a_send_after_an_inbound_pdu_builds_on_the_rooms_real_head(
    events: EventsService, remote: RemoteServer, fork: bool
) -> None:
    """Our last send's head is kept; a remote PDU moves the head (on our event, or beside
    it: two forward extremities); the next send builds on the real extremities, once."""
    room_id, alice = await _public_room_with_remote_member(events, remote)
    admin = f"@admin:{events.server_name}"
    before_ours = await events.head(room_id)
    ours = await events.send(room_id, admin, "m.room.message", {"body": "ours"})
    head = before_ours if fork else await events.head(room_id)
    pdu, theirs = remote.pdu(head, "m.room.message", alice, {"body": "theirs"})
    assert await events.transaction(remote.name, [pdu]) == {"pdus": {theirs: {}}}
    extremities = sorted((await events.head(room_id)).extremities)
    assert extremities == sorted([ours.event_id, theirs] if fork else [theirs])
    stale = _stale_heads()
    after = await events.send(room_id, admin, "m.room.message", {"body": "after"})
    assert _stale_heads() == stale + 1
    record = await events.event(after.event_id)
    assert record is not None
    assert sorted(decode_json(record.pdu_json)["prev_events"]) == extremities
    assert (await events.head(room_id)).extremities == [after.event_id]
    await _stored_once(events, after.event_id)


async def test_a_send_after_another_replicas_builds_on_its_event(
    events_factory: Any,
) -> None:
    first, second = await events_factory(), await events_factory()
    admin = f"@admin:{first.server_name}"
    room_id = await first.create_room("12")
    one = await first.send(room_id, admin, "m.room.message", {"body": "1"})
    two = await second.send(room_id, admin, "m.room.message", {"body": "2"})
    three = await first.send(room_id, admin, "m.room.message", {"body": "3"})
    chain = await _timeline(first, room_id)
    _check_chain(first, chain)
    assert [e.event_id for e in chain[-3:]] == [one.event_id, two.event_id, three.event_id]
    await _stored_once(first, three.event_id)


async def _tips(events: EventsService, room_id: str) -> list[str]:
    """The room's accepted events that no accepted event cites as a prev_event, sorted."""
    rows = await events.pool.fetch(
        "SELECT event_id, pdu_json FROM events.events WHERE room_id = $1 AND status = 1", room_id
    )
    cited = {p for row in rows for p in decode_json(row["pdu_json"])["prev_events"]}
    return sorted(row["event_id"] for row in rows if row["event_id"] not in cited)


async def test_sends_and_inbound_pdus_at_once_keep_the_dag(
    events: EventsService, remote: RemoteServer
) -> None:
    """Local sends (each on the kept head) race remote PDUs into one room: every event
    stored once, the forward extremities exactly the accepted events nothing builds on,
    and the next send builds on all of them."""
    room_id, alice = await _public_room_with_remote_member(events, remote)
    admin = f"@admin:{events.server_name}"
    await events.send(room_id, admin, "m.room.message", {"body": "first"})
    for round_ in range(8):
        head = await events.head(room_id)
        pdu, _ = remote.pdu(head, "m.room.message", alice, {"body": f"theirs {round_}"})
        await asyncio.gather(
            events.send(room_id, admin, "m.room.message", {"body": f"ours {round_}"}),
            events.transaction(remote.name, [pdu]),
        )
    tips = await _tips(events, room_id)
    assert sorted((await events.head(room_id)).extremities) == tips
    last = await events.send(room_id, admin, "m.room.message", {"body": "last"})
    record = await events.event(last.event_id)
    assert record is not None
    assert sorted(decode_json(record.pdu_json)["prev_events"]) == tips
    await _stored_once(events, last.event_id)


async def test_a_send_refused_on_the_kept_head_is_tried_on_the_rooms_real_head(
    events_factory: Any,
) -> None:
    """Our kept head predates a join another replica wrote: the joined user's send is not
    refused on it (a refusal on a kept head proves nothing), but built on the room's real
    head and accepted, once."""
    first, second = await events_factory(), await events_factory()
    admin, bob = f"@admin:{first.server_name}", f"@bob:{first.server_name}"
    room_id = await first.create_room("12", preset="public_chat")
    await first.send(room_id, admin, "m.room.message", {"body": "kept"})
    joined = await second.send(room_id, bob, "m.room.member", {"membership": "join"}, state_key=bob)
    sent = await first.send(room_id, bob, "m.room.message", {"body": "after joining"})
    chain = await _timeline(first, room_id)
    _check_chain(first, chain)
    assert [e.event_id for e in chain[-2:]] == [joined.event_id, sent.event_id]
    await _stored_once(first, sent.event_id)


async def test_a_transaction_of_groups_that_fails_leaves_each_send_stored_once(
    events: EventsService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared transaction fails after its insert (rolled back): each send is written
    alone and answered with its own event, stored once, a repeated transaction id given
    the event sent before, each room's chain in the order sent."""
    admin = f"@admin:{events.server_name}"
    first_room, second_room = await events.create_room("12"), await events.create_room("12")
    earlier = await events.send(
        first_room, admin, "m.room.message", {"body": "earlier"}, txn_id=f"e-{first_room}"
    )
    original = RoomBatch.write_together
    failed: list[int] = []

    async def write_then_fail(batches: Any, local_transactions: Any = None) -> None:
        await original(batches, local_transactions)
        if not failed:
            failed.append(len(batches))
            raise asyncpg.PostgresError("the shared transaction fails")

    monkeypatch.setattr(RoomBatch, "write_together", staticmethod(write_then_fail))
    results = await _stream_message(
        events,
        [
            (first_room, admin, {"body": "a1"}, f"a1-{first_room}"),
            (second_room, admin, {"body": "b1"}, f"b1-{second_room}"),
            (first_room, admin, {"body": "earlier again"}, f"e-{first_room}"),
            (second_room, admin, {"body": "b2"}, ""),
        ],
    )
    assert failed == [2]
    assert all(result.HasField("sent") for result in results), results
    a1, b1, again, b2 = (result.sent for result in results)
    assert (again.event_id, again.stream_position) == (earlier.event_id, earlier.stream_position)
    for room_id, sent, bodies in (
        (first_room, [earlier, a1], ["earlier", "a1"]),
        (second_room, [b1, b2], ["b1", "b2"]),
    ):
        chain = await _timeline(events, room_id)
        _check_chain(events, chain)
        assert [e.event_id for e in chain[-len(sent) :]] == [s.event_id for s in sent]
        assert [e.content["body"] for e in chain[-len(sent) :]] == bodies
        for s in sent:
            await _stored_once(events, s.event_id)


def _counting_head_reads(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every :func:`storage.room_heads` call from now on: the rooms whose heads it read."""
    calls: list[list[str]] = []
    room_heads = storage.room_heads

    async def counted(conn: Any, rooms: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append([room_id for room_id, *_ in rooms])
        return await room_heads(conn, rooms, *args, **kwargs)

    monkeypatch.setattr(storage, "room_heads", counted)
    return calls


async def test_groups_after_our_sends_open_on_the_kept_heads(
    events: EventsService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rooms whose last send was ours: a transaction of their groups reads only the head of
    the room we have not sent into (no round trip for the others) and needs no second try;
    each group is built in order on its room's last event."""
    admin = f"@admin:{events.server_name}"
    first_room, second_room, third_room = [await events.create_room("12") for _ in range(3)]
    before = [
        await events.send(room_id, admin, "m.room.message", {"body": "before"})
        for room_id in (first_room, second_room)
    ]
    reads = _counting_head_reads(monkeypatch)
    stale = _stale_heads()
    results = await _stream_message(
        events,
        [
            (first_room, admin, {"body": "a1"}, f"a1-{first_room}"),
            (second_room, admin, {"body": "b1"}, ""),
            (third_room, admin, {"body": "c1"}, ""),
            (first_room, admin, {"body": "a2"}, ""),
            (second_room, admin, {"body": "b2"}, f"b2-{second_room}"),
        ],
    )
    assert all(result.HasField("sent") for result in results), results
    assert (reads, _stale_heads()) == ([[third_room]], stale)
    a1, b1, c1, a2, b2 = (result.sent for result in results)
    assert len(await _transactions_of(events, [a1.event_id, b1.event_id, c1.event_id])) == 1
    positions = [a1.stream_position, b1.stream_position, a2.stream_position, b2.stream_position]
    assert all(positions) and len(set(positions)) == 4
    for room_id, sent, bodies in (
        (first_room, [before[0], a1, a2], ["before", "a1", "a2"]),
        (second_room, [before[1], b1, b2], ["before", "b1", "b2"]),
        (third_room, [c1], ["c1"]),
    ):
        chain = await _timeline(events, room_id)
        _check_chain(events, chain)
        assert [e.event_id for e in chain[-len(sent) :]] == [s.event_id for s in sent]
        assert [e.content["body"] for e in chain[-len(sent) :]] == bodies
        assert (await events.head(room_id)).extremities == [sent[-1].event_id]
    # A transaction id used in the kept-head write is known afterwards.
    again = await _stream_message(events, [(first_room, admin, {"body": "x"}, f"a1-{first_room}")])
    assert (again[0].sent.event_id, again[0].sent.stream_position) == (
        a1.event_id,
        a1.stream_position,
    )


@pytest.mark.parametrize(
    "moved_by", ["another replica", "a join on another replica", "a used transaction id"]
)
async def test_groups_on_kept_heads_of_which_one_moved_go_again_on_the_real_heads(
    events_factory: Any, monkeypatch: pytest.MonkeyPatch, moved_by: str
) -> None:
    """Another replica wrote into one of two rooms after our last send (a message, or the
    join of a user who then sends, refused on our kept head), or a send reuses a
    transaction id (which a write on a kept head does not look up): the transaction on the
    kept heads stores nothing, and the groups are built again on the heads read under the
    locks: each event stored once, the other replica's event cited, the used transaction
    id given its event again."""
    first, second = await events_factory(), await events_factory()
    admin, bob = f"@admin:{first.server_name}", f"@bob:{first.server_name}"
    first_room = await first.create_room("12", preset="public_chat")
    second_room = await first.create_room("12")
    earlier = await first.send(
        first_room, admin, "m.room.message", {"body": "earlier"}, txn_id=f"e-{first_room}"
    )
    await first.send(second_room, admin, "m.room.message", {"body": "kept"})
    sends = [
        (first_room, admin, {"body": "a1"}, ""),
        (second_room, admin, {"body": "b1"}, ""),
    ]
    expected_first_chain = [earlier.event_id]
    if moved_by == "another replica":
        theirs = await second.send(first_room, admin, "m.room.message", {"body": "theirs"})
        expected_first_chain.append(theirs.event_id)
    elif moved_by == "a join on another replica":
        joined = await second.send(
            first_room, bob, "m.room.member", {"membership": "join"}, state_key=bob
        )
        expected_first_chain.append(joined.event_id)
        sends[0] = (first_room, bob, {"body": "a1"}, "")
    else:
        sends.append((first_room, admin, {"body": "earlier again"}, f"e-{first_room}"))
    reads = _counting_head_reads(monkeypatch)
    stale = _stale_heads()
    results = await _stream_message(first, sends)
    assert all(result.HasField("sent") for result in results), results
    assert _stale_heads() == stale + 1
    assert [sorted(rooms) for rooms in reads] == [sorted([first_room, second_room])]
    a1, b1 = results[0].sent, results[1].sent
    if moved_by == "a used transaction id":
        again = results[2].sent
        assert (again.event_id, again.stream_position) == (
            earlier.event_id,
            earlier.stream_position,
        )
    chain = await _timeline(first, first_room)
    _check_chain(first, chain)
    assert [e.event_id for e in chain[-len(expected_first_chain) - 1 :]] == [
        *expected_first_chain,
        a1.event_id,
    ]
    second_chain = await _timeline(first, second_room)
    _check_chain(first, second_chain)
    assert second_chain[-1].event_id == b1.event_id
    for sent in (a1, b1):
        await _stored_once(first, sent.event_id)
    assert await first.pool.fetchval(
        "SELECT count(*) FROM events.events WHERE room_id = $1", first_room
    ) == len(chain)


async def test_sends_into_idle_rooms_while_others_are_written_go_together(
    events: EventsService,
) -> None:
    """While a lone send and a transaction of groups are being written (each waiting for a
    room's lock), sends into two rooms nobody writes do not go each alone: they wait as
    their rooms' groups and then share one transaction."""
    admin = f"@admin:{events.server_name}"
    busy, also_busy, idle, also_idle = [await events.create_room("12") for _ in range(4)]
    held = [await _busy_room(events, room_id) for room_id in (busy, also_busy)]

    def groups_waiting() -> float:
        return REGISTRY.get_sample_value("mxfed_events_local_send_groups_waiting") or 0.0

    def send(room_id: str, body: str) -> asyncio.Task[Any]:
        return asyncio.create_task(
            events.send(room_id, admin, "m.room.message", {"body": body}, txn_id=room_id)
        )

    try:
        lone = send(busy, "lone")
        await wait_until(
            lambda: _lock_waiters(events), interval=0.02, what="the lone send waits for the lock"
        )
        group = send(also_busy, "group")

        async def both_wait() -> bool:
            return await _lock_waiters(events) == 2

        await wait_until(both_wait, interval=0.02, what="a transaction of groups waits too")
        later = [send(idle, "idle"), send(also_idle, "also idle")]
        await wait_until(
            lambda: groups_waiting() == 2, interval=0.02, what="two groups wait for the next"
        )
    finally:
        for holder, transaction in held:
            await transaction.rollback()
            await events.pool.release(holder)
    sent = await asyncio.gather(lone, group, *later)
    assert len({s.event_id for s in sent}) == 4
    # The transaction that inserted each send's transaction id (events rows are updated
    # again by the stream round, which rows of several transactions may share).
    inserted_by = await events.pool.fetch(
        "SELECT txn_id, xmin::text FROM events.local_transactions"
        " WHERE sender = $1 AND txn_id = ANY($2::text[])",
        admin,
        [busy, also_busy, idle, also_idle],
    )
    by_room = {row["txn_id"]: row["xmin"] for row in inserted_by}
    assert by_room[idle] == by_room[also_idle]
    assert len({by_room[busy], by_room[also_busy], by_room[idle]}) == 3
    for room_id, one in zip((busy, also_busy, idle, also_idle), sent, strict=True):
        assert (await events.head(room_id)).extremities == [one.event_id]
    assert groups_waiting() == 0


async def test_groups_on_kept_heads_and_inbound_pdus_at_once_keep_the_dag(
    events: EventsService, remote: RemoteServer
) -> None:
    """Groups of sends into two rooms (opened on the kept heads) race remote PDUs into both:
    every event stored once, each room's forward extremities exactly its accepted events
    nothing builds on, and the next sends build on all of them."""
    admin = f"@admin:{events.server_name}"
    rooms = [await _public_room_with_remote_member(events, remote) for _ in range(2)]
    await _stream_message(events, [(room_id, admin, {"body": "first"}, "") for room_id, _ in rooms])
    for round_ in range(8):
        pdus = []
        for room_id, alice in rooms:
            pdu, _ = remote.pdu(
                await events.head(room_id), "m.room.message", alice, {"body": f"theirs {round_}"}
            )
            pdus.append(pdu)
        results, _ = await asyncio.gather(
            _stream_message(
                events,
                [
                    (room_id, admin, {"body": f"ours {round_}.{n}"}, "")
                    for room_id, _ in rooms
                    for n in range(2)
                ],
            ),
            events.transaction(remote.name, pdus),
        )
        assert all(result.HasField("sent") for result in results), results
    for room_id, _ in rooms:
        tips = await _tips(events, room_id)
        assert sorted((await events.head(room_id)).extremities) == tips
        last = await _stream_message(events, [(room_id, admin, {"body": "last"}, "")])
        record = await events.event(last[0].sent.event_id)
        assert record is not None
        assert sorted(decode_json(record.pdu_json)["prev_events"]) == tips
        await _stored_once(events, last[0].sent.event_id)


@pytest.mark.parametrize("how", ["alone", "in a group"])
async def test_a_write_on_kept_heads_waits_for_the_rooms_lock(
    events: EventsService, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A send on the kept head (alone, or a group of two rooms) begins no transaction: its
    one write statement takes the rooms' locks, so it waits for a writer holding one and
    is then stored on the head that writer left."""
    admin = f"@admin:{events.server_name}"
    rooms = [await events.create_room("12") for _ in range(2)]
    kept = [
        await events.send(room_id, admin, "m.room.message", {"body": "kept"}) for room_id in rooms
    ]
    reads = _counting_head_reads(monkeypatch)
    stale = _stale_heads()
    holder, transaction = await _busy_room(events, rooms[0])
    try:
        if how == "alone":
            sending = asyncio.create_task(
                events.send(rooms[0], admin, "m.room.message", {"body": "after"})
            )
        else:
            sending = asyncio.create_task(
                _stream_message(
                    events, [(room_id, admin, {"body": "after"}, "") for room_id in rooms]
                )
            )
        await wait_until(
            lambda: _lock_waiters(events), interval=0.02, what="the write waits for the lock"
        )
        assert not sending.done()
    finally:
        await transaction.rollback()
        await events.pool.release(holder)
    outcome = await sending
    sent = [outcome] if how == "alone" else [result.sent for result in outcome]
    assert (reads, _stale_heads()) == ([], stale)
    for room_id, before, after in zip(rooms, kept, sent, strict=False):
        chain = await _timeline(events, room_id)
        _check_chain(events, chain)
        assert [e.event_id for e in chain[-2:]] == [before.event_id, after.event_id]


async def _blocked_on_a_row(events: EventsService) -> bool:
    """Whether a connection to the test database waits for another transaction's row."""
    waiting = await events.pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND wait_event = 'transactionid'"
    )
    return waiting > 0


@pytest.mark.parametrize("head", ["kept", "read"])
async def test_a_transaction_id_used_meanwhile_by_a_send_into_another_room_answers_its_event(
    events: EventsService, head: str
) -> None:
    """A sender's transaction id is its own across rooms. Another write uses it (for an
    event of another room) while this send, under its own room's lock only, has looked it
    up and found nothing: the send's insert waits for that write, then stores nothing and
    answers with that write's event."""
    admin = f"@admin:{events.server_name}"
    room_id, other_room = await events.create_room("12"), await events.create_room("12")
    if head == "kept":
        await events.send(room_id, admin, "m.room.message", {"body": "before"})
    theirs = await events.send(other_room, admin, "m.room.message", {"body": "theirs"})
    txn_id = f"meanwhile-{room_id}"
    async with events.pool.acquire() as other_write:
        transaction = other_write.transaction()
        await transaction.start()
        try:
            await other_write.execute(
                "INSERT INTO events.local_transactions (sender, txn_id, event_id)"
                " VALUES ($1, $2, $3)",
                admin,
                txn_id,
                theirs.event_id,
            )
            sending = asyncio.create_task(
                events.send(room_id, admin, "m.room.message", {"body": "ours"}, txn_id=txn_id)
            )
            await wait_until(
                lambda: _blocked_on_a_row(events),
                interval=0.02,
                what="the send's insert waits for the other write's transaction id",
            )
            await transaction.commit()
        except BaseException:
            await transaction.rollback()
            raise
    sent = await sending
    assert (sent.event_id, sent.stream_position) == (theirs.event_id, theirs.stream_position)
    ours = await events.pool.fetchval(
        "SELECT count(*) FROM events.events WHERE room_id = $1"
        " AND pdu_json::jsonb -> 'content' ->> 'body' = 'ours'",
        room_id,
    )
    assert ours == 0


async def test_one_transaction_id_sent_into_two_rooms_at_once_stores_one_event(
    events: EventsService,
) -> None:
    """A sender's transaction id is its own across rooms: two sends with the same one into
    two rooms at the same moment (each room's writer holding only its own lock, neither
    seeing the other's uncommitted use) store one event, and both are answered with it."""
    admin = f"@admin:{events.server_name}"
    rooms = [await events.create_room("12") for _ in range(2)]
    for room_id in rooms:  # kept heads, and rooms whose heads are read, alike
        await events.send(room_id, admin, "m.room.message", {"body": "before"})
    for attempt in range(10):
        txn_id = f"twice-{rooms[0]}-{attempt}"
        sent = await asyncio.gather(
            *(
                events.send(room_id, admin, "m.room.message", {"body": "once"}, txn_id=txn_id)
                for room_id in rooms
            )
        )
        assert sent[0].event_id == sent[1].event_id, attempt
        assert sent[0].stream_position == sent[1].stream_position
        stored = await events.pool.fetchval(
            "SELECT count(*) FROM events.events WHERE room_id = ANY($1::text[])"
            " AND pdu_json::jsonb -> 'content' ->> 'body' = 'once'",
            rooms,
        )
        assert stored == attempt + 1
