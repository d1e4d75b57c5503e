"""``Mx``: gRPC access to a running mxfed's events and membership services,
as the interop tests drive it (create rooms, send, join, read state and timeline)."""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from mxfed_api.events.v1 import events_pb2, events_pb2_grpc, membership_pb2, membership_pb2_grpc
from tests.support.mxfed_process import MxfedProcess


class Mx:
    """gRPC access to the running mxfed's events and membership services."""

    def __init__(self, process: MxfedProcess) -> None:
        self.process = process
        self.server_name = process.server_name
        self.channel = process.channel("events")
        self.events = events_pb2_grpc.EventsStub(self.channel)
        self.membership = membership_pb2_grpc.MembershipStub(self.channel)

    def user(self, name: str) -> str:
        return f"@{name}{secrets.token_hex(3)}:{self.server_name}"

    async def create_room(
        self, creator: str, preset: str = "public_chat", version: str = "", alias: str = ""
    ) -> str:
        reply = await self.events.PerformCreateRoom(
            events_pb2.PerformCreateRoomRequest(
                creator=creator, preset=preset, room_version=version, alias_localpart=alias
            ),
            timeout=30,
        )
        return reply.room_id

    async def state(self, room_id: str) -> dict[tuple[str, str], dict[str, Any]]:
        reply = await self.events.QueryCurrentState(
            events_pb2.QueryCurrentStateRequest(room_id=room_id), timeout=10
        )
        state = {}
        for record in reply.events:
            pdu = orjson.loads(record.pdu_json)
            state[(pdu["type"], pdu["state_key"])] = pdu
        return state

    async def room_info(self, room_id: str) -> events_pb2.QueryRoomInfoResponse:
        return await self.events.QueryRoomInfo(
            events_pb2.QueryRoomInfoRequest(room_id=room_id), timeout=10
        )

    async def has_full_state(self, room_id: str) -> bool:
        """Not (or no longer) a partial-state room: its resync, if any, has finished."""
        return (await self.room_info(room_id)).resync_state == events_pb2.RESYNC_STATE_FULL_STATE

    async def membership_of(self, room_id: str, user_id: str) -> str | None:
        member = (await self.state(room_id)).get(("m.room.member", user_id))
        return member["content"]["membership"] if member else None

    async def bodies(self, room_id: str) -> list[str]:
        reply = await self.events.QueryTimeline(
            events_pb2.QueryTimelineRequest(room_id=room_id, backwards=True, limit=100),
            timeout=10,
        )
        found = []
        for record in reply.events:
            pdu = orjson.loads(record.pdu_json)
            if pdu["type"] == "m.room.message":
                found.append(pdu["content"].get("body"))
        return found

    async def send_text(self, room_id: str, sender: str, text: str) -> str:
        reply = await self.events.PerformSendEvent(
            events_pb2.PerformSendEventRequest(
                room_id=room_id,
                sender=sender,
                type="m.room.message",
                content_json=orjson.dumps({"msgtype": "m.text", "body": text}),
            ),
            timeout=30,
        )
        return reply.event_id

    async def send_state(
        self, room_id: str, sender: str, event_type: str, content: dict, state_key: str = ""
    ) -> str:
        reply = await self.events.PerformSendEvent(
            events_pb2.PerformSendEventRequest(
                room_id=room_id,
                sender=sender,
                type=event_type,
                state_key=state_key,
                content_json=orjson.dumps(content),
            ),
            timeout=30,
        )
        return reply.event_id

    async def status_of(self, event_id: str) -> int | None:
        """The stored status (``events_pb2.EVENT_STATUS_ACCEPTED``...) or None if unknown."""
        reply = await self.events.QueryEvents(
            events_pb2.QueryEventsRequest(event_ids=[event_id]), timeout=10
        )
        return next((r.status for r in reply.events if r.event_id == event_id), None)

    async def timeline_ids(self, room_id: str, limit: int = 500) -> list[str]:
        """The room's timeline as local readers see it, newest first."""
        reply = await self.events.QueryTimeline(
            events_pb2.QueryTimelineRequest(room_id=room_id, backwards=True, limit=limit),
            timeout=10,
        )
        return [record.event_id for record in reply.events]

    async def join(
        self, room: str, user_id: str, via: list[str]
    ) -> membership_pb2.PerformJoinResponse:
        return await self.membership.PerformJoin(
            membership_pb2.PerformJoinRequest(room_id_or_alias=room, user_id=user_id, servers=via),
            timeout=120,
        )

    async def close(self) -> None:
        await self.channel.close()
