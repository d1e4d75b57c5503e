"""Rooms created and events sent by local users (PerformCreateRoom, PerformSendEvent, aliases)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from matrix_protocol.auth_events import select_auth_event_ids
from matrix_protocol.canonical_json import decode_json
from matrix_protocol.events import Event
from matrix_protocol.hashes import content_hash_matches
from matrix_protocol.redaction import redact
from matrix_protocol.room_versions import room_version
from matrix_protocol.signing import verify_json_signature
from mxfed.identity_files import current_signing_key
from mxfed_api.events.v1 import events_pb2
from mxfed_api.keys.v1 import keys_pb2
from tests.support.events_service import EventsService
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
