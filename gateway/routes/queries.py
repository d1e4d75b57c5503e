"""``GET /_matrix/federation/v1/query/profile`` and unknown query types.

Spec: https://spec.matrix.org/v1.19/server-server-api/#querying-for-information
Profiles of local users are kept by the keys
process's Accounts service. ``/query/directory`` is served by
``gateway.routes.directory_query``, which must come before this module in
``ROUTE_MODULES`` (this one answers every other ``/query/{queryType}``
with 404 ``M_UNRECOGNIZED``).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.errors import MatrixError, not_found
from gateway.room_access import QUERY_TIMEOUT
from gateway.xmatrix_auth import require_origin
from mxfed_api.accounts.v1 import accounts_pb2, accounts_pb2_grpc

router = APIRouter()

_PREFIX = "/_matrix/federation/v1"


def accounts_stub(request: Request) -> accounts_pb2_grpc.AccountsStub:
    return accounts_pb2_grpc.AccountsStub(request.app.state.services.channel("accounts"))


def local_user(request: Request, user_id: str | None, name: str = "user_id") -> str:
    """The user id, checked to be well formed and on this server (else 400)."""
    if user_id is None:
        raise MatrixError(400, "M_MISSING_PARAM", f"Missing required parameter '{name}'")
    localpart, sep, server = user_id[1:].partition(":")
    if not user_id.startswith("@") or not sep or not localpart:
        raise MatrixError(400, "M_INVALID_PARAM", f"'{name}' is not a user id")
    if server != request.app.state.config.server_name:
        raise MatrixError(400, "M_INVALID_PARAM", "User is not hosted on this homeserver")
    return user_id


@router.get(_PREFIX + "/query/profile")
async def query_profile(
    request: Request,
    user_id: str | None = None,
    field: str | None = None,
    _: str = Depends(require_origin),
) -> Response:
    user_id = local_user(request, user_id)
    reply = await accounts_stub(request).QueryProfile(
        accounts_pb2.QueryProfileRequest(user_id=user_id, field=field or ""),
        timeout=QUERY_TIMEOUT,
    )
    if not reply.found:
        raise not_found("Profile was not found" if not field else "The field is not set")
    return Response(bytes(reply.profile_json), media_type="application/json")


@router.get(_PREFIX + "/query/{query_type}")
async def unknown_query(query_type: str, _: str = Depends(require_origin)) -> Response:
    raise MatrixError(404, "M_UNRECOGNIZED", f"Unknown query type {query_type!r}")
