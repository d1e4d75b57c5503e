"""Ingest: the events service's stream of local events → per-destination queues.

Exactly one replica ingests at a time: the one holding the PostgreSQL
advisory lock ``hashtext('mxfed.sender.ingest')`` on its ingest connection.
The lock belongs to that connection's session, so when the holder dies its
connection closes and another replica (polling with ``pg_try_advisory_lock``)
takes over within a couple of seconds. Every batch is written on the
lock-holding connection in one transaction — events, queue rows and the
advanced cursor together — so a batch written by a replica that has lost the
lock cannot commit, and a crash replays from the stored cursor and never
queues an event twice (the inserts are ON CONFLICT DO NOTHING as well).

The workers of this replica that wait idle for a destination of the batch are
reserved first (:meth:`DeliveryManager.reserve_idle`): the batch's statement
also records their last 200, so a worker never takes a transaction itself
meanwhile and its destination keeps one transaction in flight. When the
batch's events for such a destination fit in one transaction, ingest makes it
(:func:`given_transactions`) and hands it over at once: the worker sends it
while the statement records it as the destination's pending transaction.
Otherwise the statement takes the worker's next transaction, recorded before
it is handed over. A statement that fails records nothing: the workers take
their next themselves, and what they were given goes again once stored.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Iterable, Sequence

import asyncpg

from mxfed import tracing
from mxfed.clock import now_ms
from mxfed.leadership import lead_forever
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc
from services.sender import metrics
from services.sender.delivery import DeliveryManager
from services.sender.storage import Ingested, IngestItem, SenderStorage, Transaction

log = logging.getLogger(__name__)

LOCK_NAME = "mxfed.sender.ingest"
MAX_BATCH = 1000
# Soft-failed and rejected local events are not sent; outliers have no place in the DAG.
_NOT_SENT = frozenset(
    {
        events_pb2.EVENT_STATUS_SOFT_FAILED,
        events_pb2.EVENT_STATUS_REJECTED,
        events_pb2.EVENT_STATUS_OUTLIER,
    }
)


def ingest_item(item: events_pb2.StreamEventsResponse, server_name: str) -> IngestItem | None:
    """What to queue for one stream item (``None``: nothing to send)."""
    if item.WhichOneof("item") != "event":
        return None
    event = item.event
    if event.status in _NOT_SENT:
        return None
    # An event relayed for a remote server (its send_join, say) is not sent back to it.
    destinations = sorted(set(item.servers_before) - {server_name, item.relayed_for, ""})
    tracing.note_position(item.position, item.traceparent)
    return IngestItem(
        stream_position=item.position,
        event_id=event.event_id,
        room_id=event.room_id,
        pdu_json=event.pdu_json,
        destinations=destinations,
    )


def given_transactions(
    destinations: Iterable[str], queued: Sequence[IngestItem], max_pdus: int
) -> dict[str, Transaction]:
    """The transactions idle workers send while ingest records them: per destination of
    ``destinations``, the batch's events for it, as taking it would make it (its queue is
    empty: the worker waits idle, and only ingest queues PDUs); none for a destination
    whose events need more than one. One pass over the batch's queue rows."""
    wanted = set(destinations)
    items: dict[str, list[IngestItem]] = {}
    for item in queued:
        for destination in item.destinations:
            if destination in wanted:
                items.setdefault(destination, []).append(item)
    now = now_ms()
    return {
        destination: Transaction(
            destination=destination,
            # Not the counter's "<ms>-<n>" (kept in the database): unique without it.
            txn_id=f"{now}-i{secrets.token_hex(8)}",
            origin_server_ts=now,
            pdus=[item.pdu_json for item in mine],
            positions=[item.stream_position for item in mine],
        )
        for destination, mine in items.items()
        if len(mine) <= max_pdus
    }


class Ingester:
    def __init__(
        self,
        database_url: str,
        events: events_pb2_grpc.EventsStub,
        server_name: str,
        on_queued: Callable[[Iterable[str]], None],
        *,
        delivery: DeliveryManager | None = None,
        lock_poll_interval: float = 2.0,
    ) -> None:
        self.database_url = database_url
        self.events = events
        self.server_name = server_name
        self.on_queued = on_queued
        # This replica's workers: those waiting idle get their next transaction
        # taken in the statement that stores what woke them.
        self.delivery = delivery
        self.lock_poll_interval = lock_poll_interval
        self.position = 0

    async def run(self) -> None:
        """Forever: wait for the ingest lock, then follow the stream while holding it."""
        await lead_forever(
            self.database_url,
            LOCK_NAME,
            self._follow,
            poll_interval=self.lock_poll_interval,
            on_leadership=lambda held: metrics.INGEST_LEADER.set(1 if held else 0),
        )

    async def _follow(self, connection: asyncpg.Connection) -> None:
        self.position = await SenderStorage.read_cursor(connection)
        metrics.INGEST_POSITION.set(self.position)
        # wait_for_ready: at start the events channel may still be connecting.
        asked = events_pb2.StreamEventsRequest(
            after_position=self.position, local_senders_only=True
        )
        call = self.events.StreamEventBatches(
            events_pb2.StreamEventBatchesRequest(stream=asked), wait_for_ready=True
        )
        items: asyncio.Queue[events_pb2.StreamEventsResponse | None] = asyncio.Queue(
            maxsize=10 * MAX_BATCH
        )

        async def read() -> None:
            try:
                async for batch in call:
                    for item in batch.items:
                        await items.put(item)
            finally:
                await items.put(None)

        reader = asyncio.create_task(read(), name="sender:ingest-read")
        try:
            ended = False
            while not ended:
                first = await items.get()
                batch = [] if first is None else [first]
                ended = first is None
                while not ended and len(batch) < MAX_BATCH and not items.empty():
                    item = items.get_nowait()
                    if item is None:
                        ended = True
                    else:
                        batch.append(item)
                if batch:
                    await self._store(connection, batch)
            await reader  # re-raises the stream's error, if any
            log.info("events stream ended; reconnecting")
        finally:
            reader.cancel()
            call.cancel()

    async def _store(
        self, connection: asyncpg.Connection, batch: list[events_pb2.StreamEventsResponse]
    ) -> None:
        queued = [
            converted
            for converted in (ingest_item(item, self.server_name) for item in batch)
            if converted is not None
        ]
        cursor = max(item.position for item in batch)
        destinations = {d for item in queued for d in item.destinations}
        reserved, instance_id, max_pdus, max_edus = [], "", 0, 0
        given: list[Transaction] = []
        if self.delivery is not None:
            reserved = self.delivery.reserve_idle(sorted(destinations))
            instance_id = self.delivery.membership.instance_id
            max_pdus, max_edus = self.delivery.options.max_pdus, self.delivery.options.max_edus
            made = given_transactions((r.destination for r in reserved), queued, max_pdus)
            for reservation in reserved:
                txn = made.get(reservation.destination)
                if txn is not None:
                    reservation.give(txn)  # on its way while the statement records it
                    given.append(txn)
        ingested: Ingested | None = None
        try:
            with metrics.INGEST_SECONDS.time():
                ingested = await SenderStorage.ingest_and_take(
                    connection,
                    queued,
                    cursor,
                    [r.destination for r in reserved if r.given is None],
                    completed=[(r.destination, r.completed) for r in reserved if r.completed],
                    instance_id=instance_id,
                    max_pdus=max_pdus,
                    max_edus=max_edus,
                    quiet=[r.destination for r in reserved],
                    given=given,
                )
        finally:
            for reservation in reserved:
                if ingested is None:  # the statement failed: the worker takes its next itself
                    reservation.not_taken()
                elif reservation.given is not None:
                    reservation.recorded(ingested.given.get(reservation.destination, False))
                elif reservation.destination in ingested.taken:
                    reservation.taken(ingested.taken[reservation.destination])
                else:
                    reservation.not_taken()
        assert ingested is not None  # else the statement's error went on above
        added = ingested.added
        unrecorded = [d for d, recorded in ingested.given.items() if not recorded]
        if unrecorded:
            # Left queued (the lease moved, say), and told to no one by the statement: the
            # replicas are woken, so whichever has the destination now sends them.
            await SenderStorage.wake(connection, unrecorded)
        self.position = max(self.position, cursor)
        metrics.INGEST_POSITION.set(self.position)
        metrics.EVENTS_INGESTED.inc(len(queued))
        metrics.QUEUE_ROWS_INGESTED.inc(added)
        woken = destinations - {r.destination for r in reserved}
        if woken:
            self.on_queued(woken)
