"""Device-list and signing-key EDUs from ``/send`` to the Accounts service.

``forward_device_edus(request, origin, edus)`` takes a transaction's raw
``edus`` list and the verified X-Matrix origin, picks the
``m.device_list_update`` and ``m.signing_key_update`` ones and hands them to
the keys process in ONE ``InputDeviceListUpdates`` call (nothing is sent
when there are none). It never raises: a transaction is answered 200
whatever its EDUs do, and a lost device-list update is repaired by the next
one's ``prev_id`` check (resync).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc
from fastapi import Request

from matrix_protocol.canonical_json import encode_json
from mxfed_api.keys.v1 import accounts_pb2, accounts_pb2_grpc

log = logging.getLogger(__name__)

DEVICE_EDU_TYPES = frozenset({"m.device_list_update", "m.signing_key_update"})
FORWARD_TIMEOUT = 30.0


def device_edu_request(
    origin: str, edus: Sequence[Any]
) -> accounts_pb2.InputDeviceListUpdatesRequest | None:
    """The Accounts request for the transaction's device EDUs, or None when there are none."""
    request = accounts_pb2.InputDeviceListUpdatesRequest(origin=origin)
    for edu in edus:
        if not isinstance(edu, dict) or not isinstance(edu.get("content"), dict):
            continue
        try:
            content = encode_json(edu["content"])
        except (TypeError, ValueError):
            continue
        if edu.get("edu_type") == "m.device_list_update":
            request.device_list_updates.append(content)
        elif edu.get("edu_type") == "m.signing_key_update":
            request.signing_key_updates.append(content)
    if not request.device_list_updates and not request.signing_key_updates:
        return None
    return request


async def forward_device_edus(request: Request, origin: str, edus: Sequence[Any]) -> None:
    message = device_edu_request(origin, edus)
    if message is None:
        return
    stub = accounts_pb2_grpc.AccountsStub(request.app.state.services.channel("keys"))
    try:
        await stub.InputDeviceListUpdates(message, timeout=FORWARD_TIMEOUT)
    except grpc.aio.AioRpcError as error:
        log.warning(
            "device EDUs not processed",
            extra={"origin": origin, "code": str(error.code()), "details": error.details()},
        )
