"""Devices and end-to-end keys of local users: ``/user/devices/{userId}``,
``/user/keys/query`` and ``/user/keys/claim``.

Spec: https://spec.matrix.org/v1.19/server-server-api/#device-management and
https://spec.matrix.org/v1.19/server-server-api/#end-to-end-encryption
Every user asked about must be ours (400
``M_INVALID_PARAM`` otherwise); the Accounts service answers
with the response body.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.errors import bad_json
from gateway.room_access import QUERY_TIMEOUT
from gateway.routes.queries import accounts_stub, local_user
from gateway.xmatrix_auth import require_origin
from matrix_protocol.canonical_json import encode_json
from mxfed_api.accounts.v1 import accounts_pb2

router = APIRouter()

_PREFIX = "/_matrix/federation/v1"


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def _map_of_users(request: Request, field: str) -> dict[str, Any]:
    body = request.state.json_body
    if not isinstance(body, dict):
        raise bad_json("The body must be a JSON object")
    users = body.get(field)
    if not isinstance(users, dict):
        raise bad_json(f"'{field}' must be an object")
    for user_id in users:
        local_user(request, user_id, field)
    return users


@router.get(_PREFIX + "/user/devices/{user_id}")
async def user_devices(
    user_id: str, request: Request, _: str = Depends(require_origin)
) -> Response:
    reply = await accounts_stub(request).QueryUserDevices(
        accounts_pb2.QueryUserDevicesRequest(user_id=local_user(request, user_id)),
        timeout=QUERY_TIMEOUT,
    )
    return _json(bytes(reply.response_json))


@router.post(_PREFIX + "/user/keys/query")
async def query_keys(request: Request, _: str = Depends(require_origin)) -> Response:
    users = _map_of_users(request, "device_keys")
    for user_id, devices in users.items():
        if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
            raise bad_json(f"device_keys[{user_id}] must be a list of device ids")
    reply = await accounts_stub(request).QueryKeys(
        accounts_pb2.QueryKeysRequest(device_keys_json=encode_json(users), local_only=True),
        timeout=QUERY_TIMEOUT,
    )
    return _json(bytes(reply.response_json))


@router.post(_PREFIX + "/user/keys/claim")
async def claim_keys(request: Request, _: str = Depends(require_origin)) -> Response:
    users = _map_of_users(request, "one_time_keys")
    for user_id, devices in users.items():
        if not isinstance(devices, dict) or not all(
            isinstance(algorithm, str) for algorithm in devices.values()
        ):
            raise bad_json(f"one_time_keys[{user_id}] must map device ids to algorithms")
    reply = await accounts_stub(request).PerformClaimKeys(
        accounts_pb2.PerformClaimKeysRequest(one_time_keys_json=encode_json(users)),
        timeout=QUERY_TIMEOUT,
    )
    return _json(bytes(reply.response_json))
