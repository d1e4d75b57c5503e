"""Device-list and signing-key EDUs to the servers that share a room with a
local user: rooms from the events Directory (QueryRoomsOfUser), delivery by
the sender (PerformSendEdus with ``room_ids``)."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import grpc

from matrix_protocol.canonical_json import encode_json
from mxfed_api.events.v1 import directory_pb2, directory_pb2_grpc
from mxfed_api.sender.v1 import sender_pb2, sender_pb2_grpc

log = logging.getLogger(__name__)

CALL_TIMEOUT = 10.0


class EduNotifier(Protocol):
    async def send(self, user_id: str, edu_type: str, content: dict[str, Any]) -> int: ...


class GrpcEduNotifier:
    """Best effort: a failure is logged, never fails the change that caused it
    (a receiver that misses an update resyncs on the next one's prev_id)."""

    def __init__(self, events_channel: grpc.aio.Channel, sender_channel: grpc.aio.Channel) -> None:
        self.directory = directory_pb2_grpc.DirectoryStub(events_channel)
        self.sender = sender_pb2_grpc.SenderStub(sender_channel)

    async def send(self, user_id: str, edu_type: str, content: dict[str, Any]) -> int:
        try:
            rooms = await self.directory.QueryRoomsOfUser(
                directory_pb2.QueryRoomsOfUserRequest(user_id=user_id),
                timeout=CALL_TIMEOUT,
                wait_for_ready=True,
            )
            if not rooms.room_ids:
                return 0
            reply = await self.sender.PerformSendEdus(
                sender_pb2.PerformSendEdusRequest(
                    edus=[
                        sender_pb2.Edu(
                            edu_type=edu_type,
                            content_json=encode_json(content),
                            room_ids=list(rooms.room_ids),
                        )
                    ]
                ),
                timeout=CALL_TIMEOUT,
                wait_for_ready=True,
            )
            return reply.queued
        except grpc.aio.AioRpcError as error:
            log.warning(
                "could not queue a device EDU",
                extra={"user_id": user_id, "edu_type": edu_type, "error": str(error.details())},
            )
            return 0


class RecordingNotifier:
    """For tests and tools: keeps what would have been sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    async def send(self, user_id: str, edu_type: str, content: dict[str, Any]) -> int:
        self.sent.append((user_id, edu_type, content))
        return 1
