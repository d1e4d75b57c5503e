"""A join's answer (and a resync's /state) stored while its signatures are verified.

mxfed stores a send_join answer, and the /state answer of a partial-state
room's resync, in a transaction while the keys service still verifies their
signatures, and commits only once all have verified. These tests give
answers where that is not so (a forged signature) or where the join is
refused by the room's state, and check the outcome is what checking every
signature first gives: the forged event left out (or, for the create event,
no join), a refused join refused, a resync that stores nothing until the
state it is given verifies.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable

import grpc
import orjson
import pytest

from mxfed_api.events.v1 import events_pb2, events_pb2_grpc, membership_pb2, membership_pb2_grpc
from tests.support.databases import create_database, drop_database
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.mxfed_process import MxfedProcess
from tests.support.partial_resident import MEMBER, BigRoom, add_big_room_routes


class Scene:
    def __init__(self, mxfed: MxfedProcess, server: FakeHomeserver, other: FakeHomeserver) -> None:
        self.mxfed = mxfed
        self.server = server
        self.other = other
        self.rooms: dict[str, BigRoom] = {}
        self.channel = mxfed.channel("events")
        self.membership = membership_pb2_grpc.MembershipStub(self.channel)
        self.events = events_pb2_grpc.EventsStub(self.channel)

    def room(self, members: int, *, omit: bool = False) -> BigRoom:
        room = BigRoom(self.server, self.other, members=members, omit=omit)
        self.rooms[room.room_id] = room
        return room

    async def join(self, room: BigRoom) -> str:
        reply = await self.membership.PerformJoin(
            membership_pb2.PerformJoinRequest(
                room_id_or_alias=room.room_id,
                user_id=f"@u{secrets.token_hex(4)}:{self.mxfed.server_name}",
                servers=[self.server.server_name],
            ),
            timeout=60,
        )
        return reply.event_id

    async def current_state(self, room: BigRoom) -> dict[tuple[str, str], str]:
        reply = await self.events.QueryCurrentState(
            events_pb2.QueryCurrentStateRequest(room_id=room.room_id), timeout=30
        )
        state = {}
        for record in reply.events:
            pdu = orjson.loads(record.pdu_json)
            state[(pdu["type"], pdu["state_key"])] = record.event_id
        return state

    async def info(self, room: BigRoom) -> events_pb2.QueryRoomInfoResponse:
        return await self.events.QueryRoomInfo(
            events_pb2.QueryRoomInfoRequest(room_id=room.room_id), timeout=10
        )

    async def info_until(
        self, room: BigRoom, ok: Callable[[events_pb2.QueryRoomInfoResponse], bool]
    ) -> events_pb2.QueryRoomInfoResponse:
        """Room info polled until ``ok`` holds of it (a condition, not a timing)."""
        deadline = time.monotonic() + 60
        while True:
            info = await self.info(room)
            if ok(info):
                return info
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met; last room info: {info}")
            await asyncio.sleep(0.05)

    async def held(self, event_ids: list[str]) -> set[str]:
        reply = await self.events.QueryEvents(
            events_pb2.QueryEventsRequest(event_ids=event_ids), timeout=10
        )
        return {e.event_id for e in reply.events}


@pytest.fixture(scope="module")
async def scene(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scene]:
    database_url = await create_database("mxfed_join_checked_test")
    server = FakeHomeserver(key_version="checked1")
    other = FakeHomeserver(key_version="checked2")
    rooms: dict[str, BigRoom] = {}
    add_big_room_routes(server, other, rooms)
    await server.start()
    await other.start()
    mxfed = MxfedProcess(tmp_path_factory.mktemp("join-checked") / "mxfed", database_url)
    try:
        await asyncio.to_thread(mxfed.start)
        started = Scene(mxfed, server, other)
        started.rooms = rooms
        yield started
        await started.channel.close()
    finally:
        await asyncio.to_thread(mxfed.stop)
        await server.stop()
        await other.stop()
        await drop_database(database_url)


def forge(room: BigRoom, event_id: str) -> None:
    """The resident serves ``event_id`` with a signature that does not verify (same id)."""
    pdu = room.events[event_id]
    origin = pdu["sender"].split(":", 1)[1]
    key_id = next(iter(pdu["signatures"][origin]))
    room.events[event_id] = {**pdu, "signatures": {origin: {key_id: "A" * 86}}}


async def test_a_state_event_with_a_forged_signature_is_left_out_of_the_join(
    scene: Scene,
) -> None:
    room = scene.room(members=30)
    forged = room.state[(MEMBER, room.members[7])]
    forge(room, forged)
    join_id = await scene.join(room)
    state = await scene.current_state(room)
    expected = {key: e for key, e in room.state.items() if e != forged}
    assert state == expected
    assert (MEMBER, room.members[7]) not in state
    assert await scene.held([forged, join_id]) == {join_id}


async def test_a_forged_create_event_leaves_no_join(scene: Scene) -> None:
    room = scene.room(members=10)
    forge(room, room.create)
    with pytest.raises(grpc.aio.AioRpcError):
        await scene.join(room)
    assert await scene.held([room.create]) == set()
    assert await scene.current_state(room) == {}


async def test_a_join_the_rooms_state_refuses_is_refused(scene: Scene) -> None:
    room = scene.room(members=10)
    room.add(room.alice, "m.room.join_rules", "", {"join_rule": "invite"})
    with pytest.raises(grpc.aio.AioRpcError):
        await scene.join(room)
    assert await scene.held([room.create]) == set()


async def test_a_resync_stores_nothing_while_its_state_has_a_forged_signature(
    scene: Scene,
) -> None:
    room = scene.room(members=80, omit=True)
    forged = room.state[(MEMBER, room.members[5])]
    genuine = room.events[forged]
    forge(room, forged)
    await scene.join(room)
    info = await scene.info_until(room, lambda i: i.resync_attempts >= 1)
    assert info.resync_state != events_pb2.RESYNC_STATE_FULL_STATE
    assert info.members_known < 5  # what the attempt stored was rolled back
    other_member = room.state[(MEMBER, room.members[6])]
    assert await scene.held([forged, other_member]) == set()
    room.events[forged] = genuine  # the resident serves it signed again
    await scene.info_until(room, lambda i: i.resync_state == events_pb2.RESYNC_STATE_FULL_STATE)
    assert await scene.current_state(room) == room.state
    assert await scene.held([forged, other_member]) == {forged, other_member}
