"""A fake resident hosting a v10 room with many members, for partial-state joins.

It answers make_join and send_join v2 — honouring ``omit_members`` (no member
events in ``state``, ``members_omitted``, ``servers_in_room``) unless told
not to —, ``/state_ids`` and ``/state`` at an event (the state before it),
``/event/{id}`` and ``/send`` (recording the PDUs it gets). ``/state_ids``
waits for ``release`` so a test can hold a joiner's resync where it wants.
The room's members are users of this server and of ``other`` (a second
fake server), so ``servers_in_room`` names two servers besides the joiner.

:class:`JoinerScene` is a whole running mxfed that joins such rooms, with
the resident and the second server (:meth:`JoinerScene.running`).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self

import orjson
from aiohttp import web

from matrix_protocol.events import Event
from matrix_protocol.room_versions import room_version
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc, membership_pb2, membership_pb2_grpc
from tests.support.databases import create_database, drop_database
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.mxfed_process import MxfedProcess
from tests.support.polling import until

V10 = room_version("10")
MEMBER = "m.room.member"


def big_json(value: Any) -> web.Response:
    """A JSON answer encoded by orjson: a big room's state is ~13 MB at 20,000
    members, and the stdlib encoder would spend the benchmark's CPU on the
    resident's side instead of mxfed's."""
    return web.Response(body=orjson.dumps(value), content_type="application/json")


class BigRoom:
    def __init__(
        self, server: FakeHomeserver, other: FakeHomeserver, *, members: int, omit: bool = True
    ) -> None:
        self.server = server
        self.other = other
        self.omit = omit
        self.events: dict[str, dict[str, Any]] = {}
        # The current state, (type, state_key) -> event id; the state before
        # an event is replayed from the order events were added in.
        self.state: dict[tuple[str, str], str] = {}
        self.order: dict[str, int] = {}
        self.received: list[dict[str, Any]] = []
        self.other_received: list[dict[str, Any]] = []
        self.state_ids_requests = 0
        self.state_requests = 0
        self.event_requests = 0
        self.release = asyncio.Event()
        self.release.set()
        self.room_id = f"!big{secrets.token_hex(6)}:{server.server_name}"
        self.alice = server.user("alice")
        self.last = ""
        create_content = {"creator": self.alice, "room_version": "10"}
        self.create = self.add(self.alice, "m.room.create", "", create_content)
        self.add(self.alice, MEMBER, self.alice, {"membership": "join"})
        self.add(self.alice, "m.room.power_levels", "", {"users": {self.alice: 100}})
        self.add(self.alice, "m.room.join_rules", "", {"join_rule": "public"})
        self.add(self.alice, "m.room.name", "", {"name": "Big room"})
        self.members = [(other if i % 3 == 2 else server).user(f"m{i}") for i in range(members)]
        for user in self.members:
            self.add(user, MEMBER, user, {"membership": "join"})

    # -------------------------------------------------------------- the DAG

    def _auth_events(self, sender: str, event_type: str, state_key: str | None,
                     content: dict[str, Any]) -> list[str]:  # fmt: skip
        if event_type == "m.room.create":
            return []
        keys = [("m.room.create", ""), ("m.room.power_levels", ""), (MEMBER, sender)]
        if event_type == MEMBER:
            keys.append((MEMBER, state_key or ""))
            if content.get("membership") == "join":
                keys.append(("m.room.join_rules", ""))
        return list(dict.fromkeys(self.state[k] for k in keys if k in self.state))

    def add(self, sender: str, event_type: str, state_key: str | None,
            content: dict[str, Any], prev_events: list[str] | None = None) -> str:  # fmt: skip
        """A new event of this room's own servers on top of the DAG (or on ``prev_events``)."""
        origin = self.other if sender.endswith(":" + self.other.server_name) else self.server
        event_id, pdu = origin.build_pdu(
            V10,
            room_id=self.room_id,
            sender=sender,
            event_type=event_type,
            content=content,
            prev_events=prev_events or ([self.last] if self.last else []),
            auth_events=self._auth_events(sender, event_type, state_key, content),
            depth=len(self.events) + 1,
            state_key=state_key,
        )
        self.accept(event_id, pdu)
        return event_id

    def accept(self, event_id: str, pdu: dict[str, Any]) -> None:
        self.events[event_id] = pdu
        self.order[event_id] = len(self.order)
        if "state_key" in pdu:
            self.state[(pdu["type"], pdu["state_key"])] = event_id
        self.last = event_id

    def state_before(self, event_id: str) -> dict[tuple[str, str], str] | None:
        """The state before ``event_id`` (a linear DAG: every event added before it)."""
        if event_id not in self.order:
            return None
        state: dict[tuple[str, str], str] = {}
        for earlier in list(self.order)[: self.order[event_id]]:
            pdu = self.events[earlier]
            if "state_key" in pdu:
                state[(pdu["type"], pdu["state_key"])] = earlier
        return state

    def auth_chain(self, event_ids: list[str]) -> list[str]:
        chain: dict[str, None] = {}
        todo = [a for e in event_ids for a in self.events[e]["auth_events"]]
        while todo:
            auth_id = todo.pop()
            if auth_id not in chain:
                chain[auth_id] = None
                todo.extend(self.events[auth_id]["auth_events"])
        return list(chain)

    def members_of(self, state: dict[tuple[str, str], str]) -> dict[str, str]:
        return {
            key: self.events[event_id]["content"]["membership"]
            for (t, key), event_id in state.items()
            if t == MEMBER
        }

    # -------------------------------------------------------------- endpoints

    async def make_join(self, request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        template = {
            "room_id": self.room_id,
            "sender": user_id,
            "state_key": user_id,
            "type": MEMBER,
            "content": {"membership": "join"},
            "origin": self.server.server_name,
            "origin_server_ts": self.server.next_ts(),
            "prev_events": [self.last],
            "auth_events": self._auth_events(user_id, MEMBER, user_id, {"membership": "join"}),
            "depth": len(self.events) + 1,
        }
        return web.json_response({"room_version": "10", "event": template})

    async def send_join(self, request: web.Request) -> web.Response:
        pdu = await request.json()
        event_id = Event.from_pdu(pdu, V10).event_id
        if event_id not in self.events:
            self.accept(event_id, pdu)
        before = self.state_before(event_id)
        assert before is not None
        omit = self.omit and request.query.get("omit_members") == "true"
        state = [e for (t, _), e in before.items() if not (omit and t == MEMBER)]
        chain = self.auth_chain([*state, event_id])
        if omit:
            chain = [e for e in chain if e not in set(state)]
        answer: dict[str, Any] = {
            "state": [self.events[e] for e in state],
            "auth_chain": [self.events[e] for e in chain],
            "origin": self.server.server_name,
        }
        if omit:
            answer["members_omitted"] = True
            answer["servers_in_room"] = [self.server.server_name, self.other.server_name]
        return big_json(answer)

    async def state_ids(self, request: web.Request) -> web.Response:
        self.state_ids_requests += 1
        await self.release.wait()
        before = self.state_before(request.query["event_id"])
        if before is None:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no"}, status=404)
        state = list(before.values())
        return big_json({"pdu_ids": state, "auth_chain_ids": self.auth_chain(state)})

    async def state_at(self, request: web.Request) -> web.Response:
        self.state_requests += 1
        before = self.state_before(request.query["event_id"])
        if before is None:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no"}, status=404)
        state = list(before.values())
        return big_json(
            {
                "pdus": [self.events[e] for e in state],
                "auth_chain": [self.events[e] for e in self.auth_chain(state)],
            }
        )

    async def event(self, request: web.Request) -> web.Response:
        self.event_requests += 1
        event_id = request.match_info["event_id"]
        if event_id not in self.events:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no"}, status=404)
        return web.json_response(
            {
                "origin": self.server.server_name,
                "origin_server_ts": 1,
                "pdus": [self.events[event_id]],
            }  # fmt: skip
        )

    async def push(self, base_url: str, destination: str, event_ids: list[str]) -> Any:
        """A /send transaction of ours carrying ``event_ids`` to the joiner."""
        txn = secrets.token_hex(8)
        body = {
            "origin": self.server.server_name,
            "origin_server_ts": self.server.next_ts(),
            "pdus": [self.events[e] for e in event_ids],
        }
        response = await self.server.federation_request(
            base_url, destination, "PUT", f"/_matrix/federation/v1/send/{txn}", body
        )
        assert response.status_code == 200, response.text
        return response.json()

    def take(self, pdus: list[dict[str, Any]]) -> None:
        """PDUs the joiner sent us: recorded and added to the room."""
        for pdu in pdus:
            if pdu.get("room_id") != self.room_id:
                continue
            event_id = Event.from_pdu(pdu, V10).event_id
            self.received.append(pdu)
            if event_id not in self.events:
                self.accept(event_id, pdu)


def add_big_room_routes(
    server: FakeHomeserver, other: FakeHomeserver, rooms: dict[str, BigRoom]
) -> None:
    """Routes dispatching to the room named in the path (or the query's event)."""
    v1 = "/_matrix/federation/v1"

    def by_room(request: web.Request) -> BigRoom:
        return rooms[request.match_info["room_id"]]

    async def make_join(request: web.Request) -> web.Response:
        return await by_room(request).make_join(request)

    async def send_join(request: web.Request) -> web.Response:
        return await by_room(request).send_join(request)

    async def state_ids(request: web.Request) -> web.Response:
        return await by_room(request).state_ids(request)

    async def state_at(request: web.Request) -> web.Response:
        return await by_room(request).state_at(request)

    async def event(request: web.Request) -> web.Response:
        for room in rooms.values():
            if request.match_info["event_id"] in room.events:
                return await room.event(request)
        return web.json_response({"errcode": "M_NOT_FOUND", "error": "no"}, status=404)

    async def event_auth(request: web.Request) -> web.Response:
        room = by_room(request)
        event_id = request.match_info["event_id"]
        if event_id not in room.events:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no"}, status=404)
        chain = room.auth_chain([event_id])
        return web.json_response({"auth_chain": [room.events[e] for e in chain]})

    def send_for(kind: str) -> Any:
        async def send(request: web.Request) -> web.Response:
            body = await request.json()
            for room in rooms.values():
                if kind == "resident":
                    room.take(body.get("pdus", []))
                else:
                    room_pdus = [
                        p for p in body.get("pdus", []) if p.get("room_id") == room.room_id
                    ]
                    room.other_received.extend(room_pdus)
            return web.json_response({"pdus": {}})

        return send

    server.route("GET", v1 + "/make_join/{room_id}/{user_id}", make_join)
    server.route("PUT", "/_matrix/federation/v2/send_join/{room_id}/{event_id}", send_join)
    server.route("GET", v1 + "/state_ids/{room_id}", state_ids)
    server.route("GET", v1 + "/state/{room_id}", state_at)
    server.route("GET", v1 + "/event/{event_id}", event)
    server.route("GET", v1 + "/event_auth/{room_id}/{event_id}", event_auth)
    server.route("PUT", v1 + "/send/{txn_id}", send_for("resident"))
    other.route("PUT", v1 + "/send/{txn_id}", send_for("other"))


class JoinerScene:
    """A running mxfed whose users join the rooms of ``server`` (the resident);
    ``other`` is the second server of those rooms."""

    def __init__(
        self,
        mxfed: MxfedProcess,
        server: FakeHomeserver,
        other: FakeHomeserver,
        rooms: dict[str, BigRoom],
    ) -> None:
        self.mxfed = mxfed
        self.server = server
        self.other = other
        self.rooms = rooms
        self.connect()

    @classmethod
    @asynccontextmanager
    async def running(
        cls, data_dir: Path, database: str, key_versions: tuple[str, str]
    ) -> AsyncIterator[Self]:
        """The resident, the second server (with these key versions) and an mxfed
        on a database of its own (named after ``database``), stopped at the end."""
        database_url = await create_database(database)
        server = FakeHomeserver(key_version=key_versions[0])
        other = FakeHomeserver(key_version=key_versions[1])
        rooms: dict[str, BigRoom] = {}
        add_big_room_routes(server, other, rooms)
        await server.start()
        await other.start()
        mxfed = MxfedProcess(data_dir, database_url)
        try:
            await asyncio.to_thread(mxfed.start)
            started = cls(mxfed, server, other, rooms)
            yield started
            await started.channel.close()
        finally:
            await asyncio.to_thread(mxfed.stop)
            await server.stop()
            await other.stop()
            await drop_database(database_url)

    def connect(self) -> None:
        """Channels to the events process (again, after a restart)."""
        self.channel = self.mxfed.channel("events")
        self.membership = membership_pb2_grpc.MembershipStub(self.channel)
        self.events = events_pb2_grpc.EventsStub(self.channel)

    def room(self, members: int, *, omit: bool) -> BigRoom:
        """A new room of the resident; ``omit``: its send_join omits members when asked."""
        room = BigRoom(self.server, self.other, members=members, omit=omit)
        self.rooms[room.room_id] = room
        return room

    def user(self) -> str:
        """A new local user."""
        return f"@u{secrets.token_hex(4)}:{self.mxfed.server_name}"

    async def join(self, room: BigRoom, user_id: str) -> str:
        """``user_id`` joins ``room`` through the resident: the join's event id."""
        reply = await self.membership.PerformJoin(
            membership_pb2.PerformJoinRequest(
                room_id_or_alias=room.room_id, user_id=user_id, servers=[self.server.server_name]
            ),
            timeout=60,
        )
        assert reply.remote
        return reply.event_id

    async def info(self, room: BigRoom) -> events_pb2.QueryRoomInfoResponse:
        return await self.events.QueryRoomInfo(
            events_pb2.QueryRoomInfoRequest(room_id=room.room_id), timeout=10
        )

    async def info_until(
        self,
        room: BigRoom,
        ok: Callable[[events_pb2.QueryRoomInfoResponse], bool],
        timeout: float = 60.0,
    ) -> events_pb2.QueryRoomInfoResponse:
        """Room info polled until ``ok`` holds of it."""
        return await until(lambda: self.info(room), ok, timeout)

    async def resynced(self, room: BigRoom) -> events_pb2.QueryRoomInfoResponse:
        """Room info once the room has its full state."""
        return await self.info_until(
            room, lambda i: i.resync_state == events_pb2.RESYNC_STATE_FULL_STATE
        )

    async def current_state(self, room: BigRoom) -> dict[tuple[str, str], str]:
        reply = await self.events.QueryCurrentState(
            events_pb2.QueryCurrentStateRequest(room_id=room.room_id), timeout=30
        )
        state = {}
        for record in reply.events:
            pdu = orjson.loads(record.pdu_json)
            state[(pdu["type"], pdu["state_key"])] = record.event_id
        return state

    async def statuses(self, event_ids: list[str]) -> dict[str, int]:
        """The status of each of ``event_ids`` we hold (those we do not are left out)."""
        reply = await self.events.QueryEvents(
            events_pb2.QueryEventsRequest(event_ids=event_ids), timeout=10
        )
        return {e.event_id: e.status for e in reply.events}
