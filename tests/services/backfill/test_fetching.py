"""Fetching missing events and history from a remote server, against a whole running mxfed.

The FakeHomeserver plays a server that holds more of the room than mxfed:
it serves ``/get_missing_events``, ``/backfill``, ``/state_ids``, ``/state``
and ``/event`` from the PDUs a test gives it, and records what it is asked.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
import pytest
from aiohttp import web

from matrix_protocol.auth_events import select_auth_event_ids
from matrix_protocol.events import Event
from matrix_protocol.room_versions import room_version
from matrix_protocol.signing import generate_signing_key, sign_event
from mxfed_api.backfill.v1 import backfill_pb2, backfill_pb2_grpc
from mxfed_api.events.v1 import events_pb2, history_pb2, history_pb2_grpc
from tests.support.databases import create_database, drop_database
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.mxfed_process import MxfedProcess
from tests.support.scene import Room, Scene

pytestmark = pytest.mark.whole_stack

V1 = "/_matrix/federation/v1"


@dataclass
class HostedRoom:
    """What the remote serves: PDUs by id, state before events, extra PDUs to slip in."""

    pdus: dict[str, dict[str, Any]] = field(default_factory=dict)
    state_before: dict[str, list[str]] = field(default_factory=dict)
    extra_missing_events: list[dict[str, Any]] = field(default_factory=list)
    extra_backfill: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    serve_missing_events: bool = True

    def walk(self, starts: list[str], stop: set[str], limit: int, include: bool) -> list[str]:
        """Depth-ordered walk of prev_events (deepest first)."""
        frontier = list(starts) if include else [p for s in starts for p in self._prevs(s)]
        seen, out = set(frontier), []
        while frontier and len(out) < limit:
            frontier.sort(key=lambda e: self.pdus[e]["depth"] if e in self.pdus else -1)
            event_id = frontier.pop()
            if event_id not in self.pdus or event_id in stop:
                continue
            out.append(event_id)
            for prev in self._prevs(event_id):
                if prev not in seen:
                    seen.add(prev)
                    frontier.append(prev)
        return out

    def auth_chain(self, event_id: str) -> set[str]:
        chain: set[str] = set()
        todo = list(self.pdus[event_id]["auth_events"]) if event_id in self.pdus else []
        while todo:
            auth_id = todo.pop()
            if auth_id not in chain and auth_id in self.pdus:
                chain.add(auth_id)
                todo.extend(self.pdus[auth_id]["auth_events"])
        return chain

    def _prevs(self, event_id: str) -> list[str]:
        return list(self.pdus[event_id]["prev_events"]) if event_id in self.pdus else []


def add_history_routes(remote: FakeHomeserver, hosted: HostedRoom) -> None:
    async def missing_events(request: web.Request) -> web.Response:
        body = await request.json()
        hosted.requests.append(("get_missing_events", request.match_info["room_id"], body))
        if not hosted.serve_missing_events:
            return web.json_response({"events": []})
        ids = hosted.walk(
            body["latest_events"], set(body["earliest_events"]), body.get("limit", 10), False
        )
        pdus = [hosted.pdus[e] for e in reversed(ids)] + hosted.extra_missing_events
        return web.json_response({"events": pdus})

    async def backfill(request: web.Request) -> web.Response:
        query = request.rel_url.query
        hosted.requests.append(("backfill", request.match_info["room_id"], dict(query)))
        ids = hosted.walk(query.getall("v"), set(), int(query["limit"]), True)
        pdus = [hosted.pdus[e] for e in ids] + hosted.extra_backfill
        return web.json_response(
            {"origin": remote.server_name, "origin_server_ts": 0, "pdus": pdus}
        )

    async def state_ids(request: web.Request) -> web.Response:
        event_id = request.rel_url.query["event_id"]
        hosted.requests.append(("state_ids", request.match_info["room_id"], event_id))
        if event_id not in hosted.state_before:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no"}, status=404)
        ids = hosted.state_before[event_id]
        chain = {a for e in ids for a in hosted.auth_chain(e)} - set(ids)
        return web.json_response({"pdu_ids": ids, "auth_chain_ids": sorted(chain)})

    async def state(request: web.Request) -> web.Response:
        event_id = request.rel_url.query["event_id"]
        hosted.requests.append(("state", request.match_info["room_id"], event_id))
        ids = hosted.state_before[event_id]
        chain = {a for e in ids for a in hosted.auth_chain(e)} - set(ids)
        return web.json_response(
            {
                "pdus": [hosted.pdus[e] for e in ids],
                "auth_chain": [hosted.pdus[e] for e in sorted(chain) if e in hosted.pdus],
            }
        )

    async def event(request: web.Request) -> web.Response:
        event_id = request.match_info["event_id"]
        hosted.requests.append(("event", "", event_id))
        if event_id not in hosted.pdus:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no"}, status=404)
        return web.json_response(
            {"origin": remote.server_name, "origin_server_ts": 0, "pdus": [hosted.pdus[event_id]]}
        )

    remote.route("POST", V1 + "/get_missing_events/{room_id}", missing_events)
    remote.route("GET", V1 + "/backfill/{room_id}", backfill)
    remote.route("GET", V1 + "/state_ids/{room_id}", state_ids)
    remote.route("GET", V1 + "/state/{room_id}", state)
    remote.route("GET", V1 + "/event/{event_id}", event)


@dataclass
class Stage:
    scene: Scene
    hosted: HostedRoom
    backfill: backfill_pb2_grpc.BackfillStub
    channel: grpc.aio.Channel


@pytest.fixture(scope="module")
async def stage(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stage]:
    database_url = await create_database("mxfed_backfill_test")
    hosted = HostedRoom()
    remote = FakeHomeserver()
    add_history_routes(remote, hosted)
    await remote.start()
    mxfed = MxfedProcess(tmp_path_factory.mktemp("backfill-fetching") / "mxfed", database_url)
    try:
        await asyncio.to_thread(mxfed.start)
    except BaseException:
        await remote.stop()
        await drop_database(database_url)
        raise
    scene = Scene(mxfed, remote)
    channel = mxfed.channel("backfill")
    yield Stage(scene, hosted, backfill_pb2_grpc.BackfillStub(channel), channel)
    await channel.close()
    await scene.close()
    await asyncio.to_thread(mxfed.stop)
    await remote.stop()
    await drop_database(database_url)


Step = tuple[str, str, dict[str, Any], str | None]  # sender, type, content, state_key


async def hosted_branch(stage: Stage, room: Room, steps: list[Step]) -> list[tuple[str, dict]]:
    """Events built one after another on mxfed's current head, held by the remote only."""
    scene = stage.scene
    info = await scene.events.QueryRoomInfo(
        events_pb2.QueryRoomInfoRequest(room_id=room.room_id), timeout=10
    )
    state = await scene.current_state(room.room_id)
    for event_id in state.values():
        record = await scene.record(event_id)
        stage.hosted.pdus[event_id] = orjson.loads(record.pdu_json)
    prevs, depth = list(info.forward_extremities), info.max_depth
    built = []
    for sender, event_type, content, state_key in steps:
        depth += 1
        event_id, pdu = await scene.build(
            room, sender, event_type, content, state_key, prev_events=prevs, state=state,
            depth=depth,
        )  # fmt: skip
        stage.hosted.pdus[event_id] = pdu
        stage.hosted.state_before[event_id] = list(state.values())
        if state_key is not None:
            state = {**state, (event_type, state_key): event_id}
        built.append((event_id, pdu))
        prevs = [event_id]
    return built


async def branch(
    stage: Stage, room: Room, count: int, *, state_event_at: int | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """``count`` events by @bob built on mxfed's head that mxfed has not seen (hosted
    remotely): messages, but his join again (another display name) at ``state_event_at``."""
    bob = stage.scene.remote.user("bob")
    steps: list[Step] = [
        (bob, "m.room.member", {"membership": "join", "displayname": f"Bob {i}"}, bob)
        if i == state_event_at
        else (bob, "m.room.message", {"body": f"b{i}"}, None)
        for i in range(count)
    ]
    return await hosted_branch(stage, room, steps)


def forge(remote: FakeHomeserver, pdu: dict[str, Any], room: Room) -> tuple[str, dict]:
    """A copy with other content, signed with a key that is not the remote's."""
    forged = {k: v for k, v in pdu.items() if k not in ("signatures", "hashes", "unsigned")}
    forged["content"] = {"body": "forged"}
    signed = sign_event(
        forged, generate_signing_key(), remote.server_name, remote.key_id, room.version
    )
    return Event.from_pdu(signed, room.version).event_id, signed


# get_missing_events ------------------------------------------------------------------------


async def test_a_small_gap_is_filled_and_the_event_is_then_accepted(stage: Stage) -> None:
    scene, hosted = stage.scene, stage.hosted
    room = await scene.joined_room()
    info = await scene.events.QueryRoomInfo(
        events_pb2.QueryRoomInfoRequest(room_id=room.room_id), timeout=10
    )
    events = await branch(stage, room, 6)
    gap, (pushed_id, pushed) = events[:5], events[5]
    forged_id, forged = forge(scene.remote, gap[2][1], room)
    hosted.extra_missing_events = [forged]
    hosted.requests.clear()
    try:
        reply = await stage.backfill.PerformFetchMissingEvents(
            backfill_pb2.PerformFetchMissingEventsRequest(
                room_id=room.room_id,
                origin=scene.remote.server_name,
                event_json=orjson.dumps(pushed),
            ),
            timeout=60,
        )
    finally:
        hosted.extra_missing_events = []
    assert reply.events_fetched == 5
    assert list(reply.still_missing) == []
    ((kind, room_id, body),) = hosted.requests
    assert (kind, room_id) == ("get_missing_events", room.room_id)
    assert body["latest_events"] == [pushed_id]
    assert set(info.forward_extremities) <= set(body["earliest_events"])
    assert body["limit"] == 10
    assert body["min_depth"] == info.min_depth
    for event_id, _ in gap:
        record = await scene.record(event_id)
        assert record is not None and record.status == events_pb2.EVENT_STATUS_ACCEPTED
    assert await scene.record(forged_id) is None  # bad signature: dropped

    response = await scene.send([pushed])
    assert response.json() == {"pdus": {pushed_id: {}}}


async def test_nothing_is_fetched_when_the_prev_events_are_known(stage: Stage) -> None:
    scene, hosted = stage.scene, stage.hosted
    room = await scene.joined_room()
    ((event_id, pdu),) = await branch(stage, room, 1)
    hosted.requests.clear()
    reply = await stage.backfill.PerformFetchMissingEvents(
        backfill_pb2.PerformFetchMissingEventsRequest(
            room_id=room.room_id, origin=scene.remote.server_name, event_json=orjson.dumps(pdu)
        ),
        timeout=60,
    )
    assert reply.events_fetched == 0 and list(reply.still_missing) == []
    assert hosted.requests == []


async def test_when_a_gap_remains_the_oldest_fetched_event_gets_the_state_before_it(
    stage: Stage,
) -> None:
    scene, hosted = stage.scene, stage.hosted
    room = await scene.joined_room()
    events = await branch(stage, room, 16, state_event_at=2)
    (pushed_id, pushed) = events[15]
    oldest_id = events[5][0]  # get_missing_events returns 10: events 5..14
    hosted.requests.clear()
    reply = await stage.backfill.PerformFetchMissingEvents(
        backfill_pb2.PerformFetchMissingEventsRequest(
            room_id=room.room_id, origin=scene.remote.server_name, event_json=orjson.dumps(pushed)
        ),
        timeout=60,
    )
    kinds = [kind for kind, _, _ in hosted.requests]
    assert kinds[0] == "get_missing_events"
    assert ("state_ids", room.room_id, oldest_id) in hosted.requests
    # bob's new member event is missing: well over 10 % of the state, so one /state.
    assert ("state", room.room_id, oldest_id) in hosted.requests
    assert reply.events_fetched == 10
    assert reply.outliers_fetched >= 1
    assert list(reply.still_missing) == []
    for event_id, _ in events[5:15]:
        record = await scene.record(event_id)
        assert record is not None and record.status == events_pb2.EVENT_STATUS_ACCEPTED
    history = history_pb2_grpc.HistoryStub(scene.channel)
    extremities = await history.QueryBackwardExtremities(
        history_pb2.QueryBackwardExtremitiesRequest(room_id=room.room_id), timeout=10
    )
    assert events[4][0] in [e.event_id for e in extremities.extremities]
    response = await scene.send([pushed])
    assert response.json() == {"pdus": {pushed_id: {}}}


async def test_without_missing_events_the_state_after_the_missing_prev_is_reported(
    stage: Stage,
) -> None:
    scene, hosted = stage.scene, stage.hosted
    room = await scene.joined_room()
    events = await branch(stage, room, 3)
    (last_id, _), (_, pushed) = events[1], events[2]
    hosted.serve_missing_events = False
    hosted.requests.clear()
    try:
        reply = await stage.backfill.PerformFetchMissingEvents(
            backfill_pb2.PerformFetchMissingEventsRequest(
                room_id=room.room_id,
                origin=scene.remote.server_name,
                event_json=orjson.dumps(pushed),
            ),
            timeout=60,
        )
    finally:
        hosted.serve_missing_events = True
    assert ("state_ids", room.room_id, last_id) in hosted.requests
    assert list(reply.still_missing) == [last_id]
    (state_after,) = reply.state_after_missing_prevs
    assert state_after.event_id == last_id
    assert set(state_after.state_event_ids) == set(hosted.state_before[last_id])


# /send gap filling -------------------------------------------------------------------------


async def test_send_fills_the_gap_before_the_pushed_event(stage: Stage) -> None:
    scene, hosted = stage.scene, stage.hosted
    room = await scene.joined_room()
    events = await branch(stage, room, 4)
    pushed_id, pushed = events[3]
    hosted.requests.clear()
    response = await scene.send([pushed])
    assert response.json() == {"pdus": {pushed_id: {}}}
    assert [kind for kind, _, _ in hosted.requests] == ["get_missing_events"]
    for event_id, _ in events:
        record = await scene.record(event_id)
        assert record is not None and record.status == events_pb2.EVENT_STATUS_ACCEPTED
    assert (await scene.record(pushed_id)).stream_position > 0
    info = await scene.events.QueryRoomInfo(
        events_pb2.QueryRoomInfoRequest(room_id=room.room_id), timeout=10
    )
    assert list(info.forward_extremities) == [pushed_id]


async def test_send_refuses_an_event_whose_prevs_nobody_divulges(stage: Stage) -> None:
    scene, hosted = stage.scene, stage.hosted
    room = await scene.joined_room()
    bob = scene.remote.user("bob")
    event_id, pdu = await scene.build(
        room, bob, "m.room.message", {"body": "orphan"}, prev_events=["$nowhere"]
    )
    hosted.requests.clear()
    response = await scene.send([pdu])
    error = response.json()["pdus"][event_id]["error"]
    assert error.startswith("missing prev_events") and "divulging" in error
    assert [kind for kind, _, _ in hosted.requests][:1] == ["get_missing_events"]
    assert await scene.record(event_id) is None


async def test_send_fills_gaps_of_one_room_without_holding_up_another(stage: Stage) -> None:
    scene = stage.scene
    slow_room, other_room = await scene.joined_room(), await scene.joined_room()
    gapped = await branch(stage, slow_room, 3)
    bob = scene.remote.user("bob")
    other_id, other = await scene.build(other_room, bob, "m.room.message", {"body": "other"})
    response = await scene.send([gapped[2][1], other])
    assert response.json() == {"pdus": {gapped[2][0]: {}, other_id: {}}}


async def test_missing_events_for_an_unknown_room_is_not_found(stage: Stage) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stage.backfill.PerformFetchMissingEvents(
            backfill_pb2.PerformFetchMissingEventsRequest(
                room_id="!unknown:example.org", origin="example.org", event_json=b"{}"
            ),
            timeout=30,
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


# soft failure of what gap filling brings in --------------------------------------------------


async def levels_with(scene: Scene, room: Room, user: str, level: int) -> dict[str, Any]:
    """The room's current power levels content with ``user`` at ``level``."""
    state = await scene.current_state(room.room_id)
    record = await scene.record(state[("m.room.power_levels", "")])
    content = orjson.loads(record.pdu_json)["content"]
    content["users"] = {**content.get("users", {}), user: level}
    return content


async def set_level(scene: Scene, room: Room, user: str, level: int) -> str:
    """The room creator sets ``user``'s power level (a local event)."""
    content = await levels_with(scene, room, user, level)
    return await scene.send_local(room, "m.room.power_levels", content, "")


async def status_of(scene: Scene, event_ids: list[str]) -> dict[str, int]:
    return {event_id: (await scene.record(event_id)).status for event_id in event_ids}


async def test_gap_filled_messages_of_a_user_banned_meanwhile_are_soft_failed(
    stage: Stage,
) -> None:
    """get_missing_events brings live events: soft-failed like pushed ones, yet in the DAG."""
    scene = stage.scene
    room = await scene.joined_room()
    carol = scene.remote.user("carol")
    await scene.join(room, carol)
    bob = scene.remote.user("bob")
    steps: list[Step] = [(carol, "m.room.message", {"body": "carol first"}, None)]
    steps += [(bob, "m.room.message", {"body": f"evading {i}"}, None) for i in range(3)]
    steps.append((carol, "m.room.message", {"body": "carol, unaware"}, None))
    (first_id, _), *gap, (pushed_id, pushed) = await hosted_branch(stage, room, steps)
    # mxfed's side of the split bans bob before the remote's branch reaches it.
    ban_id = await scene.send_local(room, "m.room.member", {"membership": "ban"}, bob)
    stage.hosted.requests.clear()
    response = await scene.send([pushed])
    assert response.json() == {"pdus": {pushed_id: {}}}
    assert [kind for kind, _, _ in stage.hosted.requests] == ["get_missing_events"]
    gap_ids = [event_id for event_id, _ in gap]
    assert await status_of(scene, gap_ids) == dict.fromkeys(
        gap_ids, events_pb2.EVENT_STATUS_SOFT_FAILED
    )
    for event_id in gap_ids:
        assert (await scene.record(event_id)).stream_position == 0  # never streamed
    # carol's message builds on them and is allowed: it is shown, they are not.
    pushed_record = await scene.record(pushed_id)
    assert (
        pushed_record.status == events_pb2.EVENT_STATUS_ACCEPTED
        and pushed_record.stream_position > 0
    )
    timeline = await scene.timeline_ids(room.room_id)
    assert pushed_id in timeline and not set(gap_ids) & set(timeline)
    assert (await scene.record(first_id)).status == events_pb2.EVENT_STATUS_ACCEPTED
    # The forward extremities: the ban and carol's last message, which supersedes
    # her first one even though the soft-failed messages lie between them.
    info = await scene.events.QueryRoomInfo(
        events_pb2.QueryRoomInfoRequest(room_id=room.room_id), timeout=10
    )
    assert set(info.forward_extremities) == {ban_id, pushed_id}
    assert (await scene.current_state(room.room_id))[("m.room.member", bob)] == ban_id


async def bob_promoted_in_a_gap(stage: Stage) -> tuple[Room, str, list[tuple[str, dict]]]:
    """A hosted branch mxfed has not seen: rita (power 100) gives bob 50, bob changes the
    topic, rita sends ten messages. The room, bob, and the branch's events."""
    scene = stage.scene
    room = await scene.joined_room()
    rita = scene.remote.user("rita")
    await scene.join(room, rita)
    await set_level(scene, room, rita, 100)
    bob = scene.remote.user("bob")
    steps: list[Step] = [
        (rita, "m.room.power_levels", await levels_with(scene, room, bob, 50), ""),
        (bob, "m.room.topic", {"topic": "bob's topic"}, ""),
        *((rita, "m.room.message", {"body": f"r{i}"}, None) for i in range(10)),
    ]
    return room, bob, await hosted_branch(stage, room, steps)


async def test_an_edge_of_an_open_gap_is_soft_failed_after_a_ban(stage: Stage) -> None:
    scene = stage.scene
    room, bob, events = await bob_promoted_in_a_gap(stage)
    promotion_id, (topic_id, _), (pushed_id, pushed) = events[0][0], events[1], events[-1]
    await scene.send_local(room, "m.room.member", {"membership": "ban"}, bob)
    stage.hosted.requests.clear()
    response = await scene.send([pushed])
    assert response.json() == {"pdus": {pushed_id: {}}}
    assert ("state_ids", room.room_id, topic_id) in stage.hosted.requests
    assert (await scene.record(promotion_id)).status == events_pb2.EVENT_STATUS_OUTLIER
    # Resolved with the state at the topic change (bob promoted there), the
    # ban still wins: the topic change is soft-failed, rita's messages are not.
    assert (await scene.record(topic_id)).status == events_pb2.EVENT_STATUS_SOFT_FAILED
    later = [event_id for event_id, _ in events[2:]]
    assert await status_of(scene, later) == dict.fromkeys(later, events_pb2.EVENT_STATUS_ACCEPTED)
    state = await scene.current_state(room.room_id)
    assert state.get(("m.room.topic", "")) != topic_id


async def test_an_edge_of_an_open_gap_may_use_a_promotion_made_in_the_gap(stage: Stage) -> None:
    """The current state resolved with the state at the event: a promotion on the
    other side of the gap counts, so the promoted user's action is not soft-failed."""
    scene = stage.scene
    room, _, events = await bob_promoted_in_a_gap(stage)
    (topic_id, _), (pushed_id, pushed) = events[1], events[-1]
    # Something else happens on mxfed's side meanwhile, so its state differs.
    await scene.send_local(room, "m.room.name", {"name": "our side"}, "")
    response = await scene.send([pushed])
    assert response.json() == {"pdus": {pushed_id: {}}}
    assert (await scene.record(topic_id)).status == events_pb2.EVENT_STATUS_ACCEPTED
    state = await scene.current_state(room.room_id)
    assert state[("m.room.topic", "")] == topic_id
    assert state[("m.room.power_levels", "")] == events[0][0]


# backfill ----------------------------------------------------------------------------------


async def test_backfill_of_a_room_with_no_holes_asks_nobody(stage: Stage) -> None:
    scene, hosted = stage.scene, stage.hosted
    room = await scene.joined_room()
    hosted.requests.clear()
    reply = await stage.backfill.PerformBackfill(
        backfill_pb2.PerformBackfillRequest(room_id=room.room_id, limit=50), timeout=60
    )
    assert reply.events_fetched == 0
    assert hosted.requests == []


async def _remote_room_joined_at_its_latest_event(
    stage: Stage, messages: int, extra: Sequence[Step] = ()
) -> list[str]:
    """A room that lives on the remote; mxfed holds its state (outliers) and latest event.

    That is what a join leaves: the state before the latest event, which has
    its prev missing (a backward extremity). ``extra`` events come after the
    room's first five, before the ``messages``.
    """
    scene, hosted = stage.scene, stage.hosted
    remote = scene.remote
    version = room_version("10")
    bob = remote.user("bob")
    room_id = f"!bf{secrets.token_hex(4)}:{remote.server_name}"
    order: list[str] = []
    state: dict[tuple[str, str], str] = {}

    def add(
        event_type: str, content: dict[str, Any], state_key: str | None = None, sender: str = bob
    ) -> None:
        auth = select_auth_event_ids(event_type, sender, state_key, content, version, state)
        event_id, pdu = remote.build_pdu(
            version,
            room_id=room_id,
            sender=sender,
            event_type=event_type,
            content=content,
            prev_events=order[-1:],
            auth_events=auth,
            depth=len(order) + 1,
            state_key=state_key,
        )
        hosted.pdus[event_id] = pdu
        hosted.state_before[event_id] = list(state.values())
        if state_key is not None:
            state[(event_type, state_key)] = event_id
        order.append(event_id)

    add("m.room.create", {"creator": bob, "room_version": "10"}, "")
    add("m.room.member", {"membership": "join"}, bob)
    add("m.room.power_levels", {"users": {bob: 100}}, "")
    add("m.room.join_rules", {"join_rule": "public"}, "")
    add("m.room.history_visibility", {"history_visibility": "shared"}, "")
    for sender, event_type, content, state_key in extra:
        add(event_type, content, state_key, sender)
    for i in range(messages):
        add("m.room.message", {"body": f"m{i}"})
    latest = order[-1]
    chain = {a for e in state.values() for a in hosted.auth_chain(e)}
    outliers = [e for e in order if e in chain or e in state.values()]
    for kind, ids, state_before in (
        (events_pb2.INPUT_KIND_OUTLIER, outliers, []),
        (
            events_pb2.INPUT_KIND_GAP_FILL,
            [latest],
            [events_pb2.StateBefore(event_id=latest, state_event_ids=list(state.values()))],
        ),
    ):
        reply = await scene.events.InputPdus(
            events_pb2.InputPdusRequest(
                room_id=room_id,
                room_version="10",
                origin=remote.server_name,
                kind=kind,  # type: ignore[arg-type]
                pdus=[orjson.dumps(hosted.pdus[e]) for e in ids],
                state_before=state_before,
            ),
            timeout=30,
        )
        assert all(r.status != events_pb2.EVENT_STATUS_UNSPECIFIED for r in reply.results)
    return order


async def test_backfill_below_a_join_reaches_the_room_start_and_drops_forged_events(
    stage: Stage,
) -> None:
    scene, hosted = stage.scene, stage.hosted
    order = await _remote_room_joined_at_its_latest_event(stage, 30)
    room_id = hosted.pdus[order[0]]["room_id"]
    version = room_version("10")
    forged_id, forged = forge(scene.remote, hosted.pdus[order[-4]], Room(room_id, version, ""))
    hosted.extra_backfill = [forged]
    hosted.requests.clear()
    try:
        reply = await stage.backfill.PerformBackfill(
            backfill_pb2.PerformBackfillRequest(room_id=room_id, limit=10), timeout=60
        )
    finally:
        hosted.extra_backfill = []
    assert reply.server == scene.remote.server_name
    assert reply.events_fetched == 10 and reply.events_refused == 1
    assert await scene.record(forged_id) is None
    edge = order[-11]  # the oldest of the 10 (the latest excluded): its prev is missing
    assert ("state_ids", room_id, edge) in hosted.requests
    for event_id in order[-11:-1]:
        record = await scene.record(event_id)
        assert record is not None and record.status == events_pb2.EVENT_STATUS_ACCEPTED
        assert record.stream_position == 0

    for _ in range(10):
        reply = await stage.backfill.PerformBackfill(
            backfill_pb2.PerformBackfillRequest(room_id=room_id, limit=10), timeout=60
        )
        if reply.events_fetched == 0:
            break
    info = await scene.events.QueryRoomInfo(
        events_pb2.QueryRoomInfoRequest(room_id=room_id), timeout=10
    )
    assert list(info.forward_extremities) == [order[-1]]
    page = await scene.events.QueryTimeline(
        events_pb2.QueryTimelineRequest(room_id=room_id, backwards=True, limit=100), timeout=10
    )
    assert [r.event_id for r in page.events] == list(reversed(order))
    assert page.reached_room_start


async def test_backfilled_history_is_not_soft_failed(stage: Stage) -> None:
    """Only backfill (and outliers) are exempt: messages from before a ban stay visible."""
    scene, hosted = stage.scene, stage.hosted
    eve = scene.remote.user("eve")
    said = [(eve, "m.room.message", {"body": f"before the ban {i}"}, None) for i in range(3)]
    order = await _remote_room_joined_at_its_latest_event(
        stage,
        3,
        [
            (eve, "m.room.member", {"membership": "join"}, eve),
            *said,
            (scene.remote.user("bob"), "m.room.member", {"membership": "ban"}, eve),
        ],
    )
    room_id = hosted.pdus[order[0]]["room_id"]
    reply = await stage.backfill.PerformBackfill(
        backfill_pb2.PerformBackfillRequest(room_id=room_id, limit=20), timeout=60
    )
    assert reply.events_fetched > 0
    eve_said = order[6:9]
    assert await status_of(scene, eve_said) == dict.fromkeys(
        eve_said, events_pb2.EVENT_STATUS_ACCEPTED
    )


async def test_backfill_of_an_unknown_room_is_not_found(stage: Stage) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stage.backfill.PerformBackfill(
            backfill_pb2.PerformBackfillRequest(room_id="!unknown:example.org"), timeout=30
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_cli_prints_how_many_events_were_fetched(stage: Stage) -> None:
    import subprocess
    import sys

    room = await stage.scene.joined_room()
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "mxfed.cli",
            "--config",
            str(stage.scene.mxfed.config_path),
            "backfill",
            room.room_id,
            "--limit",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "fetched 0 events"
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "mxfed.cli",
            "--config",
            str(stage.scene.mxfed.config_path),
            "backfill",
            "!unknown:example.org",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("M_NOT_FOUND")


async def test_cli_history_backfills_until_the_limit_or_the_room_start(stage: Stage) -> None:
    import subprocess
    import sys

    order = await _remote_room_joined_at_its_latest_event(stage, 25)
    room_id = stage.hosted.pdus[order[0]]["room_id"]

    async def history(*extra: str) -> list[str]:
        done = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "mxfed.cli",
                "--config",
                str(stage.scene.mxfed.config_path),
                "history",
                room_id,
                "--json",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return [orjson.loads(line)["event_id"] for line in done.stdout.splitlines()]

    assert await history("--limit", "10") == order[-1:]
    assert await history("--limit", "12", "--backfill") == order[-12:]
    assert await history("--limit", "100", "--backfill") == order
