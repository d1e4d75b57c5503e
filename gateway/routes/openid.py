"""``GET /_matrix/federation/v1/openid/userinfo?access_token=...`` (no X-Matrix).

Spec: https://spec.matrix.org/v1.19/server-server-api/#openid
Tokens are minted for local users by the keys
process's Accounts service (``PerformMintOpenIdToken``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.errors import MatrixError
from gateway.responses import JsonResponse
from gateway.room_access import QUERY_TIMEOUT
from gateway.routes.queries import accounts_stub
from mxfed_api.accounts.v1 import accounts_pb2

router = APIRouter()


@router.get("/_matrix/federation/v1/openid/userinfo")
async def openid_userinfo(request: Request, access_token: str | None = None) -> JsonResponse:
    if not access_token:
        raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
    reply = await accounts_stub(request).QueryOpenIdToken(
        accounts_pb2.QueryOpenIdTokenRequest(access_token=access_token), timeout=QUERY_TIMEOUT
    )
    if not reply.found:
        raise MatrixError(401, "M_UNKNOWN_TOKEN", "Access token unknown or expired")
    return JsonResponse({"sub": reply.user_id})
