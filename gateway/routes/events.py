"""Fetching events and state: ``/event``, ``/state``, ``/state_ids``, ``/event_auth``.

Spec: https://spec.matrix.org/v1.19/server-server-api/#retrieving-events,
https://spec.matrix.org/v1.19/server-server-api/#server-access-control-lists-acls and
https://spec.matrix.org/v1.19/client-server-api/#room-history-visibility. The
events service does the work; these handlers check parameters, ask it once or
twice, and splice the stored PDU JSON into the response without decoding it
(the bytes are exactly what was signed, and large rooms' state is big).

Event IDs of room v3 contain ``/`` (``%2F`` on the wire, decoded by the
server before routing), so a trailing event ID segment is matched with the
``path`` converter. X-Matrix is verified against the raw, undecoded target
by ``require_origin``.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.errors import MatrixError, not_found
from gateway.room_access import (
    QUERY_TIMEOUT,
    events_stub,
    partial_state_refusal,
    require_joined_room_access,
)
from gateway.xmatrix_auth import require_origin
from mxfed.clock import now_ms
from mxfed_api.events.v1 import events_pb2

router = APIRouter()

_PREFIX = "/_matrix/federation/v1"

# Rejected events are not part of the room; soft-failed ones are served (spec).
_SERVABLE = frozenset(
    {
        events_pb2.EVENT_STATUS_ACCEPTED,
        events_pb2.EVENT_STATUS_SOFT_FAILED,
        events_pb2.EVENT_STATUS_OUTLIER,
        events_pb2.EVENT_STATUS_UNSPECIFIED,
    }
)


def _json_response(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def _pdu_list(records: Iterable[events_pb2.EventRecord]) -> bytes:
    return b"[" + b",".join(bytes(record.pdu_json) for record in records) + b"]"


def _id_list(event_ids: Iterable[str]) -> bytes:
    return orjson.dumps(list(event_ids))


def _require_event_id(event_id: str | None) -> str:
    if event_id is None:
        raise MatrixError(400, "M_MISSING_PARAM", "Missing required query parameter 'event_id'")
    if not event_id:
        raise MatrixError(400, "M_INVALID_PARAM", "'event_id' must not be empty")
    return event_id


@router.get(_PREFIX + "/event/{event_id:path}")
async def get_event(
    event_id: str, request: Request, origin: str = Depends(require_origin)
) -> Response:
    # as_server: rooms the origin may not read are left out, events it may
    # not see under history visibility come back redacted.
    reply = await events_stub(request).QueryEvents(
        events_pb2.QueryEventsRequest(event_ids=[event_id], as_server=origin),
        timeout=QUERY_TIMEOUT,
    )
    record = next((r for r in reply.events if r.event_id == event_id), None)
    if record is None and event_id in reply.partial_state_event_ids:
        # NOTSPEC (MSC3895, as Synapse answers, and as /state and /backfill
        # answer here): its room is still in partial state; ask another server.
        raise partial_state_refusal()
    if record is None or record.status not in _SERVABLE or not record.pdu_json:
        raise not_found("Event not found")
    server_name = request.app.state.config.server_name
    body = (
        b'{"origin":'
        + orjson.dumps(server_name)
        + b',"origin_server_ts":'
        + str(now_ms()).encode()
        + b',"pdus":['
        + bytes(record.pdu_json)
        + b"]}"
    )
    return _json_response(body)


async def _state_at(
    request: Request, room_id: str, event_id: str, *, ids_only: bool
) -> events_pb2.QueryStateAtEventResponse:
    reply = await events_stub(request).QueryStateAtEvent(
        events_pb2.QueryStateAtEventRequest(
            room_id=room_id, event_id=event_id, ids_only=ids_only, include_auth_chain=True
        ),
        timeout=QUERY_TIMEOUT,
    )
    if not reply.found:
        raise not_found("Unknown event, or no state known at it")
    return reply


@router.get(_PREFIX + "/state/{room_id}")
async def get_state(
    room_id: str,
    request: Request,
    event_id: str | None = None,
    _: str = Depends(require_joined_room_access),
) -> Response:
    reply = await _state_at(request, room_id, _require_event_id(event_id), ids_only=False)
    body = (
        b'{"pdus":'
        + _pdu_list(reply.state_events)
        + b',"auth_chain":'
        + _pdu_list(reply.auth_chain)
        + b"}"
    )
    return _json_response(body)


@router.get(_PREFIX + "/state_ids/{room_id}")
async def get_state_ids(
    room_id: str,
    request: Request,
    event_id: str | None = None,
    _: str = Depends(require_joined_room_access),
) -> Response:
    reply = await _state_at(request, room_id, _require_event_id(event_id), ids_only=True)
    body = (
        b'{"pdu_ids":'
        + _id_list(reply.state_event_ids)
        + b',"auth_chain_ids":'
        + _id_list(reply.auth_chain_ids)
        + b"}"
    )
    return _json_response(body)


@router.get(_PREFIX + "/event_auth/{room_id}/{event_id:path}")
async def get_event_auth(
    room_id: str,
    event_id: str,
    request: Request,
    origin: str = Depends(require_joined_room_access),
) -> Response:
    stub = events_stub(request)
    found = await stub.QueryEvents(
        events_pb2.QueryEventsRequest(event_ids=[event_id], as_server=origin),
        timeout=QUERY_TIMEOUT,
    )
    if not any(r.event_id == event_id and r.room_id == room_id for r in found.events):
        raise not_found("Event not found in this room")
    reply = await stub.QueryAuthChain(
        events_pb2.QueryAuthChainRequest(room_id=room_id, event_ids=[event_id], ids_only=False),
        timeout=QUERY_TIMEOUT,
    )
    chain = (record for record in reply.events if record.event_id != event_id)
    return _json_response(b'{"auth_chain":' + _pdu_list(chain) + b"}")
