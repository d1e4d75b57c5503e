"""Accounts' EDUs from ``/send``: device lists, signing keys, to-device, presence.

``forward_device_edus(request, origin, edus)`` takes a transaction's raw
``edus`` list and the verified X-Matrix origin, picks the
``m.device_list_update``, ``m.signing_key_update``, ``m.direct_to_device``
and (when ``presence_enabled``) ``m.presence`` ones and hands them to the
Accounts service in ONE ``InputDeviceListUpdates`` call (nothing is sent when
there are none). Bad EDUs never fail a transaction. But when Accounts cannot
be reached, the transaction is answered 503 so the sender
retries it: a lost to-device message (a room key, say) would never be
repaired. The retry is safe: the events service answers a known txnId from
its stored response, to-device messages are de-duplicated on
``(origin, message_id)`` and device-list updates replace by ``stream_id``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc
from fastapi import Request

from gateway.errors import MatrixError
from matrix_protocol.canonical_json import encode_json
from mxfed_api.accounts.v1 import accounts_pb2, accounts_pb2_grpc

log = logging.getLogger(__name__)

# Accounts is down or overloaded: worth a retry of the whole transaction.
_RETRY_LATER = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

# edu_type → the request field its contents go in.
KEYS_EDU_FIELDS = {
    "m.device_list_update": "device_list_updates",
    "m.signing_key_update": "signing_key_updates",
    "m.direct_to_device": "to_device_messages",
    "m.presence": "presence_updates",
}
FORWARD_TIMEOUT = 30.0


def device_edu_request(
    origin: str, edus: Sequence[Any], *, presence_enabled: bool = False
) -> accounts_pb2.InputDeviceListUpdatesRequest | None:
    """The Accounts request for the transaction's keys-process EDUs, or None when there are none.

    ``m.presence`` is left out unless ``presence_enabled``."""
    request = accounts_pb2.InputDeviceListUpdatesRequest(origin=origin)
    found = False
    for edu in edus:
        if not isinstance(edu, dict) or not isinstance(edu.get("content"), dict):
            continue
        edu_type = edu.get("edu_type")
        field = KEYS_EDU_FIELDS.get(edu_type) if isinstance(edu_type, str) else None
        if field is None or (field == "presence_updates" and not presence_enabled):
            continue
        try:
            content = encode_json(edu["content"])
        except (TypeError, ValueError):
            continue
        getattr(request, field).append(content)
        found = True
    return request if found else None


async def forward_device_edus(request: Request, origin: str, edus: Sequence[Any]) -> None:
    presence_enabled = request.app.state.config.presence_enabled
    message = device_edu_request(origin, edus, presence_enabled=presence_enabled)
    if message is None:
        return
    stub = accounts_pb2_grpc.AccountsStub(request.app.state.services.channel("accounts"))
    try:
        await stub.InputDeviceListUpdates(message, timeout=FORWARD_TIMEOUT)
    except grpc.aio.AioRpcError as error:
        log.warning(
            "keys-process EDUs not processed",
            extra={"origin": origin, "code": str(error.code()), "details": error.details()},
        )
        if error.code() in _RETRY_LATER:
            raise MatrixError(
                503,
                "M_UNKNOWN",
                "Device and to-device EDUs cannot be stored right now; retry the transaction",
                headers={"Retry-After": "5"},
            ) from None
