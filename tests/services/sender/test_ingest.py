"""Ingest: the events stream into per-destination queues, once, by one replica."""

from __future__ import annotations

import asyncio

import asyncpg

from mxfed.internal_plane import Caller
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc
from services.sender.delivery import DeliveryOptions
from services.sender.ingest import Ingester
from services.sender.storage import WAKE_CHANNEL, IngestItem, SenderStorage
from tests.support.grpc_plane import channel_to
from tests.support.polling import wait_until
from tests.support.sender_queues import OUR_SERVER


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


async def test_an_idle_destination_gets_its_transaction_from_the_ingest_statement(
    sender_storage: SenderStorage, fake_events, database_url: str, receiver_factory, replica_factory
) -> None:
    receiver = await receiver_factory()
    # Long lingers: the worker stays, idle, with each 200 not yet recorded.
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
        await fake_events.add_event("a", [receiver.server_name])
        await wait_until(lambda: receiver.pdu_ids() == ["a"])
        worker = replica.manager.workers[receiver.server_name]
        await wait_until(lambda: worker.idle)
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
        # Taken by ingest, each 200 recorded with the next: the worker made no call.
        assert receiver.pdu_ids() == ["a", "b", "c"]
        assert len(receiver.delivered) == 3
        assert calls == []
        assert await queue_rows(sender_storage) == [(receiver.server_name, 3)]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
