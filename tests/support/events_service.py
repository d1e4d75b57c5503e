"""Helpers for events-service tests: the service under test, a remote server
that signs PDUs, room heads, a room living on a remote server, and a public room
with a remote member."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc

from matrix_protocol.auth_events import select_auth_event_ids
from matrix_protocol.canonical_json import decode_json, encode_json
from matrix_protocol.events import Event, StateKey
from matrix_protocol.room_versions import room_version
from matrix_protocol.signing import sign_event
from mxfed.identity_files import ServerSigningKey
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc
from tests.support.key_servers import FakeKeyServer

OUR_SERVER = "events-test.example"

_TS = itertools.count(int(time.time() * 1000))


@dataclass
class EventsService:
    stub: events_pb2_grpc.EventsStub
    server_name: str
    signing_key: ServerSigningKey
    server: grpc.aio.Server
    pool: asyncpg.Pool
    # The channel ``stub`` uses (each call as a caller the plane admits to it).
    channel: grpc.aio.Channel | None = None

    async def create_room(self, version: str, creator: str = "", **kwargs: Any) -> str:
        creator = creator or f"@admin:{self.server_name}"
        reply = await self.stub.PerformCreateRoom(
            events_pb2.PerformCreateRoomRequest(creator=creator, room_version=version, **kwargs)
        )
        return reply.room_id

    async def send(
        self, room_id: str, sender: str, event_type: str, content: dict[str, Any], **kwargs: Any
    ) -> events_pb2.PerformSendEventResponse:
        return await self.stub.PerformSendEvent(
            events_pb2.PerformSendEventRequest(
                room_id=room_id,
                sender=sender,
                type=event_type,
                content_json=encode_json(content),
                **kwargs,
            )
        )

    async def head(self, room_id: str) -> RoomHead:
        info = await self.stub.QueryRoomInfo(events_pb2.QueryRoomInfoRequest(room_id=room_id))
        state = await self.stub.QueryCurrentState(
            events_pb2.QueryCurrentStateRequest(room_id=room_id)
        )
        current = {}
        for record in state.events:
            pdu = decode_json(record.pdu_json)
            current[(pdu["type"], pdu["state_key"])] = record.event_id
        return RoomHead(
            room_id, info.room_version, list(info.forward_extremities), info.max_depth, current
        )

    async def event(self, event_id: str, as_server: str = "") -> events_pb2.EventRecord | None:
        reply = await self.stub.QueryEvents(
            events_pb2.QueryEventsRequest(event_ids=[event_id], as_server=as_server)
        )
        return reply.events[0] if reply.events else None

    async def transaction(
        self,
        origin: str,
        pdus: Sequence[dict[str, Any]],
        edus: Sequence[dict[str, Any]] = (),
        txn_id: str = "",
    ) -> dict[str, Any]:
        reply = await self.stub.InputTransaction(
            events_pb2.InputTransactionRequest(
                origin=origin,
                txn_id=txn_id or uuid.uuid4().hex,
                pdus=[encode_json(p) for p in pdus],
                edus=[encode_json(e) for e in edus],
            )
        )
        return decode_json(reply.response_json)


@dataclass
class RoomHead:
    room_id: str
    version: str
    extremities: list[str]
    max_depth: int
    state: dict[StateKey, str]


class RemoteServer:
    """A remote homeserver: its key server answers on loopback; PDUs are signed with its key."""

    def __init__(self, key_server: FakeKeyServer) -> None:
        self.key_server = key_server
        self.name = key_server.server_name

    def user(self, localpart: str) -> str:
        return f"@{localpart}:{self.name}"

    def pdu(
        self,
        head: RoomHead,
        event_type: str,
        sender: str,
        content: dict[str, Any],
        state_key: str | None = None,
        *,
        prev: list[str] | None = None,
        auth_state: dict[StateKey, str] | None = None,
        depth: int | None = None,
        advance: bool = True,
    ) -> tuple[dict[str, Any], str]:
        """A signed PDU on ``head`` (advanced to it unless ``advance`` is false), and its id."""
        version = room_version(head.version)
        auth_ids = select_auth_event_ids(
            event_type,
            sender,
            state_key,
            content,
            version,
            head.state if auth_state is None else auth_state,
        )
        pdu: dict[str, Any] = {
            "room_id": head.room_id,
            "type": event_type,
            "sender": sender,
            "content": content,
            "depth": depth if depth is not None else head.max_depth + 1,
            "origin_server_ts": next(_TS),
            "prev_events": list(head.extremities if prev is None else prev),
            "auth_events": auth_ids,
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        signed = sign_event(
            pdu, self.key_server.signing_key, self.name, self.key_server.key_id, version
        )
        event = Event.from_pdu(signed, version)
        if advance:
            head.extremities = [event.event_id]
            head.max_depth = pdu["depth"]
            if state_key is not None:
                head.state[(event_type, state_key)] = event.event_id
        return signed, event.event_id


class RemoteRoom:
    """A room that lives on ``remote``, built linearly by bob (power 100): create, his
    join, power levels, public join rules; :meth:`input` gives its PDUs to mxfed."""

    def __init__(self, remote: RemoteServer, version: str = "10") -> None:
        self.remote = remote
        self.version = version
        self.bob = remote.user("bob")
        self.head = RoomHead(f"!remote{uuid.uuid4().hex[:12]}:{remote.name}", version, [], 0, {})
        self.pdus: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        create: dict[str, Any] = {"room_version": version}
        if not room_version(version).creator_is_sender:
            create["creator"] = self.bob
        self.add("m.room.create", create, "")
        self.add("m.room.member", {"membership": "join"}, self.bob)
        self.add("m.room.power_levels", {"users": {self.bob: 100}}, "")
        self.add("m.room.join_rules", {"join_rule": "public"}, "")

    def add(self, event_type: str, content: dict[str, Any], state_key: str | None = None) -> str:
        pdu, event_id = self.remote.pdu(self.head, event_type, self.bob, content, state_key)
        return self.take(pdu, event_id)

    def take(self, pdu: dict[str, Any], event_id: str) -> str:
        """``pdu`` (built on :attr:`head`) is the room's next event."""
        self.pdus[event_id] = pdu
        self.order.append(event_id)
        return event_id

    def state_before(self, event_id: str) -> list[str]:
        """Ids of the state before ``event_id`` (a linear room: every earlier state event)."""
        state: dict[tuple[str, str], str] = {}
        for earlier in self.order[: self.order.index(event_id)]:
            pdu = self.pdus[earlier]
            if "state_key" in pdu:
                state[(pdu["type"], pdu["state_key"])] = earlier
        return list(state.values())

    def state_ids(self) -> list[str]:
        return [e for e in self.order if "state_key" in self.pdus[e]]

    async def input(
        self,
        events: EventsService,
        kind: int,
        event_ids: Sequence[str],
        state_before: dict[str, list[str]] | None = None,
    ) -> dict[str, tuple[int, str]]:
        """``event_ids`` given to mxfed (InputPdus of ``kind``): status and error of each."""
        reply = await events.stub.InputPdus(
            events_pb2.InputPdusRequest(
                room_id=self.head.room_id,
                room_version=self.version,
                origin=self.remote.name,
                kind=kind,  # type: ignore[arg-type]
                pdus=[encode_json(self.pdus[e]) for e in event_ids],
                state_before=[
                    events_pb2.StateBefore(event_id=e, state_event_ids=ids)
                    for e, ids in (state_before or {}).items()
                ],
            )
        )
        return {r.event_id: (r.status, r.error) for r in reply.results}


async def _public_room_with_remote_member(
    events: EventsService, remote: RemoteServer, version: str = "10"
) -> tuple[str, str]:
    room_id = await events.create_room(version, preset="public_chat")
    head = await events.head(room_id)
    alice = remote.user("alice")
    join, join_id = remote.pdu(head, "m.room.member", alice, {"membership": "join"}, alice)
    response = await events.transaction(remote.name, [join])
    assert response == {"pdus": {join_id: {}}}
    return room_id, alice
