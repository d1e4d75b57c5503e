"""Receiving PDUs and transactions through InputTransaction.

Spec: https://spec.matrix.org/v1.19/server-server-api/#checks-performed-on-receipt-of-a-pdu and
https://spec.matrix.org/v1.19/server-server-api/#transactions
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from prometheus_client import REGISTRY

from matrix_protocol.canonical_json import decode_json, encode_json
from matrix_protocol.hashes import content_hash_matches
from mxfed_api.events.v1 import events_pb2
from services.events import storage
from services.events.input import InputPipeline
from services.events.storage import NOTIFY_CHANNEL
from tests.support.events_service import (
    EventsService,
    RemoteServer,
    _public_room_with_remote_member,
)


async def test_valid_pdu_is_stored_and_readable(
    events: EventsService, remote: RemoteServer
) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote)
    head = await events.head(room_id)
    message, event_id = remote.pdu(head, "m.room.message", alice, {"body": "hi"})
    assert await events.transaction(remote.name, [message]) == {"pdus": {event_id: {}}}

    record = await events.event(event_id)
    assert record is not None
    assert record.status == events_pb2.EVENT_STATUS_ACCEPTED and record.stream_position > 0
    assert decode_json(record.pdu_json)["content"] == {"body": "hi"}
    assert (await events.head(room_id)).extremities == [event_id]
    servers = await events.stub.QueryServersInRoom(
        events_pb2.QueryServersInRoomRequest(room_id=room_id)
    )
    assert sorted(servers.servers) == sorted([events.server_name, remote.name])


async def test_the_rooms_of_one_transaction_get_their_stream_positions_in_one_round(
    events: EventsService, remote: RemoteServer, database_url: str
) -> None:
    rooms = [await _public_room_with_remote_member(events, remote) for _ in range(3)]
    pdus, event_ids = [], []
    for room_id, alice in rooms:
        message, event_id = remote.pdu(await events.head(room_id), "m.room.message", alice, {})
        pdus.append(message)
        event_ids.append(event_id)
    rounds: list[object] = []
    listening = await asyncpg.connect(database_url)
    try:
        await listening.add_listener(NOTIFY_CHANNEL, lambda *args: rounds.append(args))
        assert await events.transaction(remote.name, pdus) == {
            "pdus": {event_id: {} for event_id in event_ids}
        }
        await listening.fetchval("SELECT 1")  # notifications committed before are delivered
        await asyncio.sleep(0)
        # The rooms committed together; one round (one synchronous commit, one
        # notification) gave all three their positions, not one per room.
        assert len(rounds) == 1
    finally:
        await listening.close()
    for event_id in event_ids:
        record = await events.event(event_id)
        assert record is not None and record.stream_position > 0


async def test_a_known_rooms_version_is_not_asked_again(
    events: EventsService, remote: RemoteServer, monkeypatch
) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote)
    asked: list[set[str]] = []
    rooms_or_joins = storage.rooms_or_joins

    async def counted(conn, room_ids, joins_since):
        asked.append(set(room_ids))
        return await rooms_or_joins(conn, room_ids, joins_since)

    monkeypatch.setattr(storage, "rooms_or_joins", counted)
    for body in ("first", "second"):
        message, event_id = remote.pdu(
            await events.head(room_id), "m.room.message", alice, {"body": body}
        )
        asked.clear()
        assert await events.transaction(remote.name, [message]) == {"pdus": {event_id: {}}}
    assert asked == []  # known since the first transaction
    # A room it does not know is asked for each time (it may be joined meanwhile).
    head = await events.head(room_id)
    head.room_id = "!nowhere:" + remote.name
    asked.clear()
    for _ in range(2):
        message, _ = remote.pdu(head, "m.room.message", alice, {"body": "hi"})
        assert await events.transaction(remote.name, [message]) == {"pdus": {}}
    assert asked == [{head.room_id}, {head.room_id}]


async def test_unknown_room_is_ignored_without_entry(
    events: EventsService, remote: RemoteServer
) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote)
    head = await events.head(room_id)
    head.room_id = "!nowhere:" + remote.name
    message, _ = remote.pdu(head, "m.room.message", alice, {"body": "hi"})
    assert await events.transaction(remote.name, [message]) == {"pdus": {}}


async def test_bad_signature_is_dropped(events: EventsService, remote: RemoteServer) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote)
    head = await events.head(room_id)
    message, event_id = remote.pdu(head, "m.room.message", alice, {"body": "hi"}, advance=False)
    key_id = remote.key_server.key_id
    signature = message["signatures"][remote.name][key_id]
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    message["signatures"][remote.name][key_id] = flipped
    response = await events.transaction(remote.name, [message])
    assert "signature" in response["pdus"][event_id]["error"]
    assert await events.event(event_id) is None


async def test_sender_must_belong_to_origin(events: EventsService, remote: RemoteServer) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote)
    head = await events.head(room_id)
    message, event_id = remote.pdu(head, "m.room.message", alice, {"body": "hi"})
    response = await events.transaction("other.example", [message])
    assert "origin" in response["pdus"][event_id]["error"]
    assert await events.event(event_id) is None


async def test_bad_content_hash_stores_redacted_copy(
    events: EventsService, remote: RemoteServer
) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote)
    head = await events.head(room_id)
    message, event_id = remote.pdu(head, "m.room.message", alice, {"body": "original"})
    message["content"] = {"body": "tampered"}  # signatures cover the redacted form only
    assert not content_hash_matches(message)
    assert await events.transaction(remote.name, [message]) == {"pdus": {event_id: {}}}
    record = await events.event(event_id)
    assert record is not None and record.redacted
    assert decode_json(record.pdu_json)["content"] == {}


async def test_auth_failure_is_rejected_and_never_a_prev_event(
    events: EventsService, remote: RemoteServer
) -> None:
    room_id, _ = await _public_room_with_remote_member(events, remote)
    head = await events.head(room_id)
    mallory = remote.user("mallory")  # never joined
    message, event_id = remote.pdu(head, "m.room.message", mallory, {"body": "hi"}, advance=False)
    response = await events.transaction(remote.name, [message])
    assert "rejected" in response["pdus"][event_id]["error"]
    record = await events.event(event_id)
    assert record is not None and record.status == events_pb2.EVENT_STATUS_REJECTED
    assert record.rejection_reason and record.stream_position == 0
    after = await events.head(room_id)
    assert event_id not in after.extremities
    admin = f"@admin:{events.server_name}"
    sent = await events.send(room_id, admin, "m.room.message", {"body": "x"})
    ours = decode_json((await events.event(sent.event_id)).pdu_json)
    assert event_id not in ours["prev_events"]


async def test_missing_prev_events_get_an_error_entry(
    events: EventsService, remote: RemoteServer
) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote)
    head = await events.head(room_id)
    message, event_id = remote.pdu(head, "m.room.message", alice, {"body": "hi"}, prev=["$unknown"])
    response = await events.transaction(remote.name, [message])
    assert response["pdus"][event_id]["error"].startswith("missing prev_events")
    assert await events.event(event_id) is None


async def test_soft_fail_after_ban(events: EventsService, remote: RemoteServer) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote)
    before_ban = await events.head(room_id)
    admin = f"@admin:{events.server_name}"
    ban = await events.stub.PerformSendEvent(
        events_pb2.PerformSendEventRequest(
            room_id=room_id,
            sender=admin,
            type="m.room.member",
            state_key=alice,
            content_json=b'{"membership":"ban"}',
        )
    )
    # Alice's server had not seen the ban: her message builds on the old state.
    message, event_id = remote.pdu(before_ban, "m.room.message", alice, {"body": "late"})
    assert await events.transaction(remote.name, [message]) == {"pdus": {event_id: {}}}
    record = await events.event(event_id)
    assert record is not None and record.status == events_pb2.EVENT_STATUS_SOFT_FAILED
    assert record.stream_position == 0
    assert (await events.head(room_id)).extremities == [ban.event_id]


async def test_duplicate_transaction_is_idempotent(
    events: EventsService, remote: RemoteServer
) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote)
    head = await events.head(room_id)
    pdus = [remote.pdu(head, "m.room.message", alice, {"body": str(i)})[0] for i in range(5)]
    bad = remote.pdu(head, "m.room.message", remote.user("mallory"), {"body": "x"})[0]
    txn_id = uuid.uuid4().hex
    before = _transactions_by_result()

    first, second = await asyncio.gather(
        events.transaction(remote.name, [*pdus, bad], txn_id=txn_id),
        events.transaction(remote.name, [*pdus, bad], txn_id=txn_id),
    )
    third = await events.transaction(remote.name, [*pdus, bad], txn_id=txn_id)
    assert first == second == third
    # Processed once, the others answered from what it stored (equal answers alone do not
    # show it: storing a second processing's answer keeps and returns the first one's).
    after = _transactions_by_result()
    assert (after["processed"] - before["processed"], after["retry"] - before["retry"]) == (1, 2)
    assert sum("error" in answer for answer in first["pdus"].values()) == 1
    count = await events.pool.fetchval(
        "SELECT count(*) FROM events.events WHERE room_id = $1", room_id
    )
    edges = await events.pool.fetchval(
        "SELECT count(*) FROM events.event_auth a JOIN events.events e USING (event_id)"
        " WHERE e.room_id = $1",
        room_id,
    )
    # create, join, power levels, join rules, history visibility, guest access;
    # alice's join, 5 messages, 1 rejected
    assert count == 6 + 1 + 5 + 1
    distinct = await events.pool.fetchval(
        "SELECT count(*) FROM (SELECT DISTINCT a.event_id, a.auth_id FROM events.event_auth a"
        " JOIN events.events e USING (event_id) WHERE e.room_id = $1) d",
        room_id,
    )
    assert edges == distinct


async def test_a_retry_is_answered_as_stored_whatever_its_parse_would_do(
    events: EventsService, remote: RemoteServer, monkeypatch
) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote)
    message, _ = remote.pdu(await events.head(room_id), "m.room.message", alice, {})
    txn_id = uuid.uuid4().hex
    first = await events.transaction(remote.name, [message], txn_id=txn_id)

    async def parse_fails(pipeline: InputPipeline, raw_pdus: object) -> None:
        raise asyncpg.PostgresConnectionError("the database went away while parsing")

    # Its PDUs are not processed again: what their parse does (a room version to read,
    # say) does not matter.
    monkeypatch.setattr(InputPipeline, "_parse", parse_fails)
    assert await events.transaction(remote.name, [message], txn_id=txn_id) == first


async def test_already_stored_events_answer_empty(
    events: EventsService, remote: RemoteServer
) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote)
    head = await events.head(room_id)
    message, event_id = remote.pdu(head, "m.room.message", alice, {"body": "once"})
    assert await events.transaction(remote.name, [message]) == {"pdus": {event_id: {}}}
    assert await events.transaction(remote.name, [message]) == {"pdus": {event_id: {}}}


async def test_input_pdus_gap_fill_is_streamed_like_new_events(
    events: EventsService, remote: RemoteServer
) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote)
    head = await events.head(room_id)
    pdus = [remote.pdu(head, "m.room.message", alice, {"body": str(i)}) for i in range(3)]
    reply = await events.stub.InputPdus(
        events_pb2.InputPdusRequest(
            room_id=room_id,
            room_version=head.version,
            origin=remote.name,
            kind=events_pb2.INPUT_KIND_GAP_FILL,
            pdus=[encode_json(p) for p, _ in pdus],
        )
    )
    assert [(r.event_id, r.status, r.error) for r in reply.results] == [
        (event_id, events_pb2.EVENT_STATUS_ACCEPTED, "") for _, event_id in pdus
    ]
    # Missing events filled in are news to local consumers: they are streamed, in order.
    positions = [(await events.event(event_id)).stream_position for _, event_id in pdus]
    assert 0 < positions[0] < positions[1] < positions[2]
    assert (await events.head(room_id)).extremities == [pdus[-1][1]]
    edges = await events.pool.fetchval(
        "SELECT count(*) FROM events.event_edges WHERE event_id = ANY($1::text[])",
        [event_id for _, event_id in pdus],
    )
    assert edges == 3


async def test_input_pdus_outliers(events: EventsService, remote: RemoteServer) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote)
    head = await events.head(room_id)
    bob = remote.user("bob")
    join, join_id = remote.pdu(head, "m.room.member", bob, {"membership": "join"}, bob)
    mallory = remote.user("mallory")
    bad, bad_id = remote.pdu(head, "m.room.message", mallory, {"body": "x"}, advance=False)
    reply = await events.stub.InputPdus(
        events_pb2.InputPdusRequest(
            room_id=room_id,
            room_version=head.version,
            origin=remote.name,
            kind=events_pb2.INPUT_KIND_OUTLIER,
            pdus=[encode_json(bad), encode_json(join)],
        )
    )
    results = {r.event_id: r.status for r in reply.results}
    assert results == {
        join_id: events_pb2.EVENT_STATUS_OUTLIER,
        bad_id: events_pb2.EVENT_STATUS_REJECTED,
    }
    record = await events.event(join_id)
    assert record is not None and record.status == events_pb2.EVENT_STATUS_OUTLIER
    assert record.stream_position == 0
    assert join_id not in (await events.head(room_id)).extremities


async def test_room_acl_denies_the_origin_per_pdu(
    events: EventsService, remote: RemoteServer
) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote)
    open_room, _ = await _public_room_with_remote_member(events, remote)
    await events.send(
        room_id,
        f"@admin:{events.server_name}",
        "m.room.server_acl",
        {"allow": ["*"], "deny": [remote.name.split(":")[0]], "allow_ip_literals": True},
        state_key="",
    )
    # The open room has an ACL too, one that lets the origin in.
    await events.send(
        open_room,
        f"@admin:{events.server_name}",
        "m.room.server_acl",
        {"allow": ["*"], "deny": ["evil.example"], "allow_ip_literals": True},
        state_key="",
    )
    head = await events.head(room_id)
    message, event_id = remote.pdu(head, "m.room.message", alice, {"body": "let me in"})
    welcome, welcome_id = remote.pdu(await events.head(open_room), "m.room.message", alice, {})
    response = await events.transaction(remote.name, [message, welcome])
    assert "ACL" in response["pdus"][event_id]["error"]
    assert response["pdus"][welcome_id] == {}
    assert await events.event(event_id) is None
    assert await events.event(welcome_id) is not None


async def test_edus_with_oversized_or_invalid_ids_are_ignored(
    events: EventsService, remote: RemoteServer
) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote)
    long_user = remote.user("x" * 300)
    edus = [
        {
            "edu_type": "m.typing",
            "content": {"room_id": room_id, "user_id": long_user, "typing": True},
        },
        {
            "edu_type": "m.typing",
            "content": {"room_id": room_id, "user_id": "no-sigil", "typing": True},
        },
        {
            "edu_type": "m.receipt",
            "content": {
                room_id: {"m.read": {alice: {"event_ids": ["$" + "e" * 300], "data": {"ts": 1}}}}
            },
        },
        {
            "edu_type": "m.receipt",
            "content": {room_id: {"m.read": {alice: {"event_ids": ["$ok"], "data": {"ts": 2}}}}},
        },
    ]
    await events.transaction(remote.name, [], edus)
    rows = await events.pool.fetch(
        "SELECT kind, user_id, event_id FROM events.ephemeral WHERE room_id = $1", room_id
    )
    assert [(r["kind"], r["user_id"], r["event_id"]) for r in rows] == [("receipt", alice, "$ok")]


def _transactions_by_result() -> dict[str, float]:
    """How many InputTransaction calls so far were processed and answered as retries."""
    return {
        result: REGISTRY.get_sample_value("mxfed_events_transactions_total", {"result": result})
        or 0.0
        for result in ("processed", "retry")
    }
