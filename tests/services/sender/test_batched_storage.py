"""Batched transaction bookkeeping and the indexed periodic queries."""

from __future__ import annotations

from services.sender.storage import (
    Backoff,
    IngestItem,
    LeaseLost,
    QueuedEdu,
    SenderStorage,
    Transaction,
)
from tests.support.sender_queues import queue_pdus

LIMITS = {"max_pdus": 50, "max_edus": 100}


async def test_one_call_takes_and_completes_the_transactions_of_many_destinations(
    sender_storage: SenderStorage,
) -> None:
    destinations = [f"d{i}.example" for i in range(30)]
    ids = await queue_pdus(sender_storage, destinations, 3)
    assert await sender_storage.claim("a", destinations, 30) == sorted(destinations)
    first = await sender_storage.next_transactions(destinations, [], "a", **LIMITS)
    assert set(first) == set(destinations)
    for destination, txn in first.items():
        assert isinstance(txn, Transaction) and not txn.resumed
        assert txn.destination == destination and len(txn.pdus) == 3
    # Asked again without a completion: the same transactions, resumed.
    again = await sender_storage.next_transactions(destinations[:5], [], "a", **LIMITS)
    for destination, txn in again.items():
        assert isinstance(txn, Transaction) and txn.resumed
        assert txn.txn_id == first[destination].txn_id
        assert txn.pdus == first[destination].pdus
    # Completions and next transactions in one call: nothing left.
    done = [(d, t.txn_id) for d, t in first.items() if isinstance(t, Transaction)]
    after = await sender_storage.next_transactions(destinations, done, "a", **LIMITS)
    assert after == dict.fromkeys(destinations)
    assert await sender_storage.pool.fetchval("SELECT count(*) FROM sender.pdu_queue") == 0
    assert len(ids) == 3


async def test_lease_and_backoff_are_per_destination_in_a_batch(
    sender_storage: SenderStorage,
) -> None:
    await queue_pdus(sender_storage, ["mine.example", "theirs.example", "down.example"], 1)
    await sender_storage.claim("a", ["mine.example", "down.example"], 30)
    await sender_storage.claim("b", ["theirs.example"], 30)
    await sender_storage.record_failure("down.example", 2**62, 1000, "x")
    result = await sender_storage.next_transactions(
        ["mine.example", "theirs.example", "down.example", "unknown.example"], [], "a", **LIMITS
    )
    assert isinstance(result["mine.example"], Transaction)
    assert isinstance(result["theirs.example"], LeaseLost)
    assert isinstance(result["unknown.example"], LeaseLost)
    assert result["down.example"] == Backoff(2**62)


async def test_a_late_completion_does_not_clear_a_newer_pending_transaction(
    sender_storage: SenderStorage,
) -> None:
    await queue_pdus(sender_storage, ["x.example"], 60)
    await sender_storage.claim("a", ["x.example"], 30)
    first = await sender_storage.next_transaction("x.example", "a", **LIMITS)
    assert isinstance(first, Transaction)
    second = (
        await sender_storage.next_transactions(
            ["x.example"], [("x.example", first.txn_id)], "a", **LIMITS
        )
    )["x.example"]
    assert isinstance(second, Transaction) and second.txn_id != first.txn_id
    # The first one's 200 recorded again (by a replica that lost the race):
    await sender_storage.complete_transaction("x.example", first.txn_id)
    again = await sender_storage.next_transaction("x.example", "a", **LIMITS)
    assert isinstance(again, Transaction)
    assert again.txn_id == second.txn_id and again.pdus == second.pdus


async def test_a_failure_backs_off_in_one_statement(sender_storage: SenderStorage) -> None:
    await queue_pdus(sender_storage, ["x.example"], 3)
    kwargs = {"min_interval_ms": 1000, "max_interval_ms": 5000, "error": "down"}
    assert await sender_storage.record_transaction_failure(
        "x.example", growth=2.0, asked_wait_ms=None, backlog_cap=2, **kwargs
    ) == (1000, 1000, 3)
    assert await sender_storage.record_transaction_failure(
        "x.example", growth=2.0, asked_wait_ms=None, backlog_cap=10, **kwargs
    ) == (2000, 2000, 3)
    # 429 with a wait: honoured, the interval not escalated.
    assert await sender_storage.record_transaction_failure(
        "x.example", growth=2.0, asked_wait_ms=300, backlog_cap=10, **kwargs
    ) == (300, 2000, 3)
    wait, interval, _ = await sender_storage.record_transaction_failure(
        "x.example", growth=4.0, asked_wait_ms=None, backlog_cap=10, **kwargs
    )
    assert wait == interval == 5000


async def test_destinations_with_work_and_garbage_collection(
    sender_storage: SenderStorage,
) -> None:
    await queue_pdus(sender_storage, ["p1.example", "p2.example"], 2)
    await sender_storage.queue_edus(
        [
            QueuedEdu("e.example", "m.typing", b"{}", True),
            QueuedEdu("p1.example", "x", b"{}", False),
        ]
    )
    await sender_storage.pool.execute(
        "INSERT INTO sender.destinations (destination) VALUES ('idle.example')"
    )
    assert sorted(await sender_storage.destinations_with_work()) == [
        "e.example",
        "p1.example",
        "p2.example",
    ]
    stats = await sender_storage.stats(5)
    assert (stats.pending_pdus, stats.pending_edus, stats.destinations_pending) == (4, 2, 3)
    assert stats.top[0] == ("p1.example", 3)
    oldest = await sender_storage.pool.fetchval(
        "SELECT least((SELECT min(queued_ts) FROM sender.pdus),"
        " (SELECT min(queued_ts) FROM sender.edu_queue))"
    )
    assert stats.oldest_queued_ts == oldest > 0
    # p2 got everything; p1 got the first event only.
    await sender_storage.pool.execute(
        "DELETE FROM sender.pdu_queue WHERE destination = 'p2.example'"
        " OR (destination = 'p1.example' AND stream_position ="
        " (SELECT min(stream_position) FROM sender.pdu_queue))"
    )
    assert await sender_storage.collect_garbage(full=False) == 1
    assert await sender_storage.pool.fetchval("SELECT count(*) FROM sender.pdus") == 1
    await sender_storage.pool.execute("DELETE FROM sender.pdu_queue")
    assert await sender_storage.collect_garbage(full=False) == 1


async def test_ingest_takes_and_records_the_transactions_it_is_asked_for(
    sender_storage: SenderStorage,
) -> None:
    await queue_pdus(sender_storage, ["x.example"], 1)
    await sender_storage.pool.execute(
        "INSERT INTO sender.destinations (destination) VALUES ('y.example'), ('theirs.example')"
    )
    await sender_storage.claim("a", ["x.example", "y.example"], 30)
    await sender_storage.claim("b", ["theirs.example"], 30)
    first = await sender_storage.next_transaction("x.example", "a", **LIMITS)
    assert isinstance(first, Transaction)
    items = [
        IngestItem(901, "$n1", "!r:x", b'{"n":1}', ["x.example", "y.example", "theirs.example"]),
        IngestItem(902, "$n2", "!r:x", b'{"n":2}', ["y.example"]),
    ]
    async with sender_storage.pool.acquire() as connection:
        ingested = await SenderStorage.ingest_and_take(
            connection,
            items,
            902,
            ["x.example", "y.example", "theirs.example"],
            completed=[("x.example", first.txn_id)],
            instance_id="a",
            **LIMITS,
        )
    added, taken = ingested.added, ingested.taken
    assert added == 4 and ingested.given == {}
    # x's 200 recorded first, then its next transaction: the new event alone.
    x, y = taken["x.example"], taken["y.example"]
    assert isinstance(x, Transaction) and x.pdus == [b'{"n":1}'] and not x.resumed
    assert isinstance(y, Transaction) and y.pdus == [b'{"n":1}', b'{"n":2}']
    assert isinstance(taken["theirs.example"], LeaseLost)
    # Recorded before they are sent: asked again, the same transactions.
    again = await sender_storage.next_transactions(["x.example", "y.example"], [], "a", **LIMITS)
    for destination in ("x.example", "y.example"):
        resumed = again[destination]
        assert isinstance(resumed, Transaction) and resumed.resumed
        assert resumed.txn_id == taken[destination].txn_id  # type: ignore[union-attr]
    assert (
        await sender_storage.pool.fetchval(
            "SELECT count(*) FROM sender.pdu_queue WHERE destination = 'theirs.example'"
            " AND txn_id IS NULL"
        )
        == 1
    )
    assert (
        await sender_storage.pool.fetchval("SELECT stream_position FROM sender.ingest_cursor")
        == 902
    )


async def test_the_transaction_functions_plan_no_sequential_scan(
    sender_storage: SenderStorage,
) -> None:
    """Their generic plans (made once per session) read pdu_queue through its indexes: a
    sequential scan planned while the queue was small (analyzed then: a fresh start, a
    quiet destination) was kept, and read the whole queue on every call as it grew (seen
    in bench_local_sends, ingest after its warm-up)."""
    configs = await sender_storage.pool.fetch(
        "SELECT proname, proconfig FROM pg_proc WHERE pronamespace = 'sender'::regnamespace"
        " AND proname IN ('ingest', 'next_transactions')"
    )
    assert sorted(row["proname"] for row in configs) == ["ingest", "next_transactions"]
    for row in configs:
        assert "enable_seqscan=off" in row["proconfig"], row
        assert "jit=off" in row["proconfig"], row  # a scan that stays: compiled per call
        assert "plan_cache_mode=force_generic_plan" in row["proconfig"], row
