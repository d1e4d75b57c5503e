"""``GET /_matrix/federation/v1/query/directory?room_alias=#a:b``.

Spec: https://spec.matrix.org/v1.19/server-server-api/#querying-for-information
Only aliases on this server are answered; the events
service (``QueryAlias``) knows the room and its likely resident servers.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from gateway.errors import MatrixError, not_found
from gateway.responses import JsonResponse
from gateway.room_access import QUERY_TIMEOUT, events_stub
from gateway.xmatrix_auth import require_origin
from mxfed_api.events.v1 import events_pb2

router = APIRouter()


@router.get("/_matrix/federation/v1/query/directory")
async def query_directory(
    request: Request, room_alias: str | None = None, _: str = Depends(require_origin)
) -> JsonResponse:
    if room_alias is None:
        raise MatrixError(400, "M_MISSING_PARAM", "Missing required query parameter 'room_alias'")
    server_name = request.app.state.config.server_name
    if not room_alias.startswith("#") or ":" not in room_alias:
        raise MatrixError(400, "M_INVALID_PARAM", "room_alias is not a room alias")
    if room_alias.split(":", 1)[1] != server_name:
        raise not_found("Room alias is not on this server")
    reply = await events_stub(request).QueryAlias(
        events_pb2.QueryAliasRequest(alias=room_alias), timeout=QUERY_TIMEOUT
    )
    if not reply.found:
        raise not_found("Room alias not found")
    servers = list(dict.fromkeys([*reply.servers])) or [server_name]
    return JsonResponse({"room_id": reply.room_id, "servers": servers})
