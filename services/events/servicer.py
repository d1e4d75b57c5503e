"""gRPC layer of the events service: decode requests, call the logic, encode replies.

Errors become typed gRPC statuses (:mod:`mxfed.service_errors`): the logic
raises typed :class:`~mxfed.service_errors.ServiceError` subclasses (an
unsupported room version, an unset input kind, a malformed token...);
anything else is a bug and reaches the caller as UNKNOWN.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

import grpc

from mxfed import tracing
from mxfed.service_errors import BadRequest, json_field, reports_service_errors
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc
from services.events import metrics, send_stream
from services.events.admin.blocks import BLOCKED_ROOMS
from services.events.input import InputKind, InputPipeline
from services.events.local_events import CreateRoomRequest, LocalEvents
from services.events.reads import EventView, Reads
from services.events.streams import StreamEntry, StreamFilter, StreamHub

T = TypeVar("T")

_KINDS = {
    events_pb2.INPUT_KIND_NEW: InputKind.NEW,
    events_pb2.INPUT_KIND_GAP_FILL: InputKind.GAP_FILL,
    events_pb2.INPUT_KIND_OUTLIER: InputKind.OUTLIER,
    events_pb2.INPUT_KIND_BACKFILL: InputKind.BACKFILL,
}


def _input_kind(value: int) -> InputKind:
    kind = _KINDS.get(value)  # type: ignore[call-overload]
    if kind is None:
        names = ", ".join(events_pb2.InputKind.Name(number) for number in _KINDS)
        raise BadRequest(f"kind must be one of {names} (got {value})")
    return kind


def event_record(view: EventView) -> events_pb2.EventRecord:
    """An event as the events API gives it (Events and History)."""
    return events_pb2.EventRecord(
        event_id=view.event_id,
        room_id=view.room_id,
        room_version=view.room_version,
        pdu_json=view.pdu_json.encode(),
        # protoc's .pyi leaves int out of enum fields; protobuf accepts the number
        status=view.status,  # type: ignore[arg-type]
        stream_position=view.stream_position,
        redacted=view.redacted,
        rejection_reason=view.rejection_reason,
    )


def _records(views: Sequence[EventView]) -> list[events_pb2.EventRecord]:
    return [event_record(view) for view in views]


def _stream_item(entry: StreamEntry) -> events_pb2.StreamEventsResponse:
    if entry.event is not None:
        return events_pb2.StreamEventsResponse(
            position=entry.position,
            event=event_record(entry.event),
            servers_before=entry.servers_before,
            relayed_for=entry.relayed_for,
            traceparent=tracing.traceparent_of_event(entry.event.event_id),
        )
    row = entry.ephemeral
    assert row is not None
    if row["kind"] == "typing":
        return events_pb2.StreamEventsResponse(
            position=entry.position,
            typing=events_pb2.Typing(
                room_id=row["room_id"], user_id=row["user_id"], typing=bool(row["typing"])
            ),
        )
    return events_pb2.StreamEventsResponse(
        position=entry.position,
        receipt=events_pb2.Receipt(
            room_id=row["room_id"],
            user_id=row["user_id"],
            receipt_type=row["receipt_type"] or "",
            event_id=row["event_id"] or "",
            data_json=(row["data_json"] or "{}").encode(),
        ),
    )


def _stream_filter(request: events_pb2.StreamEventsRequest) -> StreamFilter:
    return StreamFilter(
        room_id=request.room_id,
        local_senders_only=request.local_senders_only,
        include_ephemeral=request.include_ephemeral,
        event_types=frozenset(request.event_types),
    )


class EventsServicer(events_pb2_grpc.EventsServicer):
    def __init__(
        self, pipeline: InputPipeline, local: LocalEvents, reads: Reads, hub: StreamHub
    ) -> None:
        self.pipeline = pipeline
        self.local = local
        self.reads = reads
        self.hub = hub

    # ------------------------------------------------------------ input

    @reports_service_errors
    async def InputTransaction(self, request, context):  # noqa: N802, ANN001, ANN201
        response = await self.pipeline.input_transaction(
            request.origin, request.txn_id, list(request.pdus), list(request.edus)
        )
        return events_pb2.InputTransactionResponse(response_json=response)

    @reports_service_errors
    async def InputPdus(self, request, context):  # noqa: N802, ANN001, ANN201
        BLOCKED_ROOMS.check(request.room_id)
        outcomes = await self.pipeline.input_pdus(
            request.room_id,
            request.room_version,
            _input_kind(request.kind),
            list(request.pdus),
            {s.event_id: list(s.state_event_ids) for s in request.state_before},
        )
        return events_pb2.InputPdusResponse(
            results=[
                events_pb2.PduResult(
                    event_id=o.event_id,
                    # protoc's .pyi leaves int out of enum fields; protobuf accepts the number
                    status=int(o.status) if o.status is not None else 0,  # type: ignore[arg-type]
                    error=o.error,
                )
                for o in outcomes
            ]
        )

    # ------------------------------------------------------------ local actors

    @reports_service_errors
    async def PerformCreateRoom(self, request, context):  # noqa: N802, ANN001, ANN201
        room_id, alias = await self.local.create_room(
            CreateRoomRequest(
                creator=request.creator,
                room_version=request.room_version,
                preset=request.preset,
                name=request.name,
                topic=request.topic,
                alias_localpart=request.alias_localpart,
                invite=list(request.invite),
                creation_content=json_field(request.creation_content_json, "creation_content", {}),
                initial_state=json_field(request.initial_state_json, "initial_state", []),
                power_level_overrides=json_field(
                    request.power_level_overrides_json, "power_level_overrides", {}
                ),
                additional_creators=list(request.additional_creators),
            )
        )
        return events_pb2.PerformCreateRoomResponse(room_id=room_id, room_alias=alias)

    async def _send(
        self, request: events_pb2.PerformSendEventRequest, together: bool = False
    ) -> tuple[str, int]:
        BLOCKED_ROOMS.check(request.room_id)
        return await self.local.send_event(
            request.room_id,
            request.sender,
            request.type,
            request.state_key if request.HasField("state_key") else None,
            json_field(request.content_json, "content", {}),
            request.redacts,
            request.txn_id,
            together=together,
        )

    @reports_service_errors
    async def PerformSendEvent(self, request, context):  # noqa: N802, ANN001, ANN201
        with metrics.LOCAL_SEND_SECONDS.time():
            event_id, position = await self._send(request)
        return events_pb2.PerformSendEventResponse(event_id=event_id, stream_position=position)

    async def StreamSendEvents(self, request_iterator, context):  # noqa: N802, ANN001, ANN201
        async for response in send_stream.serve(request_iterator, self._send):
            yield response

    @reports_service_errors
    async def PerformCreateAlias(self, request, context):  # noqa: N802, ANN001, ANN201
        await self.local.create_alias(
            request.alias, request.room_id, request.creator, list(request.servers)
        )
        return events_pb2.PerformCreateAliasResponse()

    @reports_service_errors
    async def PerformDeleteAlias(self, request, context):  # noqa: N802, ANN001, ANN201
        await self.local.delete_alias(request.alias)
        return events_pb2.PerformDeleteAliasResponse()

    @reports_service_errors
    async def QueryAlias(self, request, context):  # noqa: N802, ANN001, ANN201
        found = await self.local.query_alias(request.alias)
        if found is None:
            return events_pb2.QueryAliasResponse(found=False)
        return events_pb2.QueryAliasResponse(found=True, room_id=found[0], servers=found[1])

    # ------------------------------------------------------------ reads

    @reports_service_errors
    async def QueryEvents(self, request, context):  # noqa: N802, ANN001, ANN201
        if not request.as_server:
            views = await self.reads.events(list(request.event_ids))
            return events_pb2.QueryEventsResponse(events=_records(views))
        found = await self.reads.events_for_server(
            list(request.event_ids), request.as_server, request.partial_state_history
        )
        return events_pb2.QueryEventsResponse(
            events=_records(found.views), partial_state_event_ids=found.partial_state_event_ids
        )

    @reports_service_errors
    async def QueryStateAtEvent(self, request, context):  # noqa: N802, ANN001, ANN201
        wants_chain = request.include_auth_chain
        found = await self.reads.state_at_event(request.room_id, request.event_id, wants_chain)
        if found is None:
            return events_pb2.QueryStateAtEventResponse(found=False)
        state_ids, chain_ids = found
        response = events_pb2.QueryStateAtEventResponse(
            found=True, state_event_ids=state_ids, auth_chain_ids=chain_ids
        )
        if not request.ids_only:
            response.state_events.extend(_records(await self.reads.events(state_ids)))
            if wants_chain:
                response.auth_chain.extend(_records(await self.reads.events(chain_ids)))
        return response

    @reports_service_errors
    async def QueryAuthChain(self, request, context):  # noqa: N802, ANN001, ANN201
        ids = await self.reads.auth_chain(request.room_id, list(request.event_ids))
        response = events_pb2.QueryAuthChainResponse(event_ids=ids)
        if not request.ids_only:
            response.events.extend(_records(await self.reads.events(ids)))
        return response

    @reports_service_errors
    async def QueryCurrentState(self, request, context):  # noqa: N802, ANN001, ANN201
        filters = [
            (f.type, f.state_key if f.HasField("state_key") else None) for f in request.filter
        ]
        views = await self.reads.current_state(request.room_id, filters)
        if views is None:
            return events_pb2.QueryCurrentStateResponse(room_exists=False)
        return events_pb2.QueryCurrentStateResponse(room_exists=True, events=_records(views))

    @reports_service_errors
    async def QueryTimeline(self, request, context):  # noqa: N802, ANN001, ANN201
        page = await self.reads.timeline(
            request.room_id, request.from_token, request.backwards, request.limit
        )
        return events_pb2.QueryTimelineResponse(
            events=_records(page.events),
            next_token=page.next_token,
            reached_room_start=page.reached_room_start,
            resume_token=page.resume_token,
        )

    @reports_service_errors
    async def QueryRoomInfo(self, request, context):  # noqa: N802, ANN001, ANN201
        info = await self.reads.room_info(request.room_id)
        return events_pb2.QueryRoomInfoResponse(
            exists=info.exists,
            room_version=info.room_version,
            forward_extremities=list(info.forward_extremities),
            min_depth=info.min_depth,
            max_depth=info.max_depth,
            we_are_joined=info.we_are_joined,
            create_event_id=info.create_event_id,
            resync_state=info.resync_state,  # type: ignore[arg-type]
            members_known=info.members_known,
            members_expected=info.members_expected,
            resync_attempts=info.resync_attempts,
            resync_error=info.resync_error,
        )

    @reports_service_errors
    async def QueryServersInRoom(self, request, context):  # noqa: N802, ANN001, ANN201
        servers = await self.reads.servers_in_room(request.room_id, request.at_event_id)
        return events_pb2.QueryServersInRoomResponse(servers=servers or [])

    @reports_service_errors
    async def QueryServerAllowed(self, request, context):  # noqa: N802, ANN001, ANN201
        access = await self.reads.server_access(
            request.room_id,
            request.server_name,
            request.check_acl,
            request.require_joined,
            request.allow_partial_state,
        )
        return events_pb2.QueryServerAllowedResponse(
            room_exists=access.room_exists,
            allowed=access.allowed,
            reason=access.reason,
            partial_state=access.partial_state,
        )

    # ------------------------------------------------------------ streams

    async def StreamEvents(  # noqa: N802
        self, request: events_pb2.StreamEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[events_pb2.StreamEventsResponse]:
        async for entry in self.hub.subscribe(_stream_filter(request), request.after_position):
            yield _stream_item(entry)

    async def StreamEventBatches(  # noqa: N802
        self, request: events_pb2.StreamEventBatchesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[events_pb2.StreamEventBatchesResponse]:
        asked = request.stream
        batches = self.hub.subscribe_batches(_stream_filter(asked), asked.after_position)
        async for batch in batches:
            yield events_pb2.StreamEventBatchesResponse(items=[_stream_item(e) for e in batch])
