"""The events service's long-held connections survive PostgreSQL ending them.

``pg_terminate_backend`` (what a failover, a restart or a pooler does) ends
the transaction guard's lock connection, the stream hub's LISTEN connection
and every pooled one; the service goes on: the guard takes back the locks it
still needs (and never unlocks one its lost session had), inbound
transactions are answered, and a stream opened before the cut carries every
event written after it, in order, none skipped.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from mxfed_api.events.v1 import events_pb2
from services.events import storage
from services.events.input import TransactionGuard
from tests.support.databases import backends, terminate_backends
from tests.support.events_service import (
    EventsService,
    RemoteServer,
    _public_room_with_remote_member,
)
from tests.support.polling import wait_until


async def test_guard_takes_back_its_locks_after_losing_its_connection(
    events_pool: asyncpg.Pool, database_url: str
) -> None:
    guard = TransactionGuard(events_pool)
    other = await asyncpg.connect(database_url)  # another replica's session
    first = storage.lock_key("txn:origin.example\x00t1")
    try:
        async with guard.hold("origin.example", "t1"):
            assert not await other.fetchval("SELECT pg_try_advisory_lock($1)", first)
            pid = await guard._conn.fetchval("SELECT pg_backend_pid()")
            assert await terminate_backends(database_url, [pid]) == 1
            await wait_until(lambda: not guard._conn.alive, timeout=10)
            # The next use opens a new connection and takes the held lock back.
            async with guard.hold("origin.example", "t2"):
                assert guard._conn.generation == 2
                assert not await other.fetchval("SELECT pg_try_advisory_lock($1)", first)
        # Released on the new session: another replica may have it now.
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", first)

        # A lock another replica took while our session was gone is not ours:
        # leaving the guard does not unlock it.
        async with guard.hold("origin.example", "t3"):
            third = storage.lock_key("txn:origin.example\x00t3")
            pid = await guard._conn.fetchval("SELECT pg_backend_pid()")
            await terminate_backends(database_url, [pid])
            await wait_until(lambda: not guard._conn.alive, timeout=10)
            assert await other.fetchval("SELECT pg_try_advisory_lock($1)", third)
        assert (
            await other.fetchval(
                "SELECT count(*) FROM pg_locks"
                " WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
            == 2
        )
    finally:
        await guard.close()
        await other.close()


async def test_a_holder_cancelled_while_its_lock_is_being_taken_gives_the_lock_back(
    events_pool: asyncpg.Pool, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = TransactionGuard(events_pool)
    other = await asyncpg.connect(database_url)  # another replica's session
    key = storage.lock_key("txn:origin.example\x00t1")
    taken_on_server, answer = asyncio.Event(), asyncio.Event()
    try_lock = storage.try_transaction_lock

    async def answered_late(
        connection: asyncpg.Connection, lock: int, origin: str, txn_id: str
    ) -> tuple[bool, str | None]:
        # The server has run the query (the lock is taken); its answer is still on the way.
        result = await try_lock(connection, lock, origin, txn_id)
        taken_on_server.set()
        await answer.wait()
        return result

    monkeypatch.setattr(storage, "try_transaction_lock", answered_late)

    async def hold() -> None:
        async with guard.hold("origin.example", "t1"):
            await asyncio.Event().wait()

    holder = asyncio.create_task(hold())
    try:
        await asyncio.wait_for(taken_on_server.wait(), 30)
        assert not await other.fetchval("SELECT pg_try_advisory_lock($1)", key)
        holder.cancel()  # e.g. the remote gave up on its /send
        answer.set()
        await asyncio.gather(holder, return_exceptions=True)
        assert holder.cancelled()
        # Given back: another replica can process the retried transaction.
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", key)
    finally:
        await guard.close()
        await other.close()


async def test_a_lock_taken_by_a_guard_statement_that_failed_is_given_back(
    events_pool: asyncpg.Pool, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard's statement takes the session lock, then fails in its read of the stored
    answer with an error that leaves the connection in use (out of memory, say; a
    cancellation or timeout ends the session, and its locks with it): the transaction
    fails, and its lock is not left to the session, where it would refuse that
    transaction on every replica."""
    guard = TransactionGuard(events_pool)
    other = await asyncpg.connect(database_url)  # another replica's session
    key = storage.lock_key("txn:origin.example\x00t1")

    async def failed_after_locking(
        connection: asyncpg.Connection, lock: int, origin: str, txn_id: str
    ) -> tuple[bool, str | None]:
        assert await storage.try_session_lock_key(connection, lock)
        raise asyncpg.exceptions.OutOfMemoryError("out of memory")

    monkeypatch.setattr(storage, "try_transaction_lock", failed_after_locking)
    try:
        with pytest.raises(asyncpg.exceptions.OutOfMemoryError):
            async with guard.hold("origin.example", "t1"):
                pass
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", key)
    finally:
        await guard.close()
        await other.close()


async def test_send_and_stream_go_on_after_every_connection_is_ended(
    events: EventsService, remote: RemoteServer, database_url: str
) -> None:
    room_id, alice = await _public_room_with_remote_member(events, remote)
    admin = f"@admin:{events.server_name}"
    stream = events.stub.StreamEvents(
        events_pb2.StreamEventsRequest(room_id=room_id, local_senders_only=False)
    )
    received: list[str] = []

    async def collect() -> None:
        async for item in stream:
            received.append(item.event.event_id)

    collector = asyncio.create_task(collect())
    before = await events.send(room_id, admin, "m.room.message", {"body": "before"})
    await wait_until(lambda: before.event_id in received, timeout=10)
    listening = await backends(database_url, query_like=f"LISTEN %{storage.NOTIFY_CHANNEL}%")
    assert listening

    ended = await terminate_backends(database_url)
    assert ended >= len(listening) + 1

    # An inbound transaction after the cut is answered (guard and pool reconnect).
    head = await events.head(room_id)
    pdu, pdu_id = remote.pdu(head, "m.room.message", alice, {"body": "after, remote"})
    assert await events.transaction(remote.name, [pdu]) == {"pdus": {pdu_id: {}}}
    after = [
        (await events.send(room_id, admin, "m.room.message", {"body": f"after {n}"})).event_id
        for n in range(5)
    ]
    await wait_until(lambda: after[-1] in received, timeout=10)
    assert received[received.index(before.event_id) + 1 :] == [pdu_id, *after]

    # The hub LISTENs again on a new connection.
    async def listening_again() -> list[int]:
        return await backends(
            database_url,
            query_like=f"LISTEN %{storage.NOTIFY_CHANNEL}%",
            exclude=set(listening),
        )

    for _ in range(200):
        if await listening_again():
            break
        await asyncio.sleep(0.05)
    assert await listening_again()
    stream.cancel()
    collector.cancel()
    await asyncio.gather(collector, return_exceptions=True)


async def test_the_guard_gives_the_answer_stored_before_it_took_the_lock(
    events_pool: asyncpg.Pool, database_url: str
) -> None:
    """Taking the lock and reading the stored answer are one round trip: the read sees
    what the replica that held the lock stored before giving it back."""
    guard = TransactionGuard(events_pool)
    other = await asyncpg.connect(database_url)  # another replica's session
    txn_id = f"t-{uuid.uuid4().hex}"
    key = storage.lock_key(f"txn:origin.example\x00{txn_id}")

    async def enter() -> str | None:
        async with guard.hold("origin.example", txn_id) as stored:
            return stored

    try:
        async with guard.hold("origin.example", f"new-{txn_id}") as stored:
            assert stored is None
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", key)
        entering = asyncio.create_task(enter())  # polls while the other replica works
        await other.execute(
            "INSERT INTO events.transactions (origin, txn_id, response_json, received_ts)"
            " VALUES ('origin.example', $1, '{\"pdus\": {}}', 0)",
            txn_id,
        )
        await other.execute("SELECT pg_advisory_unlock($1)", key)
        assert await asyncio.wait_for(entering, 30) == '{"pdus": {}}'
    finally:
        await guard.close()
        await other.close()
