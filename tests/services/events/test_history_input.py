"""History input (InputPdus): outliers without prevs, promotion, BACKFILL, state_before.

A remote server's room is "joined" the way a real join leaves it: the state
as outliers, then the latest event with the state before it (``state_before``)
and its prev missing. Backfill then fills in older history oldest first.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
import pytest

from matrix_protocol.canonical_json import encode_json
from mxfed_api.events.v1 import events_pb2
from services.events.history import storage as history_storage
from tests.support.events_service import EventsService, RemoteRoom, RemoteServer
from tests.support.service_errors import described


async def _joined(events: EventsService, remote: RemoteServer, messages: int) -> RemoteRoom:
    """A remote room with ``messages`` messages; mxfed holds its state and the latest only."""
    room = RemoteRoom(remote)
    for i in range(messages):
        room.add("m.room.message", {"body": f"m{i}"})
    outliers = await room.input(events, events_pb2.INPUT_KIND_OUTLIER, room.state_ids())
    assert {s for s, _ in outliers.values()} == {events_pb2.EVENT_STATUS_OUTLIER}
    latest = room.order[-1]
    result = await room.input(
        events, events_pb2.INPUT_KIND_GAP_FILL, [latest], {latest: room.state_before(latest)}
    )
    assert result == {latest: (events_pb2.EVENT_STATUS_ACCEPTED, "")}
    return room


async def _backward_extremities(events: EventsService, room_id: str) -> list[str]:
    async with events.pool.acquire() as conn:
        return [e.event_id for e in await history_storage.backward_extremities(conn, room_id)]


async def _timeline(events: EventsService, room_id: str, limit: int) -> list[str]:
    """Every event id paging backwards ``limit`` at a time (newest first)."""
    found: list[str] = []
    token = ""
    while True:
        page = await events.stub.QueryTimeline(
            events_pb2.QueryTimelineRequest(
                room_id=room_id, from_token=token, backwards=True, limit=limit
            )
        )
        found.extend(r.event_id for r in page.events)
        if not page.next_token:
            return found
        token = page.next_token


async def test_outliers_are_stored_without_their_prev_events(
    events: EventsService, remote: RemoteServer
) -> None:
    room = RemoteRoom(remote)
    room.add("m.room.message", {"body": "x"})
    power_levels = room.order[2]
    # Only the power levels, its auth events first: its prev (bob's join) is not input.
    create, join = room.order[0], room.order[1]
    result = await room.input(events, events_pb2.INPUT_KIND_OUTLIER, [create, power_levels])
    assert result[create][0] == events_pb2.EVENT_STATUS_OUTLIER
    assert result[power_levels] == (events_pb2.EVENT_STATUS_UNSPECIFIED, result[power_levels][1])
    assert "missing auth_events" in result[power_levels][1]  # cites bob's join
    result = await room.input(events, events_pb2.INPUT_KIND_OUTLIER, [power_levels, join])
    assert result == {
        join: (events_pb2.EVENT_STATUS_OUTLIER, ""),
        power_levels: (events_pb2.EVENT_STATUS_OUTLIER, ""),
    }
    info = await events.stub.QueryRoomInfo(
        events_pb2.QueryRoomInfoRequest(room_id=room.head.room_id)
    )
    assert list(info.forward_extremities) == []
    record = await events.event(power_levels)
    assert record is not None and record.stream_position == 0


async def test_an_outlier_failing_its_own_auth_events_is_rejected(
    events: EventsService, remote: RemoteServer
) -> None:
    room = RemoteRoom(remote)
    mallory = remote.user("mallory")
    pdu, bad_id = remote.pdu(room.head, "m.room.topic", mallory, {"topic": "x"}, "")
    room.pdus[bad_id] = pdu
    result = await room.input(events, events_pb2.INPUT_KIND_OUTLIER, [*room.order[:4], bad_id])
    assert result[bad_id][0] == events_pb2.EVENT_STATUS_REJECTED


async def test_state_before_places_an_event_whose_prevs_are_missing(
    events: EventsService, remote: RemoteServer
) -> None:
    room = await _joined(events, remote, 5)
    latest, prev = room.order[-1], room.order[-2]
    record = await events.event(latest)
    assert record is not None and record.status == events_pb2.EVENT_STATUS_ACCEPTED
    info = await events.stub.QueryRoomInfo(
        events_pb2.QueryRoomInfoRequest(room_id=room.head.room_id)
    )
    assert list(info.forward_extremities) == [latest]
    head = await events.head(room.head.room_id)
    assert set(head.state.values()) == set(room.state_ids())
    at = await events.stub.QueryStateAtEvent(
        events_pb2.QueryStateAtEventRequest(room_id=room.head.room_id, event_id=latest)
    )
    assert set(at.state_event_ids) == set(room.state_before(latest))
    assert await _backward_extremities(events, room.head.room_id) == [prev]


async def test_without_state_before_missing_prevs_are_refused(
    events: EventsService, remote: RemoteServer
) -> None:
    room = await _joined(events, remote, 5)
    older = room.order[-3]
    result = await room.input(events, events_pb2.INPUT_KIND_BACKFILL, [older])
    assert result[older][0] == events_pb2.EVENT_STATUS_UNSPECIFIED
    assert result[older][1].startswith("missing prev_events")


async def test_state_before_is_used_for_the_auth_checks(
    events: EventsService, remote: RemoteServer
) -> None:
    room = await _joined(events, remote, 3)
    carol = remote.user("carol")
    pdu, event_id = remote.pdu(
        room.head, "m.room.message", carol, {"body": "no member"}, prev=[room.order[-2]]
    )
    room.pdus[event_id] = pdu
    result = await room.input(
        events, events_pb2.INPUT_KIND_BACKFILL, [event_id], {event_id: room.state_ids()}
    )
    assert (
        result[event_id][0] == events_pb2.EVENT_STATUS_REJECTED
    )  # carol is not joined in that state
    unknown = await room.input(
        events,
        events_pb2.INPUT_KIND_BACKFILL,
        [room.order[-2]],
        {room.order[-2]: ["$nowhere"]},
    )
    assert "unknown state events" in unknown[room.order[-2]][1]


async def test_backfill_pages_down_to_the_room_start_and_promotes_outliers(
    events: EventsService, remote: RemoteServer
) -> None:
    room = await _joined(events, remote, 30)
    room_id = room.head.room_id
    before = await events.head(room_id)
    # Two backfill responses, each deepest first as servers send them; the
    # pipeline sorts them by depth. The first one's oldest event has its prev
    # missing: it gets the state before it.
    first = list(reversed(room.order[14:33]))
    edge = room.order[14]
    result = await room.input(
        events, events_pb2.INPUT_KIND_BACKFILL, first, {edge: room.state_before(edge)}
    )
    assert {s for s, _ in result.values()} == {events_pb2.EVENT_STATUS_ACCEPTED}
    assert await _backward_extremities(events, room_id) == [room.order[13]]
    second = list(reversed(room.order[:14]))
    result = await room.input(events, events_pb2.INPUT_KIND_BACKFILL, second)
    assert {s for s, _ in result.values()} == {
        events_pb2.EVENT_STATUS_ACCEPTED
    }  # outliers promoted
    assert await _backward_extremities(events, room_id) == []

    after = await events.head(room_id)
    assert after.extremities == before.extremities == [room.order[-1]]
    assert after.state == before.state
    for event_id in room.order:
        record = await events.event(event_id)
        assert record is not None and record.status == events_pb2.EVENT_STATUS_ACCEPTED, event_id
        if event_id != room.order[-1]:
            assert record.stream_position == 0
    promoted = await events.stub.QueryStateAtEvent(
        events_pb2.QueryStateAtEventRequest(room_id=room_id, event_id=room.order[3])
    )
    assert set(promoted.state_event_ids) == set(room.order[:3])

    assert await _timeline(events, room_id, 7) == list(reversed(room.order))
    page = await events.stub.QueryTimeline(
        events_pb2.QueryTimelineRequest(room_id=room_id, backwards=True, limit=100)
    )
    assert page.reached_room_start and not page.next_token and page.resume_token


async def test_resume_token_continues_after_backfill(
    events: EventsService, remote: RemoteServer
) -> None:
    room = await _joined(events, remote, 6)
    room_id = room.head.room_id
    page = await events.stub.QueryTimeline(
        events_pb2.QueryTimelineRequest(room_id=room_id, backwards=True, limit=10)
    )
    assert [r.event_id for r in page.events] == [room.order[-1]]
    assert not page.next_token and not page.reached_room_start
    await room.input(events, events_pb2.INPUT_KIND_BACKFILL, list(reversed(room.order[:-1])))
    more = await events.stub.QueryTimeline(
        events_pb2.QueryTimelineRequest(
            room_id=room_id, from_token=page.resume_token, backwards=True, limit=10
        )
    )
    assert [r.event_id for r in more.events] == list(reversed(room.order[:-1]))
    assert more.reached_room_start


async def test_history_with_state_before_fills_a_gap_and_moves_the_head(
    events: EventsService, remote: RemoteServer
) -> None:
    room = await _joined(events, remote, 2)
    room_id = room.head.room_id
    newer = [room.add("m.room.message", {"body": f"n{i}"}) for i in range(4)]
    # n0 is missing; n1 (prev n0) comes with the state before it, n2 and n3 on it.
    result = await room.input(
        events,
        events_pb2.INPUT_KIND_GAP_FILL,
        newer[1:],
        {newer[1]: room.state_before(newer[1])},
    )
    assert {s for s, _ in result.values()} == {events_pb2.EVENT_STATUS_ACCEPTED}
    head = await events.head(room_id)
    assert set(head.extremities) == {room.order[5], newer[3]}
    assert newer[0] in await _backward_extremities(events, room_id)


async def test_fetched_history_may_exceed_20_prev_events_but_not_the_size_limit(
    events: EventsService, remote: RemoteServer
) -> None:
    """Backfilled events are not refused for the 20/10 limits.

    Spec: https://spec.matrix.org/v1.19/client-server-api/#size-limits
    """
    room = await _joined(events, remote, 2)
    latest = room.order[-1]
    prevs = [latest] + [f"$missing{i}" for i in range(24)]
    wide, wide_id = remote.pdu(room.head, "m.room.message", room.bob, {"body": "x"}, prev=prevs)
    big, big_id = remote.pdu(room.head, "m.room.message", room.bob, {"body": "p" * 65_536})
    room.pdus.update({wide_id: wide, big_id: big})
    state = {wide_id: room.state_before(latest)}
    result = await room.input(events, events_pb2.INPUT_KIND_GAP_FILL, [wide_id, big_id], state)
    assert result[wide_id] == (events_pb2.EVENT_STATUS_ACCEPTED, ""), result
    assert result[big_id][0] == events_pb2.EVENT_STATUS_UNSPECIFIED
    assert "larger than 65536 bytes" in result[big_id][1]
    assert await events.event(big_id) is None


async def _refusal(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), described(caught.value)


async def test_input_without_a_kind_or_with_an_unknown_version_is_refused(
    events: EventsService, remote: RemoteServer
) -> None:
    """An unset kind is an error (never taken as NEW); each refusal has its own errcode."""
    room = RemoteRoom(remote)
    create = encode_json(room.pdus[room.order[0]])
    code, details = await _refusal(
        events.stub.InputPdus(
            events_pb2.InputPdusRequest(room_id=room.head.room_id, room_version="10", pdus=[create])
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("M_INVALID_PARAM") and "kind" in details
    assert await events.event(room.order[0]) is None
    code, details = await _refusal(
        events.stub.InputPdus(
            events_pb2.InputPdusRequest(
                room_id=room.head.room_id,
                room_version="99",
                kind=events_pb2.INPUT_KIND_OUTLIER,
                pdus=[create],
            )
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("M_UNSUPPORTED_ROOM_VERSION")
    code, details = await _refusal(
        events.stub.QueryTimeline(
            events_pb2.QueryTimelineRequest(room_id=room.head.room_id, from_token="%%%")
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("M_INVALID_PARAM") and "pagination token" in details
