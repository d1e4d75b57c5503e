"""``mxfed.backfill.v1.Backfill``: serving history to other servers, fetching it from them.

Errors a remote server should see come back typed (:mod:`mxfed.service_errors`:
NOT_FOUND / PERMISSION_DENIED with the Matrix errcode), which the gateway turns
into the Matrix error.
"""

from __future__ import annotations

import logging

import grpc

from mxfed.service_errors import (
    UNABLE_DUE_TO_PARTIAL_STATE,
    BadRequest,
    Forbidden,
    NotFound,
    abort,
)
from mxfed_api.backfill.v1 import backfill_pb2, backfill_pb2_grpc
from services.backfill.fetching import Fetcher, RoomNotFound
from services.backfill.serving import AccessDenied, Serving

log = logging.getLogger(__name__)


async def _deny(context: grpc.aio.ServicerContext, denied: AccessDenied) -> None:
    if denied.not_found:
        await abort(context, NotFound(denied.message))
    if denied.partial_state:
        await abort(context, Forbidden(denied.message, UNABLE_DUE_TO_PARTIAL_STATE))
    await abort(context, Forbidden(denied.message))


async def _unknown_room(context: grpc.aio.ServicerContext, room_id: str) -> None:
    await abort(context, NotFound(f"unknown room {room_id}"))


class BackfillServicer(backfill_pb2_grpc.BackfillServicer):
    def __init__(self, serving: Serving, fetcher: Fetcher) -> None:
        self.serving = serving
        self.fetcher = fetcher

    # ------------------------------------------------------------ serving

    async def QueryBackfill(  # noqa: N802 (gRPC method name)
        self, request: backfill_pb2.QueryBackfillRequest, context: grpc.aio.ServicerContext
    ) -> backfill_pb2.QueryBackfillResponse:
        try:
            pdus = await self.serving.backfill(
                request.origin, request.room_id, list(request.event_ids), request.limit
            )
        except AccessDenied as denied:
            await _deny(context, denied)
            raise
        return backfill_pb2.QueryBackfillResponse(pdus=pdus)

    async def QueryMissingEvents(  # noqa: N802
        self, request: backfill_pb2.QueryMissingEventsRequest, context: grpc.aio.ServicerContext
    ) -> backfill_pb2.QueryMissingEventsResponse:
        try:
            pdus = await self.serving.missing_events(
                request.origin,
                request.room_id,
                list(request.earliest_events),
                list(request.latest_events),
                request.limit,
                request.min_depth,
            )
        except AccessDenied as denied:
            await _deny(context, denied)
            raise
        return backfill_pb2.QueryMissingEventsResponse(pdus=pdus)

    async def QueryEventAtTimestamp(  # noqa: N802
        self,
        request: backfill_pb2.QueryEventAtTimestampRequest,
        context: grpc.aio.ServicerContext,
    ) -> backfill_pb2.QueryEventAtTimestampResponse:
        try:
            found = await self.serving.event_at_timestamp(
                request.origin, request.room_id, request.ts, request.backwards
            )
        except AccessDenied as denied:
            await _deny(context, denied)
            raise
        if found is None:
            return backfill_pb2.QueryEventAtTimestampResponse(found=False)
        return backfill_pb2.QueryEventAtTimestampResponse(
            found=True, event_id=found[0], origin_server_ts=found[1]
        )

    # ------------------------------------------------------------ fetching

    async def PerformBackfill(  # noqa: N802
        self, request: backfill_pb2.PerformBackfillRequest, context: grpc.aio.ServicerContext
    ) -> backfill_pb2.PerformBackfillResponse:
        try:
            result = await self.fetcher.backfill(
                request.room_id, request.limit, list(request.servers)
            )
        except RoomNotFound:
            await _unknown_room(context, request.room_id)
            raise
        return backfill_pb2.PerformBackfillResponse(
            events_fetched=result.events_fetched,
            server=result.server,
            servers_failed=result.servers_failed,
            events_refused=result.events_refused,
        )

    async def PerformFetchMissingEvents(  # noqa: N802
        self,
        request: backfill_pb2.PerformFetchMissingEventsRequest,
        context: grpc.aio.ServicerContext,
    ) -> backfill_pb2.PerformFetchMissingEventsResponse:
        try:
            result = await self.fetcher.fetch_missing_events(
                request.room_id, request.origin, bytes(request.event_json), request.timeout_seconds
            )
        except RoomNotFound:
            await _unknown_room(context, request.room_id)
            raise
        except ValueError as error:
            await abort(context, BadRequest(str(error), "M_BAD_JSON"))
            raise
        return backfill_pb2.PerformFetchMissingEventsResponse(
            events_fetched=result.events_fetched,
            outliers_fetched=result.outliers_fetched,
            still_missing=result.still_missing,
            state_after_missing_prevs=[
                backfill_pb2.StateAtEvent(event_id=event_id, state_event_ids=state)
                for event_id, state in result.state_after.items()
            ],
        )

    async def PerformFetchEvents(  # noqa: N802
        self, request: backfill_pb2.PerformFetchEventsRequest, context: grpc.aio.ServicerContext
    ) -> backfill_pb2.PerformFetchEventsResponse:
        try:
            result = await self.fetcher.fetch_events(
                request.room_id, request.origin, list(request.event_ids), request.with_auth_chain
            )
        except RoomNotFound:
            await _unknown_room(context, request.room_id)
            raise
        return backfill_pb2.PerformFetchEventsResponse(
            events_fetched=result.events_fetched, still_missing=result.still_missing
        )
