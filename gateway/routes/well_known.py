"""``GET /.well-known/matrix/server`` .

Spec: https://spec.matrix.org/v1.19/server-server-api/#server-discovery


Served only when ``well_known_server`` is configured (delegation to another
host/port); otherwise the endpoint does not exist, so remote servers fall
through to SRV and port 8448 lookups.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.errors import MatrixError
from gateway.responses import JsonResponse

router = APIRouter()


@router.get("/.well-known/matrix/server")
async def well_known_server(request: Request) -> JsonResponse:
    delegated = request.app.state.config.well_known_server
    if not delegated:
        raise MatrixError(404, "M_UNRECOGNIZED", "Unrecognized request")
    return JsonResponse({"m.server": delegated})
