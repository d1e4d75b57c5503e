"""Serving history to other servers: /backfill, /get_missing_events, /timestamp_to_event.

Spec: https://spec.matrix.org/v1.19/server-server-api/#backfilling-and-retrieving-missing-events,
https://spec.matrix.org/v1.19/server-server-api/#server-access-control-lists-acls (ACL) and
https://spec.matrix.org/v1.19/client-server-api/#room-history-visibility (visibility). The
requesting server must pass the room's ACL and have a joined member
([Synapse] does the same for backfill and get_missing_events; for
timestamp_to_event it checks only the ACL — we also require a member, so a
server outside a room learns nothing of its event ids). A room still in
partial state here (resyncing) serves backfill and get_missing_events to the
servers of its partial state's view, with only our own events in full, as
Synapse does; timestamp_to_event is refused with MSC3895's errcode. The DAG walks and the
per-event visibility (redacted when no user of the server may see the event)
happen in the events process (``History``).
"""

from __future__ import annotations

from dataclasses import dataclass

from mxfed_api.events.v1 import events_pb2, events_pb2_grpc, history_pb2, history_pb2_grpc
from services.backfill import metrics

QUERY_TIMEOUT = 30.0
MAX_BACKFILL = 100
MAX_MISSING_EVENTS = 20

# Rejected events are not part of the room.
_SERVABLE = frozenset({events_pb2.EVENT_STATUS_ACCEPTED, events_pb2.EVENT_STATUS_SOFT_FAILED})


@dataclass
class AccessDenied(Exception):
    """``errcode`` and message a remote server should see."""

    not_found: bool
    message: str
    # The room is partial-stated here (MSC3895): its own errcode.
    partial_state: bool = False


class Serving:
    def __init__(
        self, events: events_pb2_grpc.EventsStub, history: history_pb2_grpc.HistoryStub
    ) -> None:
        self.events = events
        self.history = history

    async def check_access(
        self, room_id: str, origin: str, *, allow_partial_state: bool = False
    ) -> None:
        reply = await self.events.QueryServerAllowed(
            events_pb2.QueryServerAllowedRequest(
                room_id=room_id,
                server_name=origin,
                check_acl=True,
                require_joined=True,
                allow_partial_state=allow_partial_state,
            ),
            timeout=QUERY_TIMEOUT,
        )
        if not reply.room_exists:
            raise AccessDenied(True, "Unknown room")
        if reply.partial_state:
            raise AccessDenied(False, "the room is partial-stated here", partial_state=True)
        if not reply.allowed:
            raise AccessDenied(False, reply.reason or f"{origin} may not read this room")

    async def backfill(
        self, origin: str, room_id: str, event_ids: list[str], limit: int
    ) -> list[bytes]:
        await self._checked(room_id, origin, "backfill", allow_partial_state=True)
        limit = max(0, min(limit, MAX_BACKFILL))
        if limit == 0 or not event_ids:
            return []
        reply = await self.history.QueryBackfill(
            history_pb2.QueryBackfillRequest(
                room_id=room_id, from_event_ids=event_ids, limit=limit, as_server=origin
            ),
            timeout=QUERY_TIMEOUT,
        )
        return self._pdus(reply.events, "backfill")

    async def missing_events(
        self,
        origin: str,
        room_id: str,
        earliest: list[str],
        latest: list[str],
        limit: int,
        min_depth: int,
    ) -> list[bytes]:
        await self._checked(room_id, origin, "get_missing_events", allow_partial_state=True)
        limit = max(0, min(limit, MAX_MISSING_EVENTS))
        if limit == 0 or not latest:
            return []
        reply = await self.history.QueryMissingEvents(
            history_pb2.QueryMissingEventsRequest(
                room_id=room_id,
                earliest_events=earliest,
                latest_events=latest,
                limit=limit,
                min_depth=min_depth,
                as_server=origin,
            ),
            timeout=QUERY_TIMEOUT,
        )
        return self._pdus(reply.events, "get_missing_events")

    async def event_at_timestamp(
        self, origin: str, room_id: str, ts: int, backwards: bool
    ) -> tuple[str, int] | None:
        await self._checked(room_id, origin, "timestamp_to_event")
        reply = await self.history.QueryEventAtTimestamp(
            history_pb2.QueryEventAtTimestampRequest(room_id=room_id, ts=ts, backwards=backwards),
            timeout=QUERY_TIMEOUT,
        )
        metrics.SERVED_EVENTS.labels("timestamp_to_event").inc(int(reply.found))
        return (reply.event_id, reply.origin_server_ts) if reply.found else None

    async def _checked(
        self, room_id: str, origin: str, endpoint: str, *, allow_partial_state: bool = False
    ) -> None:
        try:
            await self.check_access(room_id, origin, allow_partial_state=allow_partial_state)
        except AccessDenied as denied:
            outcome = "not_found" if denied.not_found else "forbidden"
            metrics.SERVED_REQUESTS.labels(endpoint, outcome).inc()
            raise
        metrics.SERVED_REQUESTS.labels(endpoint, "ok").inc()

    @staticmethod
    def _pdus(records: list[events_pb2.EventRecord], endpoint: str) -> list[bytes]:
        pdus = [bytes(r.pdu_json) for r in records if r.status in _SERVABLE and r.pdu_json]
        metrics.SERVED_EVENTS.labels(endpoint).inc(len(pdus))
        return pdus
