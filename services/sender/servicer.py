"""The gRPC face of the sender service (``mxfed.sender.v1.Sender``): translation only."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import asyncpg
import grpc

from mxfed.service_errors import BadRequest, abort
from mxfed_api.sender.v1 import sender_pb2, sender_pb2_grpc
from services.sender import metrics
from services.sender.queues import EduQueuer, EduRequest, InvalidEdu, ToDeviceRequest
from services.sender.storage import SenderStorage

log = logging.getLogger(__name__)

# What the events service answered that we pass on as it is; anything else
# from it means it could not answer now.
_PASSED_ON = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED}
)

DEFAULT_QUERY_LIMIT = 1000
REPLICA_LIVE_WITHIN = 15.0


class SenderServicer(sender_pb2_grpc.SenderServicer):
    def __init__(
        self,
        storage: SenderStorage,
        queuer: EduQueuer,
        wake: Callable[[Iterable[str]], None],
    ) -> None:
        self.storage = storage
        self.queuer = queuer
        self.wake = wake

    async def PerformSendEdus(
        self, request: sender_pb2.PerformSendEdusRequest, context: grpc.aio.ServicerContext
    ) -> sender_pb2.PerformSendEdusResponse:
        code: grpc.StatusCode | None = None
        message = ""
        try:
            rows = await self.queuer.queue(
                [
                    EduRequest(e.edu_type, e.content_json, list(e.destinations), list(e.room_ids))
                    for e in request.edus
                ],
                [
                    ToDeviceRequest(t.sender, t.type, t.message_id, t.messages_json)
                    for t in request.to_device
                ],
            )
        except InvalidEdu as exc:
            await abort(context, BadRequest(str(exc)))
        except grpc.aio.AioRpcError as exc:
            # Asking the events service for a room's servers failed.
            code = exc.code() if exc.code() in _PASSED_ON else grpc.StatusCode.UNAVAILABLE
            message = f"events service: {exc.code().name}: {exc.details()}"
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("queueing EDUs failed", extra={"error": repr(exc)})
            code, message = grpc.StatusCode.UNAVAILABLE, f"database unavailable: {exc}"
        except Exception as exc:
            log.exception("queueing EDUs failed")
            code, message = grpc.StatusCode.INTERNAL, f"queueing EDUs failed: {type(exc).__name__}"
        if code is not None:
            await context.abort(code, message)
        for row in rows:
            metrics.EDUS_QUEUED.labels(row.edu_type).inc()
        self.wake({row.destination for row in rows})
        return sender_pb2.PerformSendEdusResponse(queued=len(rows))

    async def PerformServerUp(
        self, request: sender_pb2.PerformServerUpRequest, context: grpc.aio.ServicerContext
    ) -> sender_pb2.PerformServerUpResponse:
        was_backed_off = await self.storage.reset_backoff(request.server_name)
        if was_backed_off:
            self.wake([request.server_name])
        return sender_pb2.PerformServerUpResponse(was_backed_off=was_backed_off)

    async def QueryDestinations(
        self, request: sender_pb2.QueryDestinationsRequest, context: grpc.aio.ServicerContext
    ) -> sender_pb2.QueryDestinationsResponse:
        rows = await self.storage.query_destinations(
            list(request.destinations),
            request.include_idle,
            request.limit or DEFAULT_QUERY_LIMIT,
        )
        return sender_pb2.QueryDestinationsResponse(
            destinations=[
                sender_pb2.DestinationInfo(
                    destination=row.destination,
                    pending_pdus=row.pending_pdus,
                    pending_edus=row.pending_edus,
                    oldest_pending_ts=row.oldest_pending_ts,
                    last_success_ts=row.last_success_ts,
                    backoff_until_ts=row.retry_until_ts,
                    retry_interval_ms=row.retry_interval_ms,
                    lease_owner=row.lease_owner or "",
                    pending_txn_id=row.pending_txn_id or "",
                    failures=row.failures,
                    last_error=row.last_error or "",
                )
                for row in rows
            ],
            live_replicas=await self.storage.live_replicas(REPLICA_LIVE_WITHIN),
        )
