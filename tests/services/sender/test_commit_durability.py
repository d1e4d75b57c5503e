"""Which of the sender's bookkeeping commits wait for the WAL flush.

Ingested events, recorded 200s and PDUs taken into a transaction can all be had again
if a crash of the database server loses their commit (the events stream from the
cursor, the pending transaction under its id, the queued rows), so those commits do not
wait for the disk; a transaction that takes queued EDUs (acknowledged to whoever queued
them) into a new transaction id is flushed before it can be sent. Each call runs here
inside a transaction of the test's, so the setting its statement left for the commit
can be read before it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from services.sender.storage import IngestItem, QueuedEdu, SenderStorage, Transaction
from tests.support.sender_queues import queue_pdus
from tests.support.sender_queues import test_pdu as pdu_json

LIMITS = {"max_pdus": 50, "max_edus": 100}
OWNER = "replica-a"
THERE = "there.example"


async def commit_mode(
    storage: SenderStorage, call: Callable[[asyncpg.Connection], Awaitable[Any]]
) -> tuple[Any, str]:
    """``call``'s result, and ``synchronous_commit`` as its statement left it for the commit."""
    async with storage.pool.acquire() as connection, connection.transaction():
        result = await call(connection)
        return result, await connection.fetchval("SELECT current_setting('synchronous_commit')")


async def test_ingest_with_its_take_and_recorded_200_commits_without_the_flush(
    sender_storage: SenderStorage,
) -> None:
    # A destination sent to before, its worker idle.
    await sender_storage.pool.execute(
        "INSERT INTO sender.destinations (destination) VALUES ($1)", THERE
    )
    await sender_storage.claim(OWNER, [THERE], 30)
    items = [IngestItem(7, "$e7", "!room:a.test", pdu_json("e7"), [THERE])]
    ingested, mode = await commit_mode(
        sender_storage,
        lambda c: SenderStorage.ingest_and_take(c, items, 7, [THERE], instance_id=OWNER, **LIMITS),
    )
    taken = ingested.taken[THERE]
    assert isinstance(taken, Transaction) and taken.positions == [7] and not taken.edus
    assert mode == "off"
    # Its 200 recorded by the next batch's statement: no flush either.
    later = [IngestItem(8, "$e8", "!room:a.test", pdu_json("e8"), [THERE])]
    _, mode = await commit_mode(
        sender_storage,
        lambda c: SenderStorage.ingest_and_take(
            c, later, 8, [THERE], completed=[(THERE, taken.txn_id)], instance_id=OWNER, **LIMITS
        ),
    )
    assert mode == "off"
    # Nothing else changed the session: a plain statement still waits for the flush.
    _, mode = await commit_mode(sender_storage, lambda c: c.execute("SELECT 1"))
    assert mode == "on"


async def test_a_transaction_that_takes_queued_edus_is_flushed_before_it_is_sent(
    sender_storage: SenderStorage,
) -> None:
    await queue_pdus(sender_storage, [THERE], 2)
    await sender_storage.queue_edus([QueuedEdu(THERE, "m.receipt", b'{"r":1}', volatile=False)])
    await sender_storage.claim(OWNER, [THERE], 30)
    taken, mode = await commit_mode(
        sender_storage,
        lambda c: SenderStorage.next_transactions_on(c, [THERE], [], OWNER, **LIMITS),
    )
    first = taken[THERE]
    assert isinstance(first, Transaction) and first.edus == [("m.receipt", b'{"r":1}')]
    assert mode == "on"
    # The same transaction again (recorded already): nothing new to flush.
    again, mode = await commit_mode(
        sender_storage,
        lambda c: SenderStorage.next_transactions_on(c, [THERE], [], OWNER, **LIMITS),
    )
    resumed = again[THERE]
    assert isinstance(resumed, Transaction) and resumed.resumed
    assert resumed.txn_id == first.txn_id
    assert mode == "off"
    # Answered: its 200 recorded, and the next transaction (PDUs only) taken, unflushed.
    await queue_pdus(sender_storage, [THERE], 1)
    after, mode = await commit_mode(
        sender_storage,
        lambda c: SenderStorage.next_transactions_on(
            c, [THERE], [(THERE, first.txn_id)], OWNER, **LIMITS
        ),
    )
    following = after[THERE]
    assert isinstance(following, Transaction) and following.txn_id != first.txn_id
    assert following.pdus and not following.edus
    assert mode == "off"


async def test_an_edu_taken_by_ingest_for_an_idle_destination_is_flushed(
    sender_storage: SenderStorage,
) -> None:
    await sender_storage.queue_edus([QueuedEdu(THERE, "m.typing", b'{"t":1}', volatile=True)])
    await sender_storage.claim(OWNER, [THERE], 30)
    items = [IngestItem(9, "$e9", "!room:a.test", pdu_json("e9"), [THERE])]
    ingested, mode = await commit_mode(
        sender_storage,
        lambda c: SenderStorage.ingest_and_take(c, items, 9, [THERE], instance_id=OWNER, **LIMITS),
    )
    taken = ingested.taken[THERE]
    assert isinstance(taken, Transaction) and taken.edus == [("m.typing", b'{"t":1}')]
    assert mode == "on"
