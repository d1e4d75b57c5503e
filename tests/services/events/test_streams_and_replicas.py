"""StreamEvents (replay then live), EDUs, and several replicas on one database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from prometheus_client import REGISTRY

from matrix_protocol.canonical_json import encode_json
from mxfed_api.events.v1 import events_pb2
from tests.support.events_service import (
    EventsService,
    RemoteServer,
    _public_room_with_remote_member,
)


async def _take(
    stream: object, count: int, timeout: float = 45.0
) -> list[events_pb2.StreamEventsResponse]:
    # Generous: the session's shared pool may hold connections an earlier test ended, and
    # the hub backs off after each failed read before it reads again.
    items = []

    async def collect() -> None:
        async for item in stream:  # type: ignore[attr-defined]
            items.append(item)
            if len(items) == count:
                return

    await asyncio.wait_for(collect(), timeout)
    return items


async def test_stream_replays_then_follows_live(
    events: EventsService, remote: RemoteServer
) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote)
    stream = events.stub.StreamEvents(
        events_pb2.StreamEventsRequest(room_id=room_id, after_position=0, include_ephemeral=True)
    )
    replayed = await _take(stream, 7)
    assert [i.event.room_id for i in replayed] == [room_id] * 7
    positions = [i.position for i in replayed]
    assert positions == sorted(positions)
    assert sorted(replayed[-1].servers_before) == [events.server_name]  # before alice joined

    admin = f"@admin:{events.server_name}"
    sent = await events.send(room_id, admin, "m.room.message", {"body": "live"})
    edus = [
        {
            "edu_type": "m.typing",
            "content": {"room_id": room_id, "user_id": alice, "typing": True},
        },
        {
            "edu_type": "m.typing",  # not the origin's user: ignored
            "content": {"room_id": room_id, "user_id": "@x:other.example", "typing": True},
        },
        {
            "edu_type": "m.receipt",
            "content": {
                room_id: {"m.read": {alice: {"event_ids": [sent.event_id], "data": {"ts": 1}}}}
            },
        },
    ]
    await events.transaction(remote.name, [], edus)
    live = await _take(stream, 3)
    assert live[0].event.event_id == sent.event_id
    assert sorted(live[0].servers_before) == sorted([events.server_name, remote.name])
    assert live[1].typing.user_id == alice and live[1].typing.typing
    assert live[2].receipt.event_id == sent.event_id
    stream.cancel()

    local_only = events.stub.StreamEvents(
        events_pb2.StreamEventsRequest(room_id=room_id, local_senders_only=True)
    )
    items = await _take(local_only, 7)
    assert all(i.event.event_id for i in items)
    assert items[-1].event.event_id == sent.event_id
    local_only.cancel()


async def test_stream_passes_only_the_event_types_asked_for(
    events: EventsService, remote: RemoteServer
) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote)
    admin = f"@admin:{events.server_name}"
    members = events.stub.StreamEvents(
        events_pb2.StreamEventsRequest(
            room_id=room_id, after_position=0, event_types=["m.room.member"]
        )
    )
    state = (await events.head(room_id)).state
    replayed = await _take(members, 2)
    assert [i.event.event_id for i in replayed] == [
        state[("m.room.member", user)] for user in (admin, alice)
    ]
    await events.send(room_id, admin, "m.room.message", {"body": "not a member event"})
    renamed = await events.send(
        room_id, admin, "m.room.member", {"membership": "join", "displayname": "A"}, state_key=admin
    )
    [live] = await _take(members, 1)
    assert live.event.event_id == renamed.event_id  # the message was left out
    members.cancel()


async def test_typing_expires(events: EventsService, remote: RemoteServer) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote)
    typing = {
        "edu_type": "m.typing",
        "content": {"room_id": room_id, "user_id": alice, "typing": True},
    }
    await events.transaction(remote.name, [], [typing])
    await events.pool.execute(
        "UPDATE events.ephemeral SET expires_ts = 1 WHERE room_id = $1", room_id
    )
    stream = events.stub.StreamEvents(
        events_pb2.StreamEventsRequest(room_id=room_id, after_position=0, include_ephemeral=True)
    )
    items = await _take(stream, 9, timeout=15)
    assert items[-2].typing.typing and not items[-1].typing.typing
    stream.cancel()


async def test_two_replicas_keep_order_and_lose_nothing(
    events_factory: Callable[[], Awaitable[EventsService]], remote: RemoteServer
) -> None:
    first, second = await events_factory(), await events_factory()
    room_id, alice = await _public_room_with_remote_member(first, remote)
    head = await first.head(room_id)
    transactions = []
    for t in range(8):
        pdus = [remote.pdu(head, "m.room.message", alice, {"body": f"{t}.{i}"}) for i in range(6)]
        transactions.append((uuid.uuid4().hex, pdus))

    processed = _processed_transactions()
    for txn_id, pdus in transactions:
        # The same transaction reaches both replicas at once (a retry racing the original).
        a, b = await asyncio.gather(
            first.transaction(remote.name, [p for p, _ in pdus], txn_id=txn_id),
            second.transaction(remote.name, [p for p, _ in pdus], txn_id=txn_id),
        )
        assert a == b == {"pdus": {event_id: {} for _, event_id in pdus}}
    # One replica processed each, the other answered with what it stored.
    assert _processed_transactions() - processed == len(transactions)
    rows = await first.pool.fetch(
        "SELECT depth, stream_position FROM events.events"
        " WHERE room_id = $1 AND type = 'm.room.message' ORDER BY stream_position",
        room_id,
    )
    assert len(rows) == 48
    assert [r["depth"] for r in rows] == sorted(r["depth"] for r in rows)
    assert (await second.head(room_id)).extremities == [transactions[-1][1][-1][1]]


async def test_parallel_rooms_on_two_replicas(
    events_factory: Callable[[], Awaitable[EventsService]], remote: RemoteServer
) -> None:
    first, second = await events_factory(), await events_factory()
    rooms = [await _public_room_with_remote_member(first, remote) for _ in range(3)]
    heads = [await first.head(room_id) for room_id, _ in rooms]
    batches = []
    for round_ in range(4):
        pdus = []
        for head, (_, alice) in zip(heads, rooms, strict=True):
            pdus += [
                remote.pdu(head, "m.room.message", alice, {"n": round_ * 10 + i})[0]
                for i in range(5)
            ]
        batches.append(pdus)
    replicas = [first, second]
    for index, pdus in enumerate(batches):
        response = await replicas[index % 2].transaction(remote.name, pdus)
        assert all(answer == {} for answer in response["pdus"].values())
    for head in heads:
        info = await second.head(head.room_id)
        assert info.extremities == head.extremities


async def test_replica_killed_mid_batch_loses_nothing(
    events_factory: Callable[[], Awaitable[EventsService]], remote: RemoteServer
) -> None:
    doomed, survivor = await events_factory(), await events_factory()
    room_id, alice = await _public_room_with_remote_member(survivor, remote)
    head = await survivor.head(room_id)
    pdus = [remote.pdu(head, "m.room.message", alice, {"body": str(i)}) for i in range(50)]
    txn_id = uuid.uuid4().hex
    request = events_pb2.InputTransactionRequest(
        origin=remote.name, txn_id=txn_id, pdus=[encode_json(p) for p, _ in pdus]
    )
    call = doomed.stub.InputTransaction(request)
    await asyncio.sleep(0.05)
    await doomed.server.stop(grace=None)  # the replica goes away mid-transaction
    call.cancel()
    response = await survivor.transaction(remote.name, [p for p, _ in pdus], txn_id=txn_id)
    assert response == {"pdus": {event_id: {} for _, event_id in pdus}}
    count = await survivor.pool.fetchval(
        "SELECT count(*) FROM events.events WHERE room_id = $1 AND type = 'm.room.message'",
        room_id,
    )
    assert count == 50


def _processed_transactions() -> float:
    """InputTransaction calls processed so far by the replicas of this process (both
    replicas of a test count in the same registry); a retry answered from the stored
    answer is not counted."""
    return (
        REGISTRY.get_sample_value("mxfed_events_transactions_total", {"result": "processed"}) or 0.0
    )
