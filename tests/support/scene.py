"""A whole running mxfed with a fake remote homeserver, for route and process tests.

``Scene`` holds a running mxfed, a ``FakeHomeserver`` playing the remote side,
and gRPC access to mxfed's events service. It builds PDUs on mxfed's current
view of a room and sends them in signed transactions. ``start_scene`` /
``stop_scene`` start and stop one; the ``scene`` fixture in ``tests/conftest.py``
gives each test module its own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from matrix_protocol.auth_events import select_auth_event_ids
from matrix_protocol.events import Event
from matrix_protocol.room_versions import RoomVersion, room_version
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc
from tests.support.databases import create_database, drop_database
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.mxfed_process import MxfedProcess

StateMap = dict[tuple[str, str], str]


@dataclass
class Room:
    room_id: str
    version: RoomVersion
    creator: str


class Scene:
    """A running mxfed, a fake remote homeserver, and gRPC access to mxfed's events service."""

    def __init__(self, mxfed: MxfedProcess, remote: FakeHomeserver) -> None:
        self.mxfed = mxfed
        self.remote = remote
        self.channel = mxfed.channel("events")
        self.events = events_pb2_grpc.EventsStub(self.channel)
        self.creator = f"@alice:{mxfed.server_name}"

    async def close(self) -> None:
        await self.channel.close()

    # Rooms ---------------------------------------------------------------------

    async def create_room(self, preset: str = "public_chat", **options: Any) -> Room:
        reply = await self.events.PerformCreateRoom(
            events_pb2.PerformCreateRoomRequest(creator=self.creator, preset=preset, **options),
            timeout=30,
        )
        info = await self.events.QueryRoomInfo(
            events_pb2.QueryRoomInfoRequest(room_id=reply.room_id), timeout=10
        )
        assert info.exists
        return Room(reply.room_id, room_version(info.room_version), self.creator)

    async def current_state(self, room_id: str) -> StateMap:
        reply = await self.events.QueryCurrentState(
            events_pb2.QueryCurrentStateRequest(room_id=room_id), timeout=10
        )
        state = {}
        for record in reply.events:
            pdu = orjson.loads(record.pdu_json)
            state[(pdu["type"], pdu["state_key"])] = record.event_id
        return state

    async def build(
        self,
        room: Room,
        sender: str,
        event_type: str,
        content: dict[str, Any],
        state_key: str | None = None,
        *,
        server: FakeHomeserver | None = None,
        prev_events: list[str] | None = None,
        state: StateMap | None = None,
        depth: int | None = None,
        **extra: Any,
    ) -> tuple[str, dict[str, Any]]:
        """A PDU built on mxfed's current view of the room (or the given prev events/state)."""
        info = await self.events.QueryRoomInfo(
            events_pb2.QueryRoomInfoRequest(room_id=room.room_id), timeout=10
        )
        if state is None:
            state = await self.current_state(room.room_id)
        auth_events = select_auth_event_ids(
            event_type, sender, state_key, content, room.version, state
        )
        return (server or self.remote).build_pdu(
            room.version,
            room_id=room.room_id,
            sender=sender,
            event_type=event_type,
            content=content,
            prev_events=prev_events or list(info.forward_extremities),
            auth_events=auth_events,
            depth=depth if depth is not None else info.max_depth + 1,
            state_key=state_key,
            **extra,
        )

    async def join(self, room: Room, user: str, server: FakeHomeserver | None = None) -> str:
        server = server or self.remote
        event_id, pdu = await self.build(
            room, user, "m.room.member", {"membership": "join"}, user, server=server
        )
        response = await self.send([pdu], server=server)
        assert response.status_code == 200, response.text
        assert response.json()["pdus"] == {event_id: {}}, response.json()
        return event_id

    async def joined_room(self, **options: Any) -> Room:
        room = await self.create_room(**options)
        await self.join(room, self.remote.user("bob"))
        return room

    async def send_local(
        self,
        room: Room,
        event_type: str,
        content: dict[str, Any],
        state_key: str | None = None,
    ) -> str:
        request = events_pb2.PerformSendEventRequest(
            room_id=room.room_id,
            sender=room.creator,
            type=event_type,
            content_json=orjson.dumps(content),
        )
        if state_key is not None:
            request.state_key = state_key
        return (await self.events.PerformSendEvent(request, timeout=30)).event_id

    # Federation requests -------------------------------------------------------

    async def send(
        self,
        pdus: list[dict[str, Any]],
        edus: list[dict[str, Any]] | None = None,
        *,
        txn_id: str | None = None,
        server: FakeHomeserver | None = None,
    ) -> httpx.Response:
        server = server or self.remote
        body: dict[str, Any] = {
            "origin": server.server_name,
            "origin_server_ts": int(time.time() * 1000),
            "pdus": pdus,
        }
        if edus is not None:
            body["edus"] = edus
        return await self.put_transaction(body, txn_id=txn_id, server=server)

    async def put_transaction(
        self, body: Any, *, txn_id: str | None = None, server: FakeHomeserver | None = None
    ) -> httpx.Response:
        server = server or self.remote
        uri = f"/_matrix/federation/v1/send/{quote(txn_id or uuid.uuid4().hex, safe='')}"
        return await server.federation_request(
            self.mxfed.federation_url, self.mxfed.server_name, "PUT", uri, body
        )

    async def put_raw(self, uri: str, raw: bytes, signed_content: Any = None) -> httpx.Response:
        """A request whose body is ``raw`` bytes (the signature covers ``signed_content``)."""
        headers = {
            "Authorization": self.remote.authorization(
                "PUT", self.mxfed.server_name, uri, signed_content
            ),
            "Content-Type": "application/json",
        }
        async with httpx.AsyncClient(verify=False, timeout=30) as client:
            return await client.put(self.mxfed.federation_url + uri, headers=headers, content=raw)

    async def get(self, uri: str, server: FakeHomeserver | None = None) -> httpx.Response:
        server = server or self.remote
        return await server.federation_request(
            self.mxfed.federation_url, self.mxfed.server_name, "GET", uri
        )

    # Reads -----------------------------------------------------------------------

    async def record(self, event_id: str) -> events_pb2.EventRecord | None:
        reply = await self.events.QueryEvents(
            events_pb2.QueryEventsRequest(event_ids=[event_id]), timeout=10
        )
        return next((r for r in reply.events if r.event_id == event_id), None)

    async def timeline_ids(self, room_id: str, limit: int = 200) -> list[str]:
        reply = await self.events.QueryTimeline(
            events_pb2.QueryTimelineRequest(room_id=room_id, backwards=True, limit=limit),
            timeout=10,
        )
        return [record.event_id for record in reply.events]


def event_id_of(pdu: dict[str, Any], version: RoomVersion) -> str:
    return Event.from_pdu(pdu, version).event_id


async def start_scene(
    tmp_path: Path, extra_config: dict[str, Any] | None = None, *, single_process: bool = False
) -> tuple[Scene, str]:
    database_url = await create_database("mxfed_rooms_test")
    remote = FakeHomeserver()
    await remote.start()
    mxfed = MxfedProcess(
        tmp_path / "mxfed",
        database_url,
        extra_config=extra_config or {},
        single_process=True if single_process else None,  # None: as the pass says
    )
    try:
        await asyncio.to_thread(mxfed.start)
    except BaseException:
        mxfed.stop()
        await remote.stop()
        await drop_database(database_url)
        raise
    return Scene(mxfed, remote), database_url


async def stop_scene(scene: Scene, database_url: str) -> None:
    await scene.close()
    # The remote first: its client's keep-alive connections would hold the gateway's
    # graceful shutdown open for its whole timeout.
    await scene.remote.stop()
    await asyncio.to_thread(scene.mxfed.stop)
    await drop_database(database_url)
