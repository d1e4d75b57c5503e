"""``GET /health``: 200 ``OK`` while this gateway serves (probes, load balancers).

Not part of the Matrix API (Synapse serves the same path); it says only that
this process answers HTTPS, so a liveness probe never restarts a gateway
because a service behind it is down.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import PlainTextResponse

from mxfed.probes import GATEWAY_HEALTH_PATH

router = APIRouter()


@router.get(GATEWAY_HEALTH_PATH, include_in_schema=False)
async def health() -> PlainTextResponse:
    return PlainTextResponse("OK")
