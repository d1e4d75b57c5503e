"""What the doctor asks other mxfed services: our delivery state for a server
(sender, ``QueryDestinations``) and whether a room's ACL lets it in (events,
``QueryServerAllowed``). Over gRPC only; their tables are theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from matrix_protocol.canonical_json import decode_json
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc
from mxfed_api.sender.v1 import sender_pb2, sender_pb2_grpc

CALL_TIMEOUT = 10.0
SERVER_ACL = "m.room.server_acl"


class ServiceUnavailable(Exception):
    """An mxfed service did not answer; the step that needed it cannot tell."""

    def __init__(self, service: str, code: str, details: str) -> None:
        super().__init__(f"the {service} service did not answer: {code} {details}".rstrip())
        self.service = service


@dataclass(frozen=True)
class DeliveryState:
    """The sender's queue and backoff for one destination (ms timestamps, 0: never)."""

    pending_pdus: int
    pending_edus: int
    oldest_pending_ts: int
    last_success_ts: int
    backoff_until_ts: int
    retry_interval_ms: int
    failures: int
    last_error: str
    lease_owner: str


class DeliveryStates(Protocol):
    async def delivery_state(self, server_name: str) -> DeliveryState | None:
        """``None`` when the sender has no record of the destination."""
        ...


@dataclass(frozen=True)
class RoomAccess:
    room_exists: bool
    allowed: bool
    reason: str = ""
    #: The room's ``m.room.server_acl`` content, when the ACL denied.
    acl: dict[str, Any] | None = None


class RoomAccessChecks(Protocol):
    async def room_access(self, room_id: str, server_name: str) -> RoomAccess: ...


class GrpcDeliveryStates:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = sender_pb2_grpc.SenderStub(channel)

    async def delivery_state(self, server_name: str) -> DeliveryState | None:
        try:
            reply = await self._stub.QueryDestinations(
                sender_pb2.QueryDestinationsRequest(
                    destinations=[server_name], include_idle=True, limit=1
                ),
                timeout=CALL_TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            raise ServiceUnavailable("sender", exc.code().name, exc.details() or "") from exc
        for info in reply.destinations:
            if info.destination == server_name:
                return DeliveryState(
                    pending_pdus=info.pending_pdus,
                    pending_edus=info.pending_edus,
                    oldest_pending_ts=info.oldest_pending_ts,
                    last_success_ts=info.last_success_ts,
                    backoff_until_ts=info.backoff_until_ts,
                    retry_interval_ms=info.retry_interval_ms,
                    failures=info.failures,
                    last_error=info.last_error,
                    lease_owner=info.lease_owner,
                )
        return None


class GrpcRoomAccessChecks:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = events_pb2_grpc.EventsStub(channel)

    async def room_access(self, room_id: str, server_name: str) -> RoomAccess:
        try:
            reply = await self._stub.QueryServerAllowed(
                events_pb2.QueryServerAllowedRequest(
                    room_id=room_id, server_name=server_name, check_acl=True
                ),
                timeout=CALL_TIMEOUT,
            )
            acl = None
            if reply.room_exists and not reply.allowed:
                state = await self._stub.QueryCurrentState(
                    events_pb2.QueryCurrentStateRequest(
                        room_id=room_id,
                        filter=[events_pb2.StateKeyFilter(type=SERVER_ACL, state_key="")],
                    ),
                    timeout=CALL_TIMEOUT,
                )
                for record in state.events:
                    content = decode_json(record.pdu_json).get("content")
                    acl = content if isinstance(content, dict) else None
        except grpc.aio.AioRpcError as exc:
            raise ServiceUnavailable("events", exc.code().name, exc.details() or "") from exc
        return RoomAccess(reply.room_exists, reply.allowed, reply.reason, acl)
