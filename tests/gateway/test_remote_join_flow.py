"""A whole running mxfed joining a room hosted by a fake resident server.

* The send_join answer leaves out an auth event that a state event cites:
  mxfed fetches it from the resident (``/event/{id}``, else
  ``/event_auth/{roomId}/{eventId}``) instead of rejecting that state event.
* After the join, the resident — a server that did not share a room with
  the joining user before — receives the user's device list
  (``m.device_list_update`` per device, ``m.signing_key_update``) (edus.md §5).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from matrix_protocol.room_versions import room_version
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc, membership_pb2, membership_pb2_grpc
from mxfed_api.keys.v1 import accounts_pb2, accounts_pb2_grpc
from tests.support.databases import create_database, drop_database
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.mxfed_process import MxfedProcess

V10 = room_version("10")


class Resident:
    """A v10 room on a fake server whose power levels changed once, so the
    topic (authorised by the first power levels) cites an event that is no
    longer in the state."""

    def __init__(self, server: FakeHomeserver, *, serve_event: bool) -> None:
        self.server = server
        self.serve_event = serve_event
        self.events: dict[str, dict[str, Any]] = {}
        self.edus: list[dict[str, Any]] = []
        self.event_requests: list[str] = []
        self.event_auth_requests: list[str] = []
        alice = server.user("alice")
        self.room_id = f"!r{secrets.token_hex(6)}:{server.server_name}"
        build = self._build
        self.create = build(alice, "m.room.create", "", {"room_version": "10"}, [])
        self.join = build(alice, "m.room.member", alice, {"membership": "join"}, [self.create])
        self.pl1 = build(alice, "m.room.power_levels", "", {"users": {alice: 100}}, [self.join])
        self.rules = build(alice, "m.room.join_rules", "", {"join_rule": "public"}, [self.pl1])
        self.topic = build(alice, "m.room.topic", "", {"topic": "cheese"}, [self.pl1])
        self.pl2 = build(
            alice,
            "m.room.power_levels",
            "",
            {"users": {alice: 100}, "state_default": 50},
            [self.pl1],
        )
        self.state = [self.create, self.join, self.rules, self.topic, self.pl2]
        self.last = self.pl2
        self.depth = 7

    def _build(
        self,
        sender: str,
        event_type: str,
        state_key: str,
        content: dict[str, Any],
        auth_from: list[str],
    ) -> str:
        """An event authorised by the create event, alice's join and ``auth_from``."""
        if event_type == "m.room.create":
            auth, prev = [], []
            content = {**content, "creator": sender}
        else:
            join = getattr(self, "join", None)
            auth = list(dict.fromkeys([self.create, *([join] if join else []), *auth_from]))
            prev = [list(self.events)[-1]]
        event_id, pdu = self.server.build_pdu(
            V10,
            room_id=self.room_id,
            sender=sender,
            event_type=event_type,
            content=content,
            prev_events=prev,
            auth_events=auth,
            depth=len(self.events) + 1,
            state_key=state_key,
        )
        self.events[event_id] = pdu
        return event_id

    async def make_join(self, request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        template = {
            "room_id": self.room_id,
            "sender": user_id,
            "state_key": user_id,
            "type": "m.room.member",
            "content": {"membership": "join"},
            "origin": self.server.server_name,
            "origin_server_ts": self.server.next_ts(),
            "prev_events": [self.last],
            "auth_events": [self.create, self.pl2, self.rules],
            "depth": self.depth,
        }
        return web.json_response({"room_version": "10", "event": template})

    async def send_join(self, request: web.Request) -> web.Response:
        # The auth chain leaves out pl1, which the topic (in the state) cites.
        chain = [self.create, self.join, self.rules, self.pl2]
        return web.json_response(
            {
                "state": [self.events[e] for e in self.state],
                "auth_chain": [self.events[e] for e in chain],
                "origin": self.server.server_name,
            }
        )

    async def event(self, request: web.Request) -> web.Response:
        event_id = request.match_info["event_id"]
        self.event_requests.append(event_id)
        if not self.serve_event or event_id not in self.events:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no"}, status=404)
        return web.json_response(
            {
                "origin": self.server.server_name,
                "origin_server_ts": 1,
                "pdus": [self.events[event_id]],
            }
        )

    async def event_auth(self, request: web.Request) -> web.Response:
        event_id = request.match_info["event_id"]
        self.event_auth_requests.append(event_id)
        if event_id not in self.events:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no"}, status=404)
        chain: dict[str, None] = {}
        todo = list(self.events[event_id]["auth_events"])
        while todo:
            auth_id = todo.pop()
            if auth_id not in chain:
                chain[auth_id] = None
                todo.extend(self.events[auth_id]["auth_events"])
        return web.json_response({"auth_chain": [self.events[e] for e in chain]})

    async def send(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.edus.extend(body.get("edus", []))
        return web.json_response({"pdus": {}})


def add_routes(server: FakeHomeserver, resident: dict[str, Resident]) -> None:
    """Routes dispatching to the room named in the path (or the only room)."""
    v1 = "/_matrix/federation/v1"

    def by_room(request: web.Request) -> Resident:
        return resident[request.match_info["room_id"]]

    async def make_join(request: web.Request) -> web.Response:
        return await by_room(request).make_join(request)

    async def send_join(request: web.Request) -> web.Response:
        return await by_room(request).send_join(request)

    async def event_auth(request: web.Request) -> web.Response:
        return await by_room(request).event_auth(request)

    server.route("GET", v1 + "/make_join/{room_id}/{user_id}", make_join)
    server.route("PUT", "/_matrix/federation/v2/send_join/{room_id}/{event_id}", send_join)
    server.route("GET", v1 + "/event_auth/{room_id}/{event_id}", event_auth)

    async def event(request: web.Request) -> web.Response:
        event_id = request.match_info["event_id"]
        for room in resident.values():
            if event_id in room.events:
                return await room.event(request)
        return web.json_response({"errcode": "M_NOT_FOUND", "error": "no"}, status=404)

    async def send(request: web.Request) -> web.Response:
        body = await request.json()
        for room in resident.values():
            room.edus.extend(body.get("edus", []))
        return web.json_response({"pdus": {}})

    server.route("GET", v1 + "/event/{event_id}", event)
    server.route("PUT", v1 + "/send/{txn_id}", send)


class Scene:
    def __init__(self, mxfed: MxfedProcess, server: FakeHomeserver) -> None:
        self.mxfed = mxfed
        self.server = server
        self.rooms: dict[str, Resident] = {}
        self.events_channel = mxfed.channel("events")
        self.keys_channel = mxfed.channel("keys")
        self.membership = membership_pb2_grpc.MembershipStub(self.events_channel)
        self.events = events_pb2_grpc.EventsStub(self.events_channel)
        self.accounts = accounts_pb2_grpc.AccountsStub(self.keys_channel)

    def room(self, *, serve_event: bool) -> Resident:
        room = Resident(self.server, serve_event=serve_event)
        self.rooms[room.room_id] = room
        return room

    async def join(self, room: Resident, user_id: str) -> str:
        reply = await self.membership.PerformJoin(
            membership_pb2.PerformJoinRequest(
                room_id_or_alias=room.room_id, user_id=user_id, servers=[self.server.server_name]
            ),
            timeout=30,
        )
        assert reply.remote
        return reply.event_id

    async def statuses(self, event_ids: list[str]) -> dict[str, int]:
        reply = await self.events.QueryEvents(events_pb2.QueryEventsRequest(event_ids=event_ids))
        return {e.event_id: e.status for e in reply.events}


@pytest.fixture(scope="module")
async def scene(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scene]:
    database_url = await create_database("mxfed_remote_join_test")
    server = FakeHomeserver(key_version="resident1")
    rooms: dict[str, Resident] = {}
    add_routes(server, rooms)
    await server.start()
    mxfed = MxfedProcess(tmp_path_factory.mktemp("remote-join") / "mxfed", database_url)
    try:
        await asyncio.to_thread(mxfed.start)
        started = Scene(mxfed, server)
        started.rooms = rooms
        yield started
        await started.events_channel.close()
        await started.keys_channel.close()
    finally:
        await asyncio.to_thread(mxfed.stop)
        await server.stop()
        await drop_database(database_url)


def local_user(scene: Scene) -> str:
    return f"@u{secrets.token_hex(4)}:{scene.mxfed.server_name}"


@pytest.mark.parametrize("serve_event", [True, False], ids=["event", "event_auth"])
async def test_missing_auth_events_are_fetched_from_the_resident(
    scene: Scene, serve_event: bool
) -> None:
    room = scene.room(serve_event=serve_event)
    user = local_user(scene)
    join_id = await scene.join(room, user)
    statuses = await scene.statuses([room.topic, room.pl1, join_id])
    assert statuses[room.topic] != events_pb2.REJECTED
    assert room.pl1 in statuses and statuses[room.pl1] != events_pb2.REJECTED
    assert statuses[join_id] == events_pb2.ACCEPTED
    assert room.pl1 in room.event_requests
    if not serve_event:
        assert room.event_auth_requests  # the chain of an event citing pl1
    state = await scene.events.QueryCurrentState(
        events_pb2.QueryCurrentStateRequest(
            room_id=room.room_id, filter=[events_pb2.StateKeyFilter(type="m.room.topic")]
        )
    )
    [topic] = state.events
    assert topic.event_id == room.topic


async def test_joining_sends_the_users_device_list_to_the_new_server(scene: Scene) -> None:
    room = scene.room(serve_event=True)
    user = local_user(scene)
    device_keys = {
        "user_id": user,
        "device_id": "DEV1",
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {"curve25519:DEV1": "c", "ed25519:DEV1": "e"},
        "signatures": {user: {"ed25519:DEV1": "s"}},
    }
    await scene.accounts.PerformUploadKeys(
        accounts_pb2.PerformUploadKeysRequest(
            user_id=user,
            device_id="DEV1",
            display_name="Phone",
            device_keys_json=orjson.dumps(device_keys),
        )
    )
    master = {"user_id": user, "usage": ["master"], "keys": {"ed25519:MK": "MK"}}
    await scene.accounts.PerformUploadCrossSigningKeys(
        accounts_pb2.PerformUploadCrossSigningKeysRequest(
            user_id=user, master_key_json=orjson.dumps(master)
        )
    )
    # Nothing was sent before the join: the user shared no room with the resident.
    assert not [e for e in room.edus if e.get("content", {}).get("user_id") == user]
    await scene.join(room, user)

    def mine(edu_type: str) -> list[dict[str, Any]]:
        return [
            e["content"]
            for e in room.edus
            if e.get("edu_type") == edu_type and e.get("content", {}).get("user_id") == user
        ]

    for _ in range(150):
        if mine("m.device_list_update") and mine("m.signing_key_update"):
            break
        await asyncio.sleep(0.2)
    [update] = mine("m.device_list_update")
    assert update["device_id"] == "DEV1"
    assert update["keys"] == device_keys
    assert update["device_display_name"] == "Phone"
    assert update["prev_id"] == []
    assert update["stream_id"] >= 1
    [signing] = mine("m.signing_key_update")
    assert signing["master_key"] == master
