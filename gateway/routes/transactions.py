"""``PUT /_matrix/federation/v1/send/{txnId}``: inbound transactions.

Spec: https://spec.matrix.org/v1.19/server-server-api/#transactions
The body is a Transaction object
(``origin``, ``origin_server_ts``, ``pdus`` ≤ 50, optional ``edus`` ≤ 100);
the answer is always 200 with a per-PDU result map once it is processed.
The gateway only checks the envelope; everything about the PDUs (format,
signatures, hashes, auth, ACLs per PDU, idempotency on ``(origin, txnId)``)
is the events service's, reached with ONE ``InputTransaction`` call per
transaction (one RPC per batch, never per PDU: a gRPC call costs about a millisecond of CPU).

This is the hottest route, so it skips FastAPI's body validation: the
X-Matrix dependency has already parsed the body with orjson (it has to, to
verify the signature) and left it on ``request.state.json_body``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.edu_routing import forward_device_edus
from gateway.errors import MatrixError, bad_json
from gateway.room_access import events_stub
from gateway.xmatrix_auth import require_origin
from matrix_protocol.canonical_json import decode_json, encode_json
from matrix_protocol.transactions import MAX_EDUS, MAX_PDUS
from mxfed_api.events.v1 import events_pb2

router = APIRouter()


# EDUs the events service owns. Device-list and signing-key updates,
# to-device messages and presence (when presence_enabled) go to the keys
# process (gateway.edu_routing); any other type is ignored.
EVENTS_SERVICE_EDU_TYPES = frozenset({"m.typing", "m.receipt"})

# Processing a transaction may fetch missing events and state from the
# origin, which can take a while; senders retry the same txnId on timeout.
INPUT_TIMEOUT = 300.0

_MISSING = object()


class _InFlight:
    """The transaction each origin has in flight in this gateway process.

    A sender must wait for our 200 before sending another transaction
    ([Synapse] answers a concurrent different one with 429). A retry of the
    *same* transaction while it is still being processed (the sender timed
    out) joins the running call instead of starting a second one. With N
    gateway replicas the federation proxy in front of them sends every
    request of one origin to the same replica (``deploy/compose/haproxy.cfg``),
    so this holds across replicas; while replicas come and go, the service's
    idempotency on ``(origin, txnId)`` is what guarantees nothing is stored twice.
    """

    def __init__(self) -> None:
        self._by_origin: dict[str, tuple[str, asyncio.Task[bytes]]] = {}

    def get(self, origin: str) -> tuple[str, asyncio.Task[bytes]] | None:
        return self._by_origin.get(origin)

    def start(self, origin: str, txn_id: str, task: asyncio.Task[bytes]) -> None:
        self._by_origin[origin] = (txn_id, task)
        task.add_done_callback(lambda _: self._finished(origin, task))

    def _finished(self, origin: str, task: asyncio.Task[bytes]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every waiter hung up
        current = self._by_origin.get(origin)
        if current is not None and current[1] is task:
            del self._by_origin[origin]


def _in_flight(request: Request) -> _InFlight:
    state = request.app.state
    tracker = getattr(state, "transactions_in_flight", None)
    if tracker is None:
        tracker = state.transactions_in_flight = _InFlight()
    return tracker


async def _json_body(request: Request) -> Any:
    body = getattr(request.state, "json_body", _MISSING)
    if body is not _MISSING:
        return body
    raw = await request.body()
    try:
        return decode_json(raw)
    except ValueError:
        raise MatrixError(400, "M_NOT_JSON", "Content not JSON") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_transaction(body: Any) -> tuple[list[bytes], list[bytes]]:
    """Check the envelope; return the PDUs and the events service's EDUs as JSON bytes."""
    if not isinstance(body, dict):
        raise bad_json("The transaction must be a JSON object")
    if not isinstance(body.get("origin"), str):
        raise bad_json("'origin' must be a string")
    if not _is_int(body.get("origin_server_ts")):
        raise bad_json("'origin_server_ts' must be an integer")
    pdus = body.get("pdus", _MISSING)
    if not isinstance(pdus, list):
        raise bad_json("'pdus' must be a list")
    if len(pdus) > MAX_PDUS:
        raise bad_json(f"A transaction may carry at most {MAX_PDUS} PDUs, not {len(pdus)}")
    edus = body.get("edus", [])
    if edus is None:
        edus = []
    if not isinstance(edus, list):
        raise bad_json("'edus' must be a list")
    if len(edus) > MAX_EDUS:
        raise bad_json(f"A transaction may carry at most {MAX_EDUS} EDUs, not {len(edus)}")

    encoded_pdus = []
    for index, pdu in enumerate(pdus):
        if not isinstance(pdu, dict):
            raise bad_json(f"pdus[{index}] must be a JSON object")
        encoded_pdus.append(_encode(pdu, f"pdus[{index}]"))
    encoded_edus = []
    for index, edu in enumerate(edus):
        if not isinstance(edu, dict):
            raise bad_json(f"edus[{index}] must be a JSON object")
        edu_type = edu.get("edu_type")
        if not isinstance(edu_type, str):
            raise bad_json(f"edus[{index}].edu_type must be a string")
        if not isinstance(edu.get("content"), dict):
            raise bad_json(f"edus[{index}].content must be a JSON object")
        if edu_type in EVENTS_SERVICE_EDU_TYPES:
            # Only the two spec fields: legacy origin/destination keys are noise.
            edu_json = {"edu_type": edu_type, "content": edu["content"]}
            encoded_edus.append(_encode(edu_json, f"edus[{index}]"))
    return encoded_pdus, encoded_edus


def _encode(value: Any, where: str) -> bytes:
    try:
        return encode_json(value)
    except (TypeError, ValueError) as exc:
        raise bad_json(f"{where} cannot be encoded: {exc}") from None


async def _input_transaction(
    request: Request, origin: str, txn_id: str, pdus: list[bytes], edus: list[bytes]
) -> bytes:
    reply = await events_stub(request).InputTransaction(
        events_pb2.InputTransactionRequest(origin=origin, txn_id=txn_id, pdus=pdus, edus=edus),
        timeout=INPUT_TIMEOUT,
    )
    return bytes(reply.response_json)


async def _input_transaction_and_device_edus(
    request: Request,
    origin: str,
    txn_id: str,
    pdus: list[bytes],
    edus: list[bytes],
    body: dict[str, Any],
) -> bytes:
    """PDUs and room EDUs to the events service, device, to-device and presence EDUs
    to the Accounts service, at once."""
    # Both run to the end; then a failure of either decides the answer.
    response, forwarded = await asyncio.gather(
        _input_transaction(request, origin, txn_id, pdus, edus),
        forward_device_edus(request, origin, body.get("edus") or []),
        return_exceptions=True,
    )
    for outcome in (response, forwarded):
        if isinstance(outcome, BaseException):
            raise outcome
    assert isinstance(response, bytes)
    return response


@router.put("/_matrix/federation/v1/send/{txn_id}")
async def send_transaction(
    txn_id: str, request: Request, origin: str = Depends(require_origin)
) -> Response:
    # The X-Matrix origin is the sender; the body's "origin" is not trusted.
    body = await _json_body(request)
    pdus, edus = parse_transaction(body)

    in_flight = _in_flight(request)
    running = in_flight.get(origin)
    if running is not None:
        running_txn, task = running
        if running_txn != txn_id:
            raise MatrixError(
                429,
                "M_UNKNOWN",
                "Too many concurrent transactions",
                headers={"Retry-After": "1"},
            )
    else:
        task = asyncio.create_task(
            _input_transaction_and_device_edus(request, origin, txn_id, pdus, edus, body)
        )
        in_flight.start(origin, txn_id, task)
    # Shielded: a sender that hangs up does not cancel the processing, and
    # its retry of the same txnId joins it. gRPC errors are mapped to Matrix
    # errors by the gateway's handler.
    response_json = await asyncio.shield(task)
    return Response(response_json, media_type="application/json")
