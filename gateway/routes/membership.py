"""Membership handshakes: make_*/send_* for join, leave and knock; v1/v2 invite.

Spec: https://spec.matrix.org/v1.19/server-server-api/#joining-rooms, #knocking-rooms,
#inviting-to-a-room and #leaving-rooms-rejecting-invites of that page.
The Membership service in the events process does the
work (room lookup, ACL, join rules, signatures, persistence); these handlers
verify X-Matrix, check parameters and pass the raw body through.

The deprecated ``PUT /_matrix/federation/v1/send_join`` and ``/v1/send_leave``
(removed from the spec in v1.18, still called by older servers) share the v2
handlers; only the answer differs: the historic ``[200, {...}]`` array
(https://spec.matrix.org/v1.17/server-server-api/#put_matrixfederationv1send_joinroomideventid).
Errors are the usual Matrix error objects, as for v2.
"""

from __future__ import annotations

from typing import Any

import grpc
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.errors import MatrixError, bad_json, from_grpc_error
from gateway.xmatrix_auth import require_origin
from matrix_protocol.canonical_json import encode_json
from mxfed_api.events.v1 import membership_pb2, membership_pb2_grpc

router = APIRouter()

_V1 = "/_matrix/federation/v1"
_V2 = "/_matrix/federation/v2"

# A send_join may walk a large room's state and auth chain.
CALL_TIMEOUT = 120.0


def membership_stub(request: Request) -> membership_pb2_grpc.MembershipStub:
    return membership_pb2_grpc.MembershipStub(request.app.state.services.channel("events"))


def _json_response(body: bytes) -> Response:
    return Response(body, media_type="application/json")


async def _call(method: Any, message: Any) -> Any:
    try:
        return await method(message, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        raise from_grpc_error(exc) from None


def _versions(request: Request, *, required: bool) -> list[str]:
    versions = request.query_params.getlist("ver")
    if not versions:
        if required:
            raise MatrixError(400, "M_MISSING_PARAM", "Missing required query parameter 'ver'")
        versions = ["1"]
    return versions


async def _make(
    request: Request, origin: str, room_id: str, user_id: str, membership: str, versions: list[str]
) -> Response:
    reply = await _call(
        membership_stub(request).MakeMembership,
        membership_pb2.MakeMembershipRequest(
            origin=origin,
            room_id=room_id,
            user_id=user_id,
            membership=membership,
            supported_versions=versions,
        ),
    )
    body = (
        b'{"room_version":'
        + encode_json(reply.room_version)
        + b',"event":'
        + bytes(reply.event_json)
        + b"}"
    )
    return _json_response(body)


async def _object_body(request: Request) -> bytes:
    body = getattr(request.state, "json_body", None)
    if not isinstance(body, dict):
        raise bad_json("The request body must be a JSON object")
    return await request.body()


def _flag(value: str | None) -> bool:
    if value is None:
        return False
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0", ""):
        return False
    raise MatrixError(400, "M_INVALID_PARAM", "omit_members must be true or false")


# ---------------------------------------------------------------- join


@router.get(_V1 + "/make_join/{room_id}/{user_id}")
async def make_join(
    room_id: str, user_id: str, request: Request, origin: str = Depends(require_origin)
) -> Response:
    return await _make(
        request, origin, room_id, user_id, "join", _versions(request, required=False)
    )


@router.put(_V2 + "/send_join/{room_id}/{event_id:path}")
async def send_join(
    room_id: str,
    event_id: str,
    request: Request,
    omit_members: str | None = None,
    origin: str = Depends(require_origin),
) -> Response:
    return await _send(
        request,
        membership_stub(request).SendJoin,
        membership_pb2.SendJoinRequest,
        origin,
        room_id,
        event_id,
        omit_members=_flag(omit_members),
    )


@router.put(_V1 + "/send_join/{room_id}/{event_id:path}")
async def send_join_v1(
    room_id: str, event_id: str, request: Request, origin: str = Depends(require_origin)
) -> Response:
    """The deprecated v1 form: never omits members (v1 had no ``omit_members``)."""
    answer = await _send_body(
        request,
        membership_stub(request).SendJoin,
        membership_pb2.SendJoinRequest,
        origin,
        room_id,
        event_id,
    )
    return _json_response(_v1_answer(answer))


def _v1_answer(body: bytes) -> bytes:
    """The v1 membership answers wrap the v2 body as ``[200, body]``."""
    return b"[200," + body + b"]"


async def _send(
    request: Request,
    rpc: Any,
    message: Any,
    origin: str,
    room_id: str,
    event_id: str,
    **fields: Any,
) -> Response:
    return _json_response(
        await _send_body(request, rpc, message, origin, room_id, event_id, **fields)
    )


async def _send_body(
    request: Request,
    rpc: Any,
    message: Any,
    origin: str,
    room_id: str,
    event_id: str,
    **fields: Any,
) -> bytes:
    """send_join / send_leave / send_knock: the signed PDU to the resident's handler.

    ``message`` is the RPC's request type; ``fields`` its fields beyond the common ones.
    """
    reply = await _call(
        rpc,
        message(
            origin=origin,
            room_id=room_id,
            event_id=event_id,
            pdu_json=await _object_body(request),
            **fields,
        ),
    )
    return bytes(reply.response_json)


# ---------------------------------------------------------------- leave


@router.get(_V1 + "/make_leave/{room_id}/{user_id}")
async def make_leave(
    room_id: str, user_id: str, request: Request, origin: str = Depends(require_origin)
) -> Response:
    return await _make(request, origin, room_id, user_id, "leave", [])


@router.put(_V2 + "/send_leave/{room_id}/{event_id:path}")
async def send_leave(
    room_id: str, event_id: str, request: Request, origin: str = Depends(require_origin)
) -> Response:
    return await _send(
        request,
        membership_stub(request).SendLeave,
        membership_pb2.SendLeaveRequest,
        origin,
        room_id,
        event_id,
    )


@router.put(_V1 + "/send_leave/{room_id}/{event_id:path}")
async def send_leave_v1(
    room_id: str, event_id: str, request: Request, origin: str = Depends(require_origin)
) -> Response:
    answer = await _send_body(
        request,
        membership_stub(request).SendLeave,
        membership_pb2.SendLeaveRequest,
        origin,
        room_id,
        event_id,
    )
    return _json_response(_v1_answer(answer))


# ---------------------------------------------------------------- knock


@router.get(_V1 + "/make_knock/{room_id}/{user_id}")
async def make_knock(
    room_id: str, user_id: str, request: Request, origin: str = Depends(require_origin)
) -> Response:
    return await _make(
        request, origin, room_id, user_id, "knock", _versions(request, required=True)
    )


@router.put(_V1 + "/send_knock/{room_id}/{event_id:path}")
async def send_knock(
    room_id: str, event_id: str, request: Request, origin: str = Depends(require_origin)
) -> Response:
    return await _send(
        request,
        membership_stub(request).SendKnock,
        membership_pb2.SendKnockRequest,
        origin,
        room_id,
        event_id,
    )


# ---------------------------------------------------------------- invites


@router.put(_V2 + "/invite/{room_id}/{event_id:path}")
async def invite_v2(
    room_id: str, event_id: str, request: Request, origin: str = Depends(require_origin)
) -> Response:
    body = getattr(request.state, "json_body", None)
    if not isinstance(body, dict):
        raise bad_json("The request body must be a JSON object")
    version, event = body.get("room_version"), body.get("event")
    if version is None or event is None:
        raise MatrixError(400, "M_MISSING_PARAM", "'room_version' and 'event' are required")
    if not isinstance(version, str) or not isinstance(event, dict):
        raise bad_json("'room_version' must be a string and 'event' an object")
    state = body.get("invite_room_state", [])
    if not isinstance(state, list):
        raise bad_json("'invite_room_state' must be a list")
    reply = await _call(
        membership_stub(request).ReceiveInvite,
        membership_pb2.ReceiveInviteRequest(
            origin=origin,
            room_id=room_id,
            event_id=event_id,
            room_version=version,
            pdu_json=encode_json(event),
            invite_room_state_json=encode_json(state),
        ),
    )
    return _json_response(b'{"event":' + bytes(reply.event_json) + b"}")


@router.put(_V1 + "/invite/{room_id}/{event_id:path}")
async def invite_v1(
    room_id: str, event_id: str, request: Request, origin: str = Depends(require_origin)
) -> Response:
    body = getattr(request.state, "json_body", None)
    if not isinstance(body, dict):
        raise bad_json("The request body must be a JSON object")
    unsigned = body.get("unsigned")
    state = unsigned.get("invite_room_state", []) if isinstance(unsigned, dict) else []
    if not isinstance(state, list):
        state = []
    reply = await _call(
        membership_stub(request).ReceiveInvite,
        membership_pb2.ReceiveInviteRequest(
            origin=origin,
            room_id=room_id,
            event_id=event_id,
            room_version="",
            pdu_json=await request.body(),
            invite_room_state_json=encode_json(state),
        ),
    )
    return _json_response(b'[200,{"event":' + bytes(reply.event_json) + b"}]")
