"""Third-party invites: ``PUT /v1/3pid/onbind`` and ``PUT /v1/exchange_third_party_invite``.

Spec: https://spec.matrix.org/v1.19/server-server-api/#third-party-invites
(both endpoints) and https://spec.matrix.org/v1.19/server-server-api/#verifying-the-invite
The ThirdPartyInvites service in the events process does the work.

* ``3pid/onbind`` has no X-Matrix (identity servers call it). The spec says
  PUT; Sydent sends POST (and Synapse serves only POST), so both are served.
  The body must
  hold ``medium``, ``address``, ``mxid`` and ``invites``; each invite
  ``medium``, ``address``, ``mxid``, ``room_id``, ``sender`` and ``signed``
  (with ``mxid``, ``token``, ``signatures``): a missing key is 400
  M_MISSING_PARAM, a wrong type 400 M_BAD_JSON. Invites that are refused for
  good (unknown room, bad signature, token used) are logged by the service
  and the answer is still ``200 {}``; when one failed for a transient reason
  (the inviter's server unreachable) the answer is 502 so that the identity
  server retries (invites already done count as done on the retry).
* ``exchange_third_party_invite`` (X-Matrix): ``200 {}`` once the invite is
  accepted; 400 for a malformed partial event or the wrong room, 403
  M_FORBIDDEN for anything the third-party invite does not authorise
  (unknown token, another sender, bad signature, revoked key, token already
  used, sender not ours), 404 M_NOT_FOUND when we are not in the room.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from fastapi import APIRouter, Depends, Request

from gateway.errors import MatrixError, bad_json, from_grpc_error
from gateway.responses import JsonResponse
from gateway.xmatrix_auth import require_origin
from matrix_protocol.canonical_json import decode_json, encode_json
from mxfed_api.events.v1 import third_party_pb2, third_party_pb2_grpc

router = APIRouter()

_V1 = "/_matrix/federation/v1"

# An onbind may exchange several invites with other servers, each with a
# v2 invite round trip behind it.
CALL_TIMEOUT = 120.0

_ONBIND_FIELDS = ("medium", "address", "mxid", "invites")
_INVITE_FIELDS = ("medium", "address", "mxid", "room_id", "sender", "signed")
_SIGNED_FIELDS = ("mxid", "token", "signatures")


def third_party_stub(request: Request) -> third_party_pb2_grpc.ThirdPartyInvitesStub:
    return third_party_pb2_grpc.ThirdPartyInvitesStub(request.app.state.services.channel("events"))


async def _call(method: Any, message: Any) -> Any:
    try:
        return await method(message, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        raise from_grpc_error(exc) from None


def _require(body: Mapping[str, Any], fields: Sequence[str], where: str) -> None:
    for name in fields:
        if name not in body or body[name] is None:
            raise MatrixError(400, "M_MISSING_PARAM", f"Missing required key {where}{name!r}")


def check_onbind_body(body: Any) -> None:
    """400 unless ``body`` has the shape the spec gives for 3pid/onbind
    (https://spec.matrix.org/v1.19/server-server-api/#put_matrixfederationv13pidonbind)."""
    if not isinstance(body, dict):
        raise bad_json("The request body must be a JSON object")
    _require(body, _ONBIND_FIELDS, "")
    for name in ("medium", "address", "mxid"):
        if not isinstance(body[name], str):
            raise bad_json(f"{name!r} must be a string")
    if not isinstance(body["invites"], list):
        raise bad_json("'invites' must be a list")
    for index, invite in enumerate(body["invites"]):
        where = f"invites[{index}]."
        if not isinstance(invite, dict):
            raise bad_json(f"invites[{index}] must be an object")
        _require(invite, _INVITE_FIELDS, where)
        for name in ("medium", "address", "mxid", "room_id", "sender"):
            if not isinstance(invite[name], str):
                raise bad_json(f"{where}{name} must be a string")
        signed = invite["signed"]
        if not isinstance(signed, dict):
            raise bad_json(f"{where}signed must be an object")
        _require(signed, _SIGNED_FIELDS, where + "signed.")
        if not isinstance(signed["mxid"], str) or not isinstance(signed["token"], str):
            raise bad_json(f"{where}signed.mxid and signed.token must be strings")
        if not isinstance(signed["signatures"], dict):
            raise bad_json(f"{where}signed.signatures must be an object")


@router.put(_V1 + "/3pid/onbind")
@router.post(_V1 + "/3pid/onbind")
async def onbind(request: Request) -> JsonResponse:
    raw = await request.body()
    try:
        body = decode_json(raw) if raw else None
    except ValueError:
        raise MatrixError(400, "M_NOT_JSON", "Content not JSON") from None
    check_onbind_body(body)
    reply = await _call(
        third_party_stub(request).ReceiveOnBind,
        third_party_pb2.ReceiveOnBindRequest(body_json=encode_json(body)),
    )
    failed = [o for o in reply.outcomes if o.result == "failed"]
    if failed:
        message = f"{len(failed)} invite(s) could not be completed yet: {failed[0].error}"
        raise MatrixError(502, "M_UNKNOWN", message)
    return JsonResponse({})


@router.put(_V1 + "/exchange_third_party_invite/{room_id}")
async def exchange_third_party_invite(
    room_id: str, request: Request, origin: str = Depends(require_origin)
) -> JsonResponse:
    body = getattr(request.state, "json_body", None)
    if not isinstance(body, dict):
        raise bad_json("The request body must be a JSON object")
    await _call(
        third_party_stub(request).ExchangeThirdPartyInvite,
        third_party_pb2.ExchangeThirdPartyInviteRequest(
            origin=origin, room_id=room_id, event_json=await request.body()
        ),
    )
    return JsonResponse({})
