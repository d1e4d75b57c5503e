"""History for other servers: ``/backfill``, ``/get_missing_events``, ``/timestamp_to_event``.

Spec: https://spec.matrix.org/v1.19/server-server-api/#backfilling-and-retrieving-missing-events
and https://spec.matrix.org/v1.19/server-server-api/#server-access-control-lists-acls
(403 ``M_FORBIDDEN``); [Synapse] the requester needs a joined member, and events
it may not see come back redacted. The backfill service checks access and asks
the events process for the walk; these handlers check parameters and splice the
stored PDU bytes into the response without decoding them.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.errors import MatrixError, bad_json, not_found
from gateway.xmatrix_auth import require_origin
from matrix_protocol.canonical_json import decode_json
from mxfed.clock import now_ms
from mxfed_api.backfill.v1 import backfill_pb2, backfill_pb2_grpc

router = APIRouter()

_PREFIX = "/_matrix/federation/v1"
QUERY_TIMEOUT = 60.0
MAX_BACKFILL = 100
MAX_MISSING_EVENTS = 20
# Timestamps and depths travel as int64 to the backfill service.
_INT64 = range(-(2**63), 2**63)
_MISSING = object()


def _stub(request: Request) -> backfill_pb2_grpc.BackfillStub:
    return backfill_pb2_grpc.BackfillStub(request.app.state.services.channel("backfill"))


def _missing_param(name: str) -> MatrixError:
    return MatrixError(400, "M_MISSING_PARAM", f"Missing required query parameter '{name}'")


def _int_param(request: Request, name: str) -> int:
    value = request.query_params.get(name)
    if value is None:
        raise _missing_param(name)
    try:
        number = int(value)
    except ValueError:
        raise MatrixError(400, "M_INVALID_PARAM", f"'{name}' must be an integer") from None
    if number not in _INT64:
        raise MatrixError(400, "M_INVALID_PARAM", f"'{name}' is out of range")
    return number


def _json_response(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@router.get(_PREFIX + "/backfill/{room_id}")
async def get_backfill(
    room_id: str, request: Request, origin: str = Depends(require_origin)
) -> Response:
    event_ids = request.query_params.getlist("v")
    if not event_ids:
        raise _missing_param("v")
    limit = _int_param(request, "limit")
    if limit < 0:
        raise MatrixError(400, "M_INVALID_PARAM", "'limit' must not be negative")
    reply = await _stub(request).QueryBackfill(
        backfill_pb2.QueryBackfillRequest(
            origin=origin, room_id=room_id, event_ids=event_ids, limit=min(limit, MAX_BACKFILL)
        ),
        timeout=QUERY_TIMEOUT,
    )
    server_name = request.app.state.config.server_name
    body = (
        b'{"origin":'
        + orjson.dumps(server_name)
        + b',"origin_server_ts":'
        + str(now_ms()).encode()
        + b',"pdus":['
        + b",".join(bytes(pdu) for pdu in reply.pdus)
        + b"]}"
    )
    return _json_response(body)


def _parse_missing_events_body(body: Any) -> tuple[list[str], list[str], int, int]:
    if not isinstance(body, dict):
        raise bad_json("The body must be a JSON object")
    lists = []
    for key in ("earliest_events", "latest_events"):
        value = body.get(key, _MISSING)
        if value is _MISSING:
            raise bad_json(f"'{key}' is required")
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise bad_json(f"'{key}' must be a list of event ids")
        lists.append(value)
    limit, min_depth = body.get("limit", 10), body.get("min_depth", 0)
    if not _is_int(limit):
        raise bad_json("'limit' must be an integer")
    if not _is_int(min_depth):
        raise bad_json("'min_depth' must be an integer")
    if min_depth not in _INT64:
        raise MatrixError(400, "M_INVALID_PARAM", "'min_depth' is out of range")
    return lists[0], lists[1], limit, min_depth


@router.post(_PREFIX + "/get_missing_events/{room_id}")
async def post_get_missing_events(
    room_id: str, request: Request, origin: str = Depends(require_origin)
) -> Response:
    body = getattr(request.state, "json_body", _MISSING)
    if body is _MISSING:
        try:
            body = decode_json(await request.body())
        except ValueError:
            raise bad_json("The body is not valid JSON") from None
    earliest, latest, limit, min_depth = _parse_missing_events_body(body)
    reply = await _stub(request).QueryMissingEvents(
        backfill_pb2.QueryMissingEventsRequest(
            origin=origin,
            room_id=room_id,
            earliest_events=earliest,
            latest_events=latest,
            limit=max(0, min(limit, MAX_MISSING_EVENTS)),
            min_depth=min_depth,
        ),
        timeout=QUERY_TIMEOUT,
    )
    return _json_response(b'{"events":[' + b",".join(bytes(pdu) for pdu in reply.pdus) + b"]}")


@router.get(_PREFIX + "/timestamp_to_event/{room_id}")
async def get_timestamp_to_event(
    room_id: str, request: Request, origin: str = Depends(require_origin)
) -> Response:
    ts = _int_param(request, "ts")
    direction = request.query_params.get("dir")
    if direction is None:
        raise _missing_param("dir")
    if direction not in ("f", "b"):
        raise MatrixError(400, "M_INVALID_PARAM", "'dir' must be 'f' or 'b'")
    reply = await _stub(request).QueryEventAtTimestamp(
        backfill_pb2.QueryEventAtTimestampRequest(
            origin=origin, room_id=room_id, ts=ts, backwards=direction == "b"
        ),
        timeout=QUERY_TIMEOUT,
    )
    if not reply.found:
        raise not_found(f"No event found {'before' if direction == 'b' else 'after'} {ts}")
    return _json_response(
        orjson.dumps({"event_id": reply.event_id, "origin_server_ts": reply.origin_server_ts})
    )
