"""The room directory and spaces: ``/publicRooms`` (GET and POST) and ``/hierarchy``.

Spec: https://spec.matrix.org/v1.19/server-server-api/#published-room-directory and
https://spec.matrix.org/v1.19/server-server-api/#spaces
The events process's Directory service computes
everything from the rooms' current state; these handlers check parameters,
make one call and return its JSON.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.errors import MatrixError, bad_json
from gateway.room_access import QUERY_TIMEOUT
from gateway.xmatrix_auth import require_origin
from mxfed_api.events.v1 import directory_pb2, directory_pb2_grpc

router = APIRouter()

_PREFIX = "/_matrix/federation/v1"
_MAX_LIMIT = 2**31 - 1


def directory_stub(request: Request) -> directory_pb2_grpc.DirectoryStub:
    return directory_pb2_grpc.DirectoryStub(request.app.state.services.channel("events"))


def _invalid(error: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", error)


def _query_bool(value: str | None, name: str) -> bool:
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise _invalid(f"'{name}' must be true or false")


def _limit(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise _invalid("'limit' must be an integer") from None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _invalid("'limit' must be a non-negative integer")
    return min(value, _MAX_LIMIT)


async def _public_rooms(request: Request, query: directory_pb2.QueryPublicRoomsRequest) -> Response:
    query.for_federation = True
    reply = await directory_stub(request).QueryPublicRooms(query, timeout=QUERY_TIMEOUT)
    return Response(bytes(reply.response_json), media_type="application/json")


@router.get(_PREFIX + "/publicRooms")
async def get_public_rooms(
    request: Request,
    limit: str | None = None,
    since: str | None = None,
    include_all_networks: str | None = None,
    third_party_instance_id: str | None = None,
    _: str = Depends(require_origin),
) -> Response:
    query = directory_pb2.QueryPublicRoomsRequest(
        limit=_limit(limit),
        since=since or "",
        include_all_networks=_query_bool(include_all_networks, "include_all_networks"),
        third_party_instance_id=third_party_instance_id or "",
    )
    return await _public_rooms(request, query)


@router.post(_PREFIX + "/publicRooms")
async def post_public_rooms(request: Request, _: str = Depends(require_origin)) -> Response:
    body = request.state.json_body
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise bad_json("The body must be a JSON object")
    since = body.get("since")
    if since is not None and not isinstance(since, str):
        raise _invalid("'since' must be a string")
    include_all = body.get("include_all_networks", False)
    if not isinstance(include_all, bool):
        raise _invalid("'include_all_networks' must be a boolean")
    instance = body.get("third_party_instance_id")
    if instance is not None and not isinstance(instance, str):
        raise _invalid("'third_party_instance_id' must be a string")
    query = directory_pb2.QueryPublicRoomsRequest(
        limit=_limit(body.get("limit")),
        since=since or "",
        include_all_networks=include_all,
        third_party_instance_id=instance or "",
    )
    search_filter = body.get("filter")
    if search_filter is not None:
        if not isinstance(search_filter, dict):
            raise _invalid("'filter' must be an object")
        term = search_filter.get("generic_search_term")
        if term is not None and not isinstance(term, str):
            raise _invalid("'filter.generic_search_term' must be a string")
        query.generic_search_term = term or ""
        room_types = search_filter.get("room_types")
        if room_types is not None:
            if not isinstance(room_types, list) or not all(
                t is None or isinstance(t, str) for t in room_types
            ):
                raise _invalid("'filter.room_types' must be a list of strings and nulls")
            query.room_types.CopyFrom(
                directory_pb2.RoomTypeFilter(
                    room_types=[t for t in room_types if t is not None],
                    include_untyped=None in room_types,
                )
            )
    return await _public_rooms(request, query)


@router.get(_PREFIX + "/hierarchy/{room_id}")
async def get_hierarchy(
    room_id: str,
    request: Request,
    suggested_only: str | None = None,
    origin: str = Depends(require_origin),
) -> Response:
    reply = await directory_stub(request).QueryHierarchy(
        directory_pb2.QueryHierarchyRequest(
            room_id=room_id,
            suggested_only=_query_bool(suggested_only, "suggested_only"),
            as_server=origin,
        ),
        timeout=QUERY_TIMEOUT,
    )
    return Response(bytes(reply.response_json), media_type="application/json")
