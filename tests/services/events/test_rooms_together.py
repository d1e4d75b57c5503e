"""The rooms of one /send are written in one database transaction (``RoomBatch.together``),
and a failure there loses no room's PDUs: each room goes again on its own.

Spec: https://spec.matrix.org/v1.19/server-server-api/#transactions (a PDU per answer)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import grpc
import pytest

from mxfed_api.events.v1 import events_pb2
from services.events import storage
from services.events.input import InputPipeline
from services.events.room_batch import RoomBatch
from tests.support.events_service import (
    EventsService,
    RemoteServer,
    _public_room_with_remote_member,
)


async def _rooms_with_pdus(
    events: EventsService, remote: RemoteServer, rooms: int, per_room: int
) -> tuple[list[str], list[dict[str, Any]], dict[str, list[str]]]:
    """``rooms`` rooms with a remote member, and ``per_room`` messages of hers in each
    (the rooms interleaved, as a sender spreads them): rooms, PDUs, event ids by room."""
    joined = [await _public_room_with_remote_member(events, remote) for _ in range(rooms)]
    heads = {room_id: await events.head(room_id) for room_id, _ in joined}
    pdus: list[dict[str, Any]] = []
    ids: dict[str, list[str]] = {room_id: [] for room_id, _ in joined}
    for n in range(per_room):
        for room_id, alice in joined:
            pdu, event_id = remote.pdu(heads[room_id], "m.room.message", alice, {"n": n})
            pdus.append(pdu)
            ids[room_id].append(event_id)
    return [room_id for room_id, _ in joined], pdus, ids


def _failing_for(room_id: str, original: Callable[..., Any]) -> Callable[..., Any]:
    async def add_live(batch: RoomBatch, *args: Any, **kwargs: Any) -> Any:
        if batch.room_id == room_id:
            raise RuntimeError("this room's batch fails")
        return await original(batch, *args, **kwargs)

    return add_live


def _rooms_written_alone(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The rooms a /send writes in a transaction of their own from now on (those of a
    /send whose rooms failed together): none when they went together."""
    alone: list[str] = []
    original = InputPipeline._input_room

    async def input_room(pipeline: InputPipeline, room_id: str, *args: Any, **kwargs: Any) -> Any:
        alone.append(room_id)
        return await original(pipeline, room_id, *args, **kwargs)

    monkeypatch.setattr(InputPipeline, "_input_room", input_room)
    return alone


async def _positions(events: EventsService, event_ids: Sequence[str]) -> list[int]:
    positions = []
    for event_id in event_ids:
        record = await events.event(event_id)
        assert record is not None, event_id
        assert record.status == events_pb2.EVENT_STATUS_ACCEPTED
        positions.append(record.stream_position)
    return positions


async def test_one_rooms_failing_batch_loses_none_of_the_other_rooms_pdus(
    events: EventsService, remote: RemoteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    rooms, pdus, ids = await _rooms_with_pdus(events, remote, 3, 2)
    bad = rooms[1]
    monkeypatch.setattr(RoomBatch, "add_live", _failing_for(bad, RoomBatch.add_live))
    with pytest.raises(grpc.aio.AioRpcError):
        await events.transaction(remote.name, pdus, txn_id="fails-in-one-room")
    # The other rooms' PDUs are stored and streamed (positions given before the error
    # went back); the failing room's are not.
    for room_id in rooms:
        if room_id != bad:
            positions = await _positions(events, ids[room_id])
            assert all(p > 0 for p in positions) and positions == sorted(positions)
            assert (await events.head(room_id)).extremities == [ids[room_id][-1]]
    for event_id in ids[bad]:
        assert await events.event(event_id) is None
    # The remote retries the transaction: the rest goes in.
    monkeypatch.undo()
    answer = await events.transaction(remote.name, pdus, txn_id="fails-in-one-room")
    assert answer == {"pdus": {e: {} for room in ids.values() for e in room}}
    assert all(p > 0 for p in await _positions(events, ids[bad]))


async def test_a_transaction_that_fails_together_is_stored_whole_room_by_room(
    events: EventsService, remote: RemoteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    rooms, pdus, ids = await _rooms_with_pdus(events, remote, 4, 3)
    original = RoomBatch.write_together
    failed: list[int] = []

    async def write_then_fail(batches: Sequence[RoomBatch]) -> None:
        await original(batches)  # everything written, then rolled back
        failed.append(len(batches))
        raise asyncpg.PostgresError("the shared transaction fails")

    monkeypatch.setattr(RoomBatch, "write_together", staticmethod(write_then_fail))
    answer = await events.transaction(remote.name, pdus)
    assert failed == [4]
    assert answer == {"pdus": {e: {} for room in ids.values() for e in room}}
    for room_id in rooms:
        positions = await _positions(events, ids[room_id])
        # Each room's events streamed in the order given, each once.
        assert all(p > 0 for p in positions) and positions == sorted(set(positions))
        assert (await events.head(room_id)).extremities == [ids[room_id][-1]]


async def test_rooms_written_together_keep_each_rooms_state_and_rejections_apart(
    events: EventsService, remote: RemoteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state change in one room, a rejected PDU in another, messages in a third: each
    room's state, extremities and answers are its own, and the next transaction builds on
    them. Both transactions are written together (had they fallen back to a transaction
    per room, the answers and heads would be the same)."""
    joined = [await _public_room_with_remote_member(events, remote) for _ in range(3)]
    (named, alice), (refused, _), (plain, _) = joined
    heads = {room_id: await events.head(room_id) for room_id, _ in joined}
    rename, rename_id = remote.pdu(
        heads[named], "m.room.member", alice, {"membership": "join", "displayname": "A"}, alice
    )
    after_rename, after_rename_id = remote.pdu(heads[named], "m.room.message", alice, {})
    power, power_id = remote.pdu(
        heads[refused], "m.room.power_levels", alice, {"users": {alice: 100}}, "", advance=False
    )
    kept, kept_id = remote.pdu(heads[refused], "m.room.message", alice, {})
    message, message_id = remote.pdu(heads[plain], "m.room.message", alice, {})
    alone = _rooms_written_alone(monkeypatch)
    answer = await events.transaction(remote.name, [rename, power, message, after_rename, kept])
    assert alone == []
    assert set(answer["pdus"]) == {rename_id, after_rename_id, power_id, kept_id, message_id}
    assert answer["pdus"][power_id]["error"].startswith("rejected")
    assert [answer["pdus"][e] for e in (rename_id, after_rename_id, kept_id, message_id)] == [
        {}
    ] * 4
    head = await events.head(named)
    assert head.state[("m.room.member", alice)] == rename_id
    assert head.extremities == [after_rename_id]
    for room_id in (refused, plain):
        other = await events.head(room_id)
        assert (
            other.state[("m.room.member", alice)] == heads[room_id].state[("m.room.member", alice)]
        )
        assert ("m.room.power_levels", "") in other.state
        assert other.state[("m.room.power_levels", "")] != power_id
    assert (await events.head(refused)).extremities == [kept_id]
    assert (await events.head(plain)).extremities == [message_id]
    # The next transaction over the same rooms builds on what this one stored.
    follow_ups = [
        remote.pdu(heads[room_id], "m.room.message", alice, {"next": True}) for room_id, _ in joined
    ]
    answer = await events.transaction(remote.name, [pdu for pdu, _ in follow_ups])
    assert answer == {"pdus": {event_id: {} for _, event_id in follow_ups}}
    assert alone == []
    for (room_id, _), (_, event_id) in zip(joined, follow_ups, strict=True):
        assert (await events.head(room_id)).extremities == [event_id]


async def test_rooms_deleted_since_their_version_was_known_are_left_out_together(
    events: EventsService, remote: RemoteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rooms whose version the pipeline knows but which are gone by the time of their
    lock (purged) have no batch: a transaction of only such rooms writes nothing together,
    without failing over to a transaction per room."""
    rooms, known, _ = await _rooms_with_pdus(events, remote, 2, 1)
    await events.transaction(remote.name, known)  # the rooms' versions are known now
    heads = [await events.head(room_id) for room_id in rooms]
    alice = remote.user("alice")
    async with events.pool.acquire() as conn:
        for room_id in rooms:
            await storage.purge_room(conn, room_id)
    pdus = [remote.pdu(head, "m.room.message", alice, {})[0] for head in heads]
    alone = _rooms_written_alone(monkeypatch)
    assert await events.transaction(remote.name, pdus) == {"pdus": {}}
    assert alone == []


async def _written_by(events: EventsService, origin: str, txn_id: str, event_ids: Any) -> set[str]:
    """The database transactions (xmin) that wrote the /send's stored response and its
    events: one when they were written together."""
    async with events.pool.acquire() as conn:
        response = await conn.fetchval(
            "SELECT xmin::text FROM events.transactions WHERE origin = $1 AND txn_id = $2",
            origin,
            txn_id,
        )
        rows = await conn.fetch(
            "SELECT xmin::text FROM events.events WHERE event_id = ANY($1::text[])",
            list(event_ids),
        )
    assert response is not None and len(rows) == len(event_ids)
    return {response, *(row["xmin"] for row in rows)}


async def test_a_sends_response_is_stored_in_its_rooms_transaction(
    events: EventsService, remote: RemoteServer
) -> None:
    """Stored if and only if its rooms are, with no statement or commit of its own after
    theirs: for one room, and for rooms written together."""
    rooms, pdus, ids = await _rooms_with_pdus(events, remote, 1, 2)
    answer = await events.transaction(remote.name, pdus, txn_id="one-room")
    assert answer == {"pdus": {e: {} for e in ids[rooms[0]]}}
    assert len(await _written_by(events, remote.name, "one-room", ids[rooms[0]])) == 1
    rooms, pdus, ids = await _rooms_with_pdus(events, remote, 3, 1)
    every = [e for room in ids.values() for e in room]
    answer = await events.transaction(remote.name, pdus, txn_id="three-rooms")
    assert answer == {"pdus": {e: {} for e in every}}
    assert len(await _written_by(events, remote.name, "three-rooms", every)) == 1
    # Retried, the stored answer comes back as it was.
    assert await events.transaction(remote.name, pdus, txn_id="three-rooms") == answer


async def test_a_response_whose_room_streams_nothing_is_stored_after_it_with_a_flush(
    events: EventsService, remote: RemoteServer
) -> None:
    """A room transaction that streams nothing (its PDU rejected) is committed without a
    flush: the response goes in a transaction of its own whose commit flushes them both."""
    room_id, alice = await _public_room_with_remote_member(events, remote)
    head = await events.head(room_id)
    power, power_id = remote.pdu(
        head, "m.room.power_levels", alice, {"users": {alice: 100}}, "", advance=False
    )
    answer = await events.transaction(remote.name, [power], txn_id="rejected")
    assert answer["pdus"][power_id]["error"].startswith("rejected")
    assert len(await _written_by(events, remote.name, "rejected", [power_id])) == 2
