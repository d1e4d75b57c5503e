"""A stand-in for the events service's gRPC API, as much as the sender uses.

``StreamEventBatches`` replays the stored items after ``after_position`` and
then follows new ones, those stored since its last message in one;
``QueryServersInRoom`` answers from a dict. Tests append local events with
:meth:`FakeEvents.add_event`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc

from mxfed_api.events.v1 import events_pb2, events_pb2_grpc
from tests.support.grpc_plane import bind_loopback, make_server
from tests.support.sender_queues import test_pdu


class FakeEvents(events_pb2_grpc.EventsServicer):
    def __init__(self) -> None:
        self.items: list[events_pb2.StreamEventsResponse] = []
        self.servers: dict[str, list[str]] = {}
        self.stream_calls = 0
        self._changed = asyncio.Condition()
        self._server: grpc.aio.Server = make_server("events")
        events_pb2_grpc.add_EventsServicer_to_server(self, self._server)
        # Bound now and held; it answers once started.
        self.address = bind_loopback(self._server, "events")

    async def start(self) -> FakeEvents:
        await self._server.start()
        return self

    async def stop(self) -> None:
        await self._server.stop(grace=0)

    async def add_event(
        self,
        pdu_id: str,
        servers_before: Sequence[str],
        *,
        room_id: str = "!room:sender-test.example",
        status: int = events_pb2.EVENT_STATUS_ACCEPTED,
    ) -> int:
        position = len(self.items) + 1
        self.items.append(
            events_pb2.StreamEventsResponse(
                position=position,
                event=events_pb2.EventRecord(
                    event_id=f"${pdu_id}",
                    room_id=room_id,
                    room_version="12",
                    pdu_json=test_pdu(pdu_id, room_id),
                    status=status,
                    stream_position=position,
                ),
                servers_before=list(servers_before),
            )
        )
        async with self._changed:
            self._changed.notify_all()
        return position

    async def StreamEventBatches(
        self, request: events_pb2.StreamEventBatchesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[events_pb2.StreamEventBatchesResponse]:
        assert request.stream.local_senders_only
        self.stream_calls += 1
        sent = request.stream.after_position
        while True:
            if sent < len(self.items):
                batch, sent = self.items[sent:], len(self.items)
                yield events_pb2.StreamEventBatchesResponse(items=batch)
            async with self._changed:
                await self._changed.wait_for(lambda sent=sent: len(self.items) > sent)

    async def QueryServersInRoom(
        self, request: events_pb2.QueryServersInRoomRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.QueryServersInRoomResponse:
        return events_pb2.QueryServersInRoomResponse(servers=self.servers.get(request.room_id, []))
