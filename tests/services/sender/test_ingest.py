"""Ingest: the events stream into per-destination queues, once, by one replica."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from mxfed.internal_plane import Caller
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc
from services.sender.delivery import DeliveryOptions, DestinationWorker
from services.sender.ingest import Ingester, given_transactions
from services.sender.storage import WAKE_CHANNEL, IngestItem, SenderStorage
from tests.services.sender.conftest import Replica
from tests.support.grpc_plane import channel_to
from tests.support.polling import wait_until
from tests.support.sender_queues import OUR_SERVER, queue_pdus
from tests.support.sender_queues import test_pdu as pdu_json


def ingester(database_url: str, address: str, woken: list[str]) -> Ingester:
    channel = channel_to(address, "events", Caller.part("sender"))
    return Ingester(
        database_url,
        events_pb2_grpc.EventsStub(channel),
        OUR_SERVER,
        woken.extend,
        lock_poll_interval=0.2,
    )


async def queue_rows(storage: SenderStorage) -> list[tuple[str, int]]:
    rows = await storage.pool.fetch(
        "SELECT destination, stream_position FROM sender.pdu_queue"
        " ORDER BY stream_position, destination"
    )
    return [(r["destination"], r["stream_position"]) for r in rows]


async def test_events_are_queued_once_per_destination_without_ourselves(
    sender_storage: SenderStorage, fake_events, database_url: str
) -> None:
    await fake_events.add_event("a", ["x.example", OUR_SERVER, "y.example"])
    await fake_events.add_event("soft", ["x.example"], status=events_pb2.EVENT_STATUS_SOFT_FAILED)
    await fake_events.add_event("b", ["y.example"])
    await fake_events.add_event("alone", [OUR_SERVER])
    woken: list[str] = []
    task = asyncio.create_task(ingester(database_url, fake_events.address, woken).run())
    try:
        await wait_until(lambda: "y.example" in woken)
        await asyncio.sleep(0.3)
        assert await queue_rows(sender_storage) == [
            ("x.example", 1),
            ("y.example", 1),
            ("y.example", 3),
        ]
        assert (
            await sender_storage.pool.fetchval("SELECT stream_position FROM sender.ingest_cursor")
            == 4
        )
        assert await sender_storage.pool.fetchval("SELECT count(*) FROM sender.pdus") == 2
        # Live events follow.
        await fake_events.add_event("c", ["z.example"])
        await wait_until(lambda: "z.example" in woken)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_restarted_ingester_resumes_from_the_cursor_and_duplicates_nothing(
    sender_storage: SenderStorage, fake_events, database_url: str
) -> None:
    for i in range(5):
        await fake_events.add_event(f"e{i}", ["x.example"])
    woken: list[str] = []
    first = asyncio.create_task(ingester(database_url, fake_events.address, woken).run())
    await wait_until(lambda: bool(woken))
    await asyncio.sleep(0.2)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    # Delivered meanwhile: the queue is empty again.
    await sender_storage.pool.execute("DELETE FROM sender.pdu_queue")
    for i in range(5, 8):
        await fake_events.add_event(f"e{i}", ["x.example"])
    second = asyncio.create_task(ingester(database_url, fake_events.address, woken).run())
    try:
        # Resumes after what the first one stored: 6, 7, 8 and never 5 again.
        expected = [("x.example", p) for p in (6, 7, 8)]

        async def resumed() -> None:
            while (rows := await queue_rows(sender_storage)) != expected:
                assert set(rows) <= set(expected), rows
                await asyncio.sleep(0.05)

        await asyncio.wait_for(resumed(), 30)
    finally:
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)


async def test_only_one_replica_ingests_and_another_takes_over_when_it_dies(
    sender_storage: SenderStorage, fake_events, database_url: str
) -> None:
    await fake_events.add_event("a", ["x.example"])
    woken_1: list[str] = []
    woken_2: list[str] = []
    one = ingester(database_url, fake_events.address, woken_1)
    two = ingester(database_url, fake_events.address, woken_2)
    task_1 = asyncio.create_task(one.run())
    await wait_until(lambda: bool(woken_1))
    task_2 = asyncio.create_task(two.run())
    try:
        await fake_events.add_event("b", ["y.example"])
        await wait_until(lambda: "y.example" in woken_1)
        await asyncio.sleep(0.5)
        assert woken_2 == []
        assert fake_events.stream_calls == 1
        task_1.cancel()  # its connection closes: the lock goes with it
        await asyncio.gather(task_1, return_exceptions=True)
        await fake_events.add_event("c", ["z.example"])
        await wait_until(lambda: "z.example" in woken_2, timeout=30)
        assert await queue_rows(sender_storage) == [
            ("x.example", 1),
            ("y.example", 2),
            ("z.example", 3),
        ]
    finally:
        task_2.cancel()
        await asyncio.gather(task_2, return_exceptions=True)


async def test_a_stored_batch_wakes_the_other_replicas_with_its_rows_readable(
    sender_storage: SenderStorage, database_url: str
) -> None:
    # Another replica's workers are woken by a notification naming the destinations; by
    # then the batch is committed, so the queue rows it names are there to take.
    listener = await asyncpg.connect(database_url)
    seen: asyncio.Queue[str] = asyncio.Queue()

    def notified(_connection: object, _pid: int, _channel: str, payload: str) -> None:
        seen.put_nowait(payload)

    try:
        await listener.add_listener(WAKE_CHANNEL, notified)
        items = [
            IngestItem(7, "$a", "!r:x", b"{}", ["x.example", "y.example"]),
            IngestItem(8, "$b", "!r:x", b"{}", ["y.example"]),
            IngestItem(9, "$c", "!r:x", b"{}", []),
        ]
        async with sender_storage.pool.acquire() as connection:
            added = await SenderStorage.ingest_batch(connection, items, 9)
        assert added == 3
        payload = await asyncio.wait_for(seen.get(), 10)
        assert payload.split("\n") == ["x.example", "y.example"]
        assert await queue_rows(sender_storage) == [
            ("x.example", 7),
            ("y.example", 7),
            ("y.example", 8),
        ]
        assert await sender_storage.pool.fetchval("SELECT count(*) FROM sender.pdus") == 2
        assert (
            await sender_storage.pool.fetchval("SELECT stream_position FROM sender.ingest_cursor")
            == 9
        )
        async with sender_storage.pool.acquire() as connection:  # replayed: nothing twice
            assert await SenderStorage.ingest_batch(connection, items, 9) == 0
        assert len(await queue_rows(sender_storage)) == 3
    finally:
        await listener.close()


@asynccontextmanager
async def ingesting_with_delivery(
    fake_events, database_url: str, replica_factory
) -> AsyncIterator[tuple[Replica, Ingester]]:
    """A replica's delivery with its ingest, as a sender part runs them. Long lingers:
    a worker stays, idle, with its last 200 not yet recorded."""
    replica = await replica_factory(
        options=DeliveryOptions(
            idle_linger=60, completion_linger=60, scan_interval=0.5, maintenance_interval=3600
        )
    )
    channel = channel_to(fake_events.address, "events", Caller.part("sender"))
    ingest = Ingester(
        database_url,
        events_pb2_grpc.EventsStub(channel),
        OUR_SERVER,
        replica.manager.wake,
        delivery=replica.manager,
        lock_poll_interval=0.2,
    )
    task = asyncio.create_task(ingest.run())
    try:
        yield replica, ingest
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def first_delivered_then_idle(fake_events, receiver, replica: Replica) -> DestinationWorker:
    """Event "a" delivered to ``receiver``; its worker then waits idle, its 200 not recorded."""
    await fake_events.add_event("a", [receiver.server_name])
    await wait_until(lambda: receiver.pdu_ids() == ["a"])
    worker = replica.manager.workers[receiver.server_name]
    await wait_until(lambda: worker.idle)
    return worker


async def test_an_idle_destination_gets_its_transaction_from_the_ingest_statement(
    sender_storage: SenderStorage, fake_events, database_url: str, receiver_factory, replica_factory
) -> None:
    receiver = await receiver_factory()
    async with ingesting_with_delivery(fake_events, database_url, replica_factory) as (
        replica,
        _,
    ):
        worker = await first_delivered_then_idle(fake_events, receiver, replica)
        calls: list[object] = []
        taking = sender_storage.next_transactions

        async def counted(*args: object, **kwargs: object) -> object:
            calls.append(args)
            return await taking(*args, **kwargs)  # type: ignore[arg-type]

        sender_storage.next_transactions = counted  # type: ignore[method-assign]
        for pdu_id in ("b", "c"):
            await fake_events.add_event(pdu_id, [receiver.server_name])
            await wait_until(lambda last=pdu_id: receiver.pdu_ids()[-1] == last)
            await wait_until(lambda: worker.idle)
        # Made by ingest, each 200 recorded with the next: the worker made no call.
        assert receiver.pdu_ids() == ["a", "b", "c"]
        assert len(receiver.delivered) == 3
        assert calls == []
        assert await queue_rows(sender_storage) == [(receiver.server_name, 3)]
        assert (
            await pending_transaction(sender_storage, receiver.server_name)
            == list(receiver.delivered)[-1]
        )


async def pending_transaction(storage: SenderStorage, destination: str) -> str | None:
    return await storage.pool.fetchval(
        "SELECT pending_txn_id FROM sender.destinations WHERE destination = $1", destination
    )


@asynccontextmanager
async def ingest_held_at(
    storage: SenderStorage, destination: str
) -> AsyncIterator[asyncpg.Connection]:
    """The destination's row locked by a transaction of ours until the block ends (and
    commits): ingest's statement waits for it, its events stored by nobody meanwhile."""
    async with storage.pool.acquire() as connection, connection.transaction():
        await connection.execute(
            "SELECT 1 FROM sender.destinations WHERE destination = $1 FOR UPDATE", destination
        )
        yield connection


async def stored(storage: SenderStorage, position: int) -> bool:
    return bool(
        await storage.pool.fetchval(
            "SELECT count(*) FROM sender.pdus WHERE stream_position = $1", position
        )
    )


async def test_an_idle_destination_gets_its_events_while_ingest_stores_them(
    sender_storage: SenderStorage, fake_events, database_url: str, receiver_factory, replica_factory
) -> None:
    receiver = await receiver_factory()
    async with ingesting_with_delivery(fake_events, database_url, replica_factory) as (
        replica,
        ingest,
    ):
        await first_delivered_then_idle(fake_events, receiver, replica)
        async with ingest_held_at(sender_storage, receiver.server_name):
            position = await fake_events.add_event("b", [receiver.server_name])
            await wait_until(lambda: receiver.pdu_ids() == ["a", "b"])
            assert not await stored(sender_storage, position)  # on the wire first
        await wait_until(lambda: ingest.position == position)
        # Recorded as the pending transaction, with the id the receiver got.
        sent = list(receiver.delivered)[-1]
        assert await pending_transaction(sender_storage, receiver.server_name) == sent
        assert await sender_storage.pool.fetchval(
            "SELECT array_agg(stream_position) FROM sender.pdu_queue WHERE txn_id = $1", sent
        ) == [position]


async def test_a_failed_transaction_sent_while_stored_is_retried_as_recorded(
    sender_storage: SenderStorage, fake_events, database_url: str, receiver_factory, replica_factory
) -> None:
    receiver = await receiver_factory()
    async with ingesting_with_delivery(fake_events, database_url, replica_factory) as (
        replica,
        _,
    ):
        await first_delivered_then_idle(fake_events, receiver, replica)
        receiver.fail_next = 1
        async with ingest_held_at(sender_storage, receiver.server_name):
            await fake_events.add_event("b", [receiver.server_name])
            await wait_until(lambda: [a.status for a in receiver.attempts] == [200, 500])
        await wait_until(lambda: receiver.pdu_ids() == ["a", "b"])
        failed, retried = receiver.attempts[1:]
        assert (retried.status, retried.txn_id, retried.body) == (200, failed.txn_id, failed.body)


async def test_a_transaction_sent_while_stored_but_not_recorded_leaves_its_events_queued(
    sender_storage: SenderStorage, fake_events, database_url: str, receiver_factory, replica_factory
) -> None:
    receiver = await receiver_factory()
    async with ingesting_with_delivery(fake_events, database_url, replica_factory) as (
        replica,
        ingest,
    ):
        await first_delivered_then_idle(fake_events, receiver, replica)
        listener = await asyncpg.connect(database_url)
        woken: list[str] = []
        await listener.add_listener(WAKE_CHANNEL, lambda *args: woken.append(args[-1]))
        try:
            async with ingest_held_at(sender_storage, receiver.server_name) as held:
                position = await fake_events.add_event("b", [receiver.server_name])
                await wait_until(lambda: receiver.pdu_ids() == ["a", "b"])
                # Meanwhile the destination went to another replica.
                await held.execute(
                    "UPDATE sender.destinations SET lease_owner = 'elsewhere'"
                    " WHERE destination = $1",
                    receiver.server_name,
                )
            await wait_until(lambda: ingest.position == position)
            # ... whose workers are woken for it.
            await wait_until(lambda: receiver.server_name in woken)
        finally:
            await listener.close()
        # Not this replica's pending transaction: its event stays queued for the
        # replica that has the destination now (sent at least once).
        assert await queue_rows(sender_storage) == [(receiver.server_name, position)]
        assert (
            await sender_storage.pool.fetchval(
                "SELECT txn_id FROM sender.pdu_queue WHERE stream_position = $1", position
            )
            is None
        )
        await wait_until(lambda: receiver.server_name not in replica.manager.workers)


async def test_a_transaction_sent_while_its_statement_failed_goes_again_once_stored(
    sender_storage: SenderStorage, fake_events, database_url: str, receiver_factory, replica_factory
) -> None:
    receiver = await receiver_factory()
    async with ingesting_with_delivery(fake_events, database_url, replica_factory) as (
        replica,
        _,
    ):
        await first_delivered_then_idle(fake_events, receiver, replica)
        first = list(receiver.delivered)[0]
        async with ingest_held_at(sender_storage, receiver.server_name) as held:
            await fake_events.add_event("b", [receiver.server_name])
            await wait_until(lambda: receiver.pdu_ids() == ["a", "b"])
            # Ingest's connection is lost while its statement waits for our lock.
            waiting = (
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND query LIKE '%FROM sender.ingest(%' AND wait_event_type = 'Lock'"
            )
            await wait_until(lambda: held.fetchval(waiting), what="ingest waiting for the lock")
            assert await held.fetchval(f"SELECT pg_terminate_backend(pid) FROM ({waiting}) AS w")
        # Ingest stores it again from its cursor; it goes again, in a transaction
        # recorded this time; the first 200, not recorded by the failed statement, is.
        await wait_until(lambda: receiver.pdu_ids() == ["a", "b", "b"])
        again = list(receiver.delivered)[-1]
        await wait_until(
            lambda: pending_transaction(sender_storage, receiver.server_name),
            what="the transaction sent again recorded",
        )
        assert await pending_transaction(sender_storage, receiver.server_name) == again
        assert first not in {
            row["txn_id"]
            for row in await sender_storage.pool.fetch("SELECT txn_id FROM sender.pdu_queue")
        }


async def test_events_queued_while_a_reserved_worker_has_not_run_yet_follow_its_transaction(
    sender_storage: SenderStorage, receiver_factory, replica_factory
) -> None:
    """A wake that comes between ingest reserving an idle worker and the worker running
    is for events not in the transaction ingest gives it: they go right after it."""
    receiver = await receiver_factory()
    destination = receiver.server_name
    replica = await replica_factory(
        options=DeliveryOptions(
            idle_linger=60, completion_linger=60, scan_interval=60, maintenance_interval=3600
        )
    )
    await queue_pdus(sender_storage, [destination], 1, prefix="a")
    await wait_until(lambda: len(receiver.pdu_ids()) == 1)
    worker = replica.manager.workers[destination]
    await wait_until(lambda: worker.idle)
    given_item = IngestItem(9001, "$b", "!room:x", pdu_json("b"), [destination])
    # An event queued without a notification (its wake comes late, below).
    await sender_storage.pool.execute(
        "WITH stored AS (INSERT INTO sender.pdus"
        " (stream_position, event_id, room_id, pdu_json, queued_ts)"
        " VALUES (9000, '$c', '!room:x', $1, 0))"
        " INSERT INTO sender.pdu_queue (destination, stream_position) VALUES ($2, 9000)",
        pdu_json("c"),
        destination,
    )
    [reservation] = replica.manager.reserve_idle([destination])
    txn = given_transactions([destination], [given_item], 50)[destination]
    reservation.give(txn)
    replica.manager.wake([destination])  # before the worker has run
    async with sender_storage.pool.acquire() as connection:
        ingested = await SenderStorage.ingest_and_take(
            connection,
            [given_item],
            9001,
            completed=[(destination, reservation.completed)] if reservation.completed else [],
            instance_id=replica.membership.instance_id,
            max_pdus=50,
            max_edus=100,
            quiet=[destination],
            given=[txn],
        )
    reservation.recorded(ingested.given[destination])
    assert ingested.given == {destination: True}
    await wait_until(lambda: receiver.pdu_ids()[1:] == ["b", "c"])
    assert list(receiver.delivered)[1] == txn.txn_id
