"""gRPC layer of the directory (``mxfed.events.v1.Directory``)."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import orjson

from mxfed.federation_client.from_config import federation_client_from_config
from mxfed.service_errors import BadRequest, reports_service_errors
from mxfed.service_runtime import ServiceContext
from mxfed_api.events.v1 import directory_pb2, directory_pb2_grpc
from services.events.directory.logic import Directory
from services.events.directory.summaries import JsonDict, PublicRoomsQuery

log = logging.getLogger(__name__)

T = TypeVar("T")


def _entry_message(entry: Any) -> directory_pb2.PublicRoom | None:
    """A chunk entry as a message; None when it lacks what the spec requires."""
    if not isinstance(entry, dict) or not isinstance(entry.get("room_id"), str):
        return None
    members = entry.get("num_joined_members")
    message = directory_pb2.PublicRoom(
        room_id=entry["room_id"],
        num_joined_members=members if isinstance(members, int) else 0,
        world_readable=entry.get("world_readable") is True,
        guest_can_join=entry.get("guest_can_join") is True,
    )
    for field in ("name", "topic", "canonical_alias", "avatar_url", "join_rule", "room_type"):
        value = entry.get(field)
        if isinstance(value, str):
            setattr(message, field, value)
    return message


def public_rooms_reply(body: JsonDict) -> directory_pb2.QueryPublicRoomsResponse:
    chunk = [m for m in (_entry_message(e) for e in body.get("chunk", [])) if m is not None]
    total = body.get("total_room_count_estimate")
    next_batch = body.get("next_batch")
    prev_batch = body.get("prev_batch")
    return directory_pb2.QueryPublicRoomsResponse(
        chunk=chunk,
        next_batch=next_batch if isinstance(next_batch, str) else "",
        prev_batch=prev_batch if isinstance(prev_batch, str) else "",
        total_room_count_estimate=total if isinstance(total, int) else 0,
        response_json=orjson.dumps(body),
    )


class DirectoryServicer(directory_pb2_grpc.DirectoryServicer):
    def __init__(self, directory: Directory) -> None:
        self.directory = directory

    @reports_service_errors
    async def PerformPublishRoom(  # noqa: N802
        self, request: directory_pb2.PerformPublishRoomRequest, context: Any
    ) -> directory_pb2.PerformPublishRoomResponse:
        if not request.room_id:
            raise BadRequest("room_id is required", "M_MISSING_PARAM")
        was = await self.directory.publish(request.room_id, request.network_id)
        log.info("room published", extra={"room_id": request.room_id})
        return directory_pb2.PerformPublishRoomResponse(was_published=was)

    @reports_service_errors
    async def PerformUnpublishRoom(  # noqa: N802
        self, request: directory_pb2.PerformUnpublishRoomRequest, context: Any
    ) -> directory_pb2.PerformUnpublishRoomResponse:
        if not request.room_id:
            raise BadRequest("room_id is required", "M_MISSING_PARAM")
        was = await self.directory.unpublish(request.room_id)
        return directory_pb2.PerformUnpublishRoomResponse(was_published=was)

    @reports_service_errors
    async def QueryPublicRooms(  # noqa: N802
        self, request: directory_pb2.QueryPublicRoomsRequest, context: Any
    ) -> directory_pb2.QueryPublicRoomsResponse:
        query = PublicRoomsQuery(
            limit=request.limit,
            since=request.since,
            search=request.generic_search_term,
        )
        if request.HasField("room_types"):
            query.room_types = list(request.room_types.room_types)
            query.include_untyped = request.room_types.include_untyped
        if request.server and request.server != self.directory.server_name:
            body = await self.directory.remote_public_rooms(
                request.server,
                query,
                include_all_networks=request.include_all_networks,
                third_party_instance_id=request.third_party_instance_id,
            )
        else:
            body = await self.directory.public_rooms(
                query,
                include_all_networks=request.include_all_networks,
                third_party_instance_id=request.third_party_instance_id,
                for_federation=request.for_federation,
            )
        return public_rooms_reply(body)

    @reports_service_errors
    async def QueryHierarchy(  # noqa: N802
        self, request: directory_pb2.QueryHierarchyRequest, context: Any
    ) -> directory_pb2.QueryHierarchyResponse:
        if not request.room_id:
            raise BadRequest("room_id is required", "M_MISSING_PARAM")
        body = await self.directory.hierarchy(
            request.room_id, request.suggested_only, request.as_server
        )
        return directory_pb2.QueryHierarchyResponse(response_json=orjson.dumps(body))

    @reports_service_errors
    async def QueryRoomsOfUser(  # noqa: N802
        self, request: directory_pb2.QueryRoomsOfUserRequest, context: Any
    ) -> directory_pb2.QueryRoomsOfUserResponse:
        if not request.user_id:
            raise BadRequest("user_id is required", "M_MISSING_PARAM")
        rooms = await self.directory.rooms_of_user(request.user_id)
        return directory_pb2.QueryRoomsOfUserResponse(room_ids=rooms)


def add_directory_servicer(context: ServiceContext) -> Directory:
    """Register the Directory service (and its federation client) on the events server."""
    client = federation_client_from_config(context.config)
    context.on_stop(client.close)
    directory = Directory(context.pool, context.config.server_name, client)
    directory_pb2_grpc.add_DirectoryServicer_to_server(DirectoryServicer(directory), context.server)
    return directory
