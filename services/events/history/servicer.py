"""``mxfed.events.v1.History``: DAG walks for serving and fetching history.

Hosted by the events process (the only one that reads the events tables).
Which events a server may see is decided by the events service's own
``QueryEvents(as_server=...)`` — the same rule ``/event`` uses (redacted when
no user of that server may see the event under history visibility), except
that a room still in partial state here is served too, with only our own
events in full (``partial_state_history``) — so the walks here only pick
event ids and their order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import grpc

from mxfed_api.events.v1 import events_pb2, events_pb2_grpc, history_pb2, history_pb2_grpc
from services.events.history import storage as history_storage
from services.events.history import walks
from services.events.reads import Reads
from services.events.servicer import event_record

RecordsFn = Callable[[Sequence[str], str], Awaitable[list[events_pb2.EventRecord]]]

QUERY_TIMEOUT = 30.0


def records_through(stub: events_pb2_grpc.EventsStub) -> RecordsFn:
    """Event records in the given order, through the events service's QueryEvents."""

    async def records(event_ids: Sequence[str], as_server: str) -> list[events_pb2.EventRecord]:
        if not event_ids:
            return []
        reply = await stub.QueryEvents(
            events_pb2.QueryEventsRequest(
                event_ids=list(event_ids), as_server=as_server, partial_state_history=True
            ),
            timeout=QUERY_TIMEOUT,
        )
        by_id = {record.event_id: record for record in reply.events}
        return [by_id[event_id] for event_id in event_ids if event_id in by_id]

    return records


def _capped(limit: int, default: int, cap: int) -> int:
    return cap if limit > cap else default if limit <= 0 else limit


class HistoryServicer(history_pb2_grpc.HistoryServicer):
    def __init__(self, pool: asyncpg.Pool, records: RecordsFn) -> None:
        self.pool = pool
        self.records = records

    async def QueryBackfill(  # noqa: N802 (gRPC method name)
        self, request: history_pb2.QueryBackfillRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.QueryBackfillResponse:
        limit = _capped(request.limit, walks.MAX_BACKFILL, walks.MAX_BACKFILL)
        async with self.pool.acquire() as conn:
            ids = await walks.walk_prev_events(
                conn, request.room_id, list(request.from_event_ids), limit, include_starts=True
            )
        records = await self.records(ids, request.as_server)
        return history_pb2.QueryBackfillResponse(
            events=[r for r in records if r.room_id == request.room_id]
        )

    async def QueryMissingEvents(  # noqa: N802
        self, request: history_pb2.QueryMissingEventsRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.QueryMissingEventsResponse:
        limit = _capped(request.limit, walks.DEFAULT_MISSING_EVENTS, walks.MAX_MISSING_EVENTS)
        async with self.pool.acquire() as conn:
            ids = await walks.walk_prev_events(
                conn,
                request.room_id,
                list(request.latest_events),
                limit,
                include_starts=False,
                stop_ids=list(request.earliest_events),
                min_depth=request.min_depth or None,
            )
        ids.reverse()  # oldest first
        records = await self.records(ids, request.as_server)
        return history_pb2.QueryMissingEventsResponse(
            events=[r for r in records if r.room_id == request.room_id]
        )

    async def QueryEventAtTimestamp(  # noqa: N802
        self, request: history_pb2.QueryEventAtTimestampRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.QueryEventAtTimestampResponse:
        async with self.pool.acquire() as conn:
            found = await history_storage.event_at_timestamp(
                conn, request.room_id, request.ts, request.backwards
            )
        if found is None:
            return history_pb2.QueryEventAtTimestampResponse(found=False)
        return history_pb2.QueryEventAtTimestampResponse(
            found=True, event_id=found[0], origin_server_ts=found[1]
        )

    async def QueryBackwardExtremities(  # noqa: N802
        self,
        request: history_pb2.QueryBackwardExtremitiesRequest,
        context: grpc.aio.ServicerContext,
    ) -> history_pb2.QueryBackwardExtremitiesResponse:
        async with self.pool.acquire() as conn:
            found = await history_storage.backward_extremities(conn, request.room_id, request.limit)
        return history_pb2.QueryBackwardExtremitiesResponse(
            extremities=[
                history_pb2.BackwardExtremity(
                    event_id=e.event_id, depth=e.depth, referenced_by=e.referenced_by
                )
                for e in found
            ]
        )

    async def QueryServersByJoinAge(  # noqa: N802
        self,
        request: history_pb2.QueryServersByJoinAgeRequest,
        context: grpc.aio.ServicerContext,
    ) -> history_pb2.QueryServersByJoinAgeResponse:
        async with self.pool.acquire() as conn:
            servers = await history_storage.servers_by_join_age(conn, request.room_id)
        return history_pb2.QueryServersByJoinAgeResponse(servers=servers)


def records_from_reads(reads: Reads) -> RecordsFn:
    """Event records in the given order, from the events service's own reads."""

    async def records(event_ids: Sequence[str], as_server: str) -> list[events_pb2.EventRecord]:
        if not event_ids:
            return []
        if as_server:
            found = await reads.events_for_server(event_ids, as_server, partial_state_history=True)
            views = found.views
        else:
            views = await reads.events(event_ids)
        by_id = {view.event_id: view for view in views}
        return [
            event_record(view)
            for event_id in event_ids
            if (view := by_id.get(event_id)) is not None
        ]

    return records


def add_history_servicer(server: grpc.aio.Server, pool: asyncpg.Pool, reads: Reads) -> None:
    """Register History on the events process's ``server`` (visibility from ``reads``)."""
    history_pb2_grpc.add_HistoryServicer_to_server(
        HistoryServicer(pool, records_from_reads(reads)), server
    )
