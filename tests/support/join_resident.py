"""A fake resident server hosting a v10 room, for tests of joins to remote rooms.

It answers make_join, send_join, ``/event/{id}``, ``/event_auth`` and
``/send`` (recording EDUs) for its rooms. The send_join answer leaves out an
auth event a state event cites, so a joiner has to fetch it.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from matrix_protocol.room_versions import room_version
from tests.support.fake_homeserver import FakeHomeserver

V10 = room_version("10")


class Resident:
    """A v10 room on a fake server whose power levels changed once, so the
    topic (authorised by the first power levels) cites an event that is no
    longer in the state."""

    def __init__(self, server: FakeHomeserver, *, serve_event: bool) -> None:
        self.server = server
        self.serve_event = serve_event
        # Run with the joining event's id before the send_join answer is given
        # (a resident sending on at once).
        self.before_send_join: Callable[[str], Awaitable[None]] | None = None
        self.events: dict[str, dict[str, Any]] = {}
        self.edus: list[dict[str, Any]] = []
        self.pdus: list[dict[str, Any]] = []  # received over /send
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

    def message(self, body: str, after: str) -> tuple[str, dict[str, Any]]:
        """A new message of alice after event ``after`` (not added to the room)."""
        alice = self.server.user("alice")
        return self.server.build_pdu(
            V10,
            room_id=self.room_id,
            sender=alice,
            event_type="m.room.message",
            content={"msgtype": "m.text", "body": body},
            prev_events=[after],
            auth_events=[self.create, self.join, self.pl2],
            depth=self.depth + 1,
        )

    async def send_join(self, request: web.Request) -> web.Response:
        if self.before_send_join is not None:
            await self.before_send_join(request.match_info["event_id"])
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
            room.pdus.extend(p for p in body.get("pdus", []) if p.get("room_id") == room.room_id)
        return web.json_response({"pdus": {}})

    server.route("GET", v1 + "/event/{event_id}", event)
    server.route("PUT", v1 + "/send/{txn_id}", send)
