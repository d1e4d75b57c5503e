"""``GET /_matrix/federation/v1/version`` (spec: Server implementation)."""

from __future__ import annotations

from importlib.metadata import version

from fastapi import APIRouter

from gateway.responses import JsonResponse

router = APIRouter()

_BODY = {"server": {"name": "mxfed", "version": version("mxfed")}}


@router.get("/_matrix/federation/v1/version")
async def server_version() -> JsonResponse:
    return JsonResponse(_BODY)
