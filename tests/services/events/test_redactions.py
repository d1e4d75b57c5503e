"""Redactions in either order
(https://spec.matrix.org/v1.19/rooms/v3/#handling-redactions).

A redaction is applied once both events are held and the redactor either had
the ``redact`` power level in the state before the redaction or is of the
target's server; one whose target is not held yet waits for it, whatever way
the target arrives (/send, a local event, outlier, history, backfill). A
redaction failing the rule is stored but never applied.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from matrix_protocol.auth_events import select_auth_event_ids
from matrix_protocol.canonical_json import decode_json
from matrix_protocol.events import Event
from matrix_protocol.room_versions import room_version
from matrix_protocol.signing import sign_event
from mxfed_api.events.v1 import events_pb2
from tests.support.events_service import EventsService, RemoteRoom, RemoteServer, RoomHead
from tests.support.key_servers import FakeKeyServer

_TS = itertools.count(int(time.time() * 1000))


def _redaction(
    remote: RemoteServer,
    head: RoomHead,
    sender: str,
    target: str,
    *,
    prev: list[str] | None = None,
    advance: bool = True,
) -> tuple[dict[str, Any], str]:
    """A signed m.room.redaction: ``redacts`` in content (v11+) or at the top level."""
    version = room_version(head.version)
    content: dict[str, Any] = {"reason": "spam"}
    if version.redacts_in_content:
        content["redacts"] = target
    pdu: dict[str, Any] = {
        "room_id": head.room_id,
        "type": "m.room.redaction",
        "sender": sender,
        "content": content,
        "depth": head.max_depth + 1,
        "origin_server_ts": next(_TS),
        "prev_events": list(head.extremities if prev is None else prev),
        "auth_events": select_auth_event_ids(
            "m.room.redaction", sender, None, content, version, head.state
        ),
    }
    if not version.redacts_in_content:
        pdu["redacts"] = target
    signed = sign_event(
        pdu, remote.key_server.signing_key, remote.name, remote.key_server.key_id, version
    )
    event_id = Event.from_pdu(signed, version).event_id
    if advance:
        head.extremities = [event_id]
        head.max_depth = pdu["depth"]
    return signed, event_id


async def _public_room_with_remote_member(
    events: EventsService, remote: RemoteServer, version: str
) -> tuple[str, str]:
    """A public room of ours (admin PL 100) that ``remote``'s alice (PL 0) has joined."""
    room_id = await events.create_room(version, preset="public_chat")
    alice = remote.user("alice")
    await _join(events, remote, room_id, alice)
    return room_id, alice


async def _join(events: EventsService, remote: RemoteServer, room_id: str, user: str) -> None:
    head = await events.head(room_id)
    join, join_id = remote.pdu(head, "m.room.member", user, {"membership": "join"}, user)
    assert await events.transaction(remote.name, [join]) == {"pdus": {join_id: {}}}


async def _content(events: EventsService, event_id: str, as_server: str = "") -> dict[str, Any]:
    record = await events.event(event_id, as_server=as_server)
    assert record is not None
    content = decode_json(record.pdu_json)["content"]
    assert record.redacted is (content == {}), (record.redacted, content)
    return content


async def _waiting(events: EventsService, room_id: str) -> list[str]:
    async with events.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT target_id FROM events.waiting_redactions WHERE room_id = $1", room_id
        )
    return [row["target_id"] for row in rows]


async def _streamed(
    events: EventsService, room_id: str, event_id: str
) -> events_pb2.StreamEventsResponse:
    """The stream item of ``event_id`` (replayed from the room's start)."""
    stream = events.stub.StreamEvents(
        events_pb2.StreamEventsRequest(room_id=room_id, after_position=0)
    )

    async def find() -> events_pb2.StreamEventsResponse:
        async for item in stream:
            if item.event.event_id == event_id:
                return item
        raise AssertionError("stream ended")

    try:
        return await asyncio.wait_for(find(), 10)
    finally:
        stream.cancel()


async def _timeline_content(events: EventsService, room_id: str, event_id: str) -> dict[str, Any]:
    page = await events.stub.QueryTimeline(
        events_pb2.QueryTimelineRequest(room_id=room_id, backwards=True, limit=100)
    )
    (record,) = [r for r in page.events if r.event_id == event_id]
    return decode_json(record.pdu_json)["content"]


@pytest.mark.parametrize("version", ["10", "12"])
async def test_redaction_after_target_by_the_same_server(
    events: EventsService, remote: RemoteServer, version: str
) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote, version)
    bob = remote.user("bob")  # no redact power, but alice's server
    await _join(events, remote, room_id, bob)
    head = await events.head(room_id)
    message, message_id = remote.pdu(head, "m.room.message", alice, {"body": "oops"})
    assert await events.transaction(remote.name, [message]) == {"pdus": {message_id: {}}}
    assert await _content(events, message_id) == {"body": "oops"}
    redaction, redaction_id = _redaction(remote, head, bob, message_id)
    assert await events.transaction(remote.name, [redaction]) == {"pdus": {redaction_id: {}}}
    assert await _content(events, message_id) == {}
    assert await _content(events, message_id, as_server=remote.name) == {}
    assert await _timeline_content(events, room_id, message_id) == {}
    item = await _streamed(events, room_id, redaction_id)
    assert Event.from_pdu(decode_json(item.event.pdu_json), room_version(version)).redacts == (
        message_id
    )
    assert await _waiting(events, room_id) == []


@pytest.mark.parametrize("version", ["10", "12"])
async def test_redaction_before_target_with_the_redact_level(
    events: EventsService, remote: RemoteServer, version: str
) -> None:
    """A local moderator redacts a remote event not held yet; it arrives later."""
    room_id, alice = await _public_room_with_remote_member(events, remote, version)
    head = await events.head(room_id)
    message, message_id = remote.pdu(head, "m.room.message", alice, {"body": "x"}, advance=False)
    admin = f"@admin:{events.server_name}"
    redaction = await events.send(room_id, admin, "m.room.redaction", {}, redacts=message_id)
    record = await events.event(redaction.event_id)
    assert record is not None and record.status == events_pb2.EVENT_STATUS_ACCEPTED
    assert await _waiting(events, room_id) == [message_id]

    assert await events.transaction(remote.name, [message]) == {"pdus": {message_id: {}}}
    record = await events.event(message_id)
    assert record is not None and record.status == events_pb2.EVENT_STATUS_ACCEPTED
    assert await _content(events, message_id) == {}
    assert await _content(events, message_id, as_server=remote.name) == {}
    assert await _timeline_content(events, room_id, message_id) == {}
    item = await _streamed(events, room_id, message_id)
    assert item.event.redacted and decode_json(item.event.pdu_json)["content"] == {}
    assert await _waiting(events, room_id) == []


@pytest.mark.parametrize("version", ["10", "12"])
async def test_redaction_before_target_by_the_same_server(
    events: EventsService, remote: RemoteServer, version: str
) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote, version)
    bob = remote.user("bob")
    await _join(events, remote, room_id, bob)
    head = await events.head(room_id)
    message, message_id = remote.pdu(head, "m.room.message", alice, {"body": "x"}, advance=False)
    redaction, redaction_id = _redaction(remote, head, bob, message_id)
    # Both in one transaction, the redaction first; then each in its own.
    response = await events.transaction(remote.name, [redaction, message])
    assert response == {"pdus": {redaction_id: {}, message_id: {}}}
    assert await _content(events, message_id) == {}

    head = await events.head(room_id)
    later, later_id = remote.pdu(head, "m.room.message", alice, {"body": "y"}, advance=False)
    redaction, redaction_id = _redaction(remote, head, bob, later_id)
    assert await events.transaction(remote.name, [redaction]) == {"pdus": {redaction_id: {}}}
    assert await _waiting(events, room_id) == [later_id]
    assert await events.transaction(remote.name, [later]) == {"pdus": {later_id: {}}}
    assert await _content(events, later_id) == {}
    assert await _waiting(events, room_id) == []


@pytest.mark.parametrize("version", ["10", "12"])
async def test_redaction_without_power_from_another_server_is_not_applied(
    events: EventsService,
    remote: RemoteServer,
    key_server_factory: Callable[..., Awaitable[FakeKeyServer]],
    version: str,
) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote, version)
    other = RemoteServer(await key_server_factory())
    carol = other.user("carol")
    await _join(events, other, room_id, carol)

    # After the target.
    head = await events.head(room_id)
    held, held_id = remote.pdu(head, "m.room.message", alice, {"body": "held"})
    assert await events.transaction(remote.name, [held]) == {"pdus": {held_id: {}}}
    redaction, redaction_id = _redaction(other, head, carol, held_id)
    assert await events.transaction(other.name, [redaction]) == {"pdus": {redaction_id: {}}}
    record = await events.event(redaction_id)
    assert record is not None and record.status == events_pb2.EVENT_STATUS_ACCEPTED
    assert await _content(events, held_id) == {"body": "held"}

    # Before the target.
    head = await events.head(room_id)
    late, late_id = remote.pdu(head, "m.room.message", alice, {"body": "late"}, advance=False)
    redaction, redaction_id = _redaction(other, head, carol, late_id)
    assert await events.transaction(other.name, [redaction]) == {"pdus": {redaction_id: {}}}
    assert await events.transaction(remote.name, [late]) == {"pdus": {late_id: {}}}
    assert await _content(events, late_id) == {"body": "late"}
    assert await _content(events, late_id, as_server=other.name) == {"body": "late"}
    item = await _streamed(events, room_id, late_id)
    assert not item.event.redacted
    assert await _waiting(events, room_id) == []  # decided once: never applied later
    admin = f"@admin:{events.server_name}"
    await events.send(room_id, admin, "m.room.message", {"body": "next"})
    assert await _content(events, late_id) == {"body": "late"}


class _RemoteRoom(RemoteRoom):
    """A remote room whose bob also redacts."""

    def redact(self, target: str) -> str:
        return self.take(*_redaction(self.remote, self.head, self.bob, target))


@pytest.mark.parametrize("version", ["10", "11"])
async def test_waiting_redactions_apply_to_outliers_history_and_backfill(
    events: EventsService, remote: RemoteServer, version: str
) -> None:
    """Joined late: the redactions are the newest events, their targets come afterwards."""
    room = _RemoteRoom(remote, version)
    room_id = room.head.room_id
    topic = room.add("m.room.topic", {"topic": "secret topic"}, "")
    messages = [room.add("m.room.message", {"body": f"m{i}"}) for i in range(4)]
    by_outlier, by_backfill, by_history = messages[0], messages[1], messages[2]
    redactions = [room.redact(t) for t in (topic, by_outlier, by_backfill, by_history)]
    state = room.state_ids()

    # The state (the topic among it) as outliers, then the first redaction
    # with the state before it: the topic is held, so it is redacted at once.
    result = await room.input(events, events_pb2.INPUT_KIND_OUTLIER, state)
    assert {s for s, _ in result.values()} == {events_pb2.EVENT_STATUS_OUTLIER}
    first = redactions[0]
    before_first = {first: room.state_before(first)}
    result = await room.input(events, events_pb2.INPUT_KIND_GAP_FILL, [first], before_first)
    assert result == {first: (events_pb2.EVENT_STATUS_ACCEPTED, "")}
    assert await _content(events, topic) == {}
    current = await events.stub.QueryCurrentState(
        events_pb2.QueryCurrentStateRequest(room_id=room_id)
    )
    (topic_record,) = [r for r in current.events if r.event_id == topic]
    assert topic_record.redacted and decode_json(topic_record.pdu_json)["content"] == {}

    # The other redactions arrive as history; their targets are not held.
    rest = redactions[1:]
    result = await room.input(events, events_pb2.INPUT_KIND_GAP_FILL, rest)
    assert {s for s, _ in result.values()} == {events_pb2.EVENT_STATUS_ACCEPTED}
    assert sorted(await _waiting(events, room_id)) == sorted(messages[:3])

    # A target as an outlier (e.g. in some auth chain or fetched alone).
    result = await room.input(events, events_pb2.INPUT_KIND_OUTLIER, [by_outlier])
    assert result == {by_outlier: (events_pb2.EVENT_STATUS_OUTLIER, "")}
    assert await _content(events, by_outlier) == {}

    # History (missing events) placed with the state before it.
    result = await room.input(
        events,
        events_pb2.INPUT_KIND_GAP_FILL,
        [by_history],
        {by_history: room.state_before(by_history)},
    )
    assert result == {by_history: (events_pb2.EVENT_STATUS_ACCEPTED, "")}
    assert await _content(events, by_history) == {}

    # Backfill of the rest: the outlier is promoted and stays redacted.
    older = [e for e in room.order[: room.order.index(messages[-1]) + 1] if e not in state]
    older = [e for e in older if e != by_history]
    result = await room.input(
        events, events_pb2.INPUT_KIND_BACKFILL, older, {older[0]: room.state_before(older[0])}
    )
    assert {s for s, _ in result.values()} == {events_pb2.EVENT_STATUS_ACCEPTED}, result
    for target in (by_outlier, by_backfill, by_history):
        assert await _content(events, target) == {}
        record = await events.event(target)
        assert record is not None and record.status == events_pb2.EVENT_STATUS_ACCEPTED
    assert await _content(events, messages[3]) == {"body": "m3"}
    assert await _waiting(events, room_id) == []
