"""Server keys and the notary .

Spec: https://spec.matrix.org/v1.19/server-server-api/#retrieving-server-keys


``GET /_matrix/key/v2/server``, ``GET /_matrix/key/v2/query/{serverName}`` and
``POST /_matrix/key/v2/query``; none of them is authenticated. The key
objects come from the keys service as JSON bytes and are passed through
without being parsed again.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from gateway.errors import MatrixError, bad_json
from matrix_protocol.canonical_json import decode_json
from mxfed_api.keys.v1 import keys_pb2, keys_pb2_grpc

router = APIRouter()

_MAX_INT64 = 2**63 - 1


def _keys(request: Request) -> keys_pb2_grpc.KeysStub:
    return keys_pb2_grpc.KeysStub(request.app.state.services.channel("keys"))


def _json_bytes(body: bytes) -> Response:
    return Response(body, media_type="application/json")


async def _server_keys(request: Request, criteria: list[keys_pb2.ServerKeyCriteria]) -> Response:
    found: list[bytes] = []
    if criteria:
        reply = await _keys(request).QueryServerKeys(
            keys_pb2.QueryServerKeysRequest(criteria=criteria)
        )
        found = list(reply.server_keys_json)
    return _json_bytes(b'{"server_keys":[' + b",".join(found) + b"]}")


@router.get("/_matrix/key/v2/server")
async def own_server_keys(request: Request) -> Response:
    reply = await _keys(request).QueryOwnServerKeys(keys_pb2.QueryOwnServerKeysRequest())
    return _json_bytes(reply.server_keys_json)


@router.get("/_matrix/key/v2/query/{server_name}")
async def query_server_keys(
    request: Request, server_name: str, minimum_valid_until_ts: int = Query(0, ge=0, le=_MAX_INT64)
) -> Response:
    return await _server_keys(
        request,
        [
            keys_pb2.ServerKeyCriteria(
                server_name=server_name, minimum_valid_until_ts=minimum_valid_until_ts
            )
        ],
    )


def _criteria(body: Any) -> list[keys_pb2.ServerKeyCriteria]:
    if body is None:
        return []
    if not isinstance(body, dict):
        raise bad_json("body must be a JSON object")
    server_keys = body.get("server_keys", {})
    if not isinstance(server_keys, dict):
        raise bad_json("server_keys must be an object")
    criteria = []
    for server_name, key_ids in server_keys.items():
        if not isinstance(key_ids, dict):
            raise bad_json(f"server_keys.{server_name} must be an object")
        if not key_ids:
            criteria.append(keys_pb2.ServerKeyCriteria(server_name=server_name))
        for key_id, wanted in key_ids.items():
            if not isinstance(wanted, dict):
                raise bad_json(f"server_keys.{server_name}.{key_id} must be an object")
            minimum = wanted.get("minimum_valid_until_ts", 0)
            if (
                not isinstance(minimum, int)
                or isinstance(minimum, bool)
                or not 0 <= minimum <= _MAX_INT64
            ):
                raise MatrixError(
                    400, "M_INVALID_PARAM", "minimum_valid_until_ts must be a non-negative integer"
                )
            criteria.append(
                keys_pb2.ServerKeyCriteria(
                    server_name=server_name, key_ids=[key_id], minimum_valid_until_ts=minimum
                )
            )
    return criteria


@router.post("/_matrix/key/v2/query")
async def batch_query_server_keys(request: Request) -> Response:
    raw = await request.body()
    try:
        body = decode_json(raw) if raw.strip() else None
    except ValueError:
        raise MatrixError(400, "M_NOT_JSON", "Content not JSON") from None
    return await _server_keys(request, _criteria(body))
