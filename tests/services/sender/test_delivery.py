"""Delivery of queued PDUs to receivers that check our X-Matrix signatures."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.sender.storage import SenderStorage
from tests.support.polling import wait_until
from tests.support.sender_queues import queue_pdus


async def test_events_arrive_in_order_in_transactions_of_at_most_50(
    sender_storage: SenderStorage, receiver_factory, replica_factory
) -> None:
    receiver = await receiver_factory()
    ids = await queue_pdus(sender_storage, [receiver.server_name], 120)
    await replica_factory()
    await wait_until(lambda: len(receiver.pdu_ids()) == 120)
    assert receiver.pdu_ids() == ids
    sizes = [len(body["pdus"]) for body in receiver.delivered.values()]
    assert max(sizes) <= 50
    assert len(sizes) >= 3
    assert receiver.bad_signatures == 0
    assert len(set(receiver.delivered)) == len(sizes)  # a new txn id per transaction
    for body in receiver.delivered.values():
        assert body["origin"] == "sender-test.example"
        assert isinstance(body["origin_server_ts"], int)
    # The last 200 is recorded with the destination's next batched database call.
    for _ in range(300):
        row = await sender_storage.pool.fetchrow(
            "SELECT pending_txn_id, last_success_ts, failures FROM sender.destinations"
        )
        if row["pending_txn_id"] is None:
            break
        await asyncio.sleep(0.05)
    assert row["pending_txn_id"] is None and row["last_success_ts"] > 0
    assert await sender_storage.pool.fetchval("SELECT count(*) FROM sender.pdu_queue") == 0


async def test_a_failed_transaction_is_retried_with_the_same_id_and_contents(
    sender_storage: SenderStorage, receiver_factory, replica_factory
) -> None:
    receiver = await receiver_factory()
    receiver.fail_next = 2
    ids = await queue_pdus(sender_storage, [receiver.server_name], 3)
    await replica_factory()
    await wait_until(lambda: receiver.pdu_ids() == ids)
    assert [a.status for a in receiver.attempts] == [500, 500, 200]
    assert len({a.txn_id for a in receiver.attempts}) == 1
    assert all(a.body == receiver.attempts[0].body for a in receiver.attempts)


async def test_more_events_queued_while_failing_wait_for_the_pending_transaction(
    sender_storage: SenderStorage, receiver_factory, replica_factory
) -> None:
    receiver = await receiver_factory()
    receiver.fail_next = 1
    first = await queue_pdus(sender_storage, [receiver.server_name], 2)
    await replica_factory()
    await wait_until(lambda: len(receiver.attempts) == 1)
    later = await queue_pdus(sender_storage, [receiver.server_name], 2)
    await wait_until(lambda: receiver.pdu_ids() == first + later)
    assert receiver.attempts[0].txn_id == receiver.attempts[1].txn_id
    assert receiver.attempts[1].body == receiver.attempts[0].body


async def test_a_receiver_down_then_back_gets_everything_exactly_once(
    sender_storage: SenderStorage, receiver_factory, replica_factory
) -> None:
    receiver = await receiver_factory()
    await replica_factory(request_timeout=1.0)
    ids = await queue_pdus(sender_storage, [receiver.server_name], 5)
    await wait_until(lambda: receiver.pdu_ids() == ids)
    # A response lost on the way back: the receiver processes the transaction
    # after we gave up waiting, so the same transaction comes again.
    receiver.delay = 1.5
    ids += await queue_pdus(sender_storage, [receiver.server_name], 5)
    await wait_until(lambda: len(receiver.attempts) == 2, timeout=30)
    receiver.delay = 0
    await receiver.go_down()
    ids += await queue_pdus(sender_storage, [receiver.server_name], 60)
    await asyncio.sleep(1.5)
    await receiver.come_back()
    await wait_until(lambda: sorted(set(receiver.pdu_ids())) == sorted(ids), timeout=30)
    delivered = receiver.pdu_ids()
    assert len(delivered) == len(set(delivered)), "an event arrived in two transactions"
    assert delivered == ids  # in order
    retried = receiver.attempts[1].txn_id
    assert [a.txn_id for a in receiver.attempts].count(retried) >= 2


async def test_backoff_grows_and_resets_on_server_up(
    sender_storage: SenderStorage, receiver_factory, replica_factory
) -> None:
    receiver = await receiver_factory()
    await receiver.go_down()
    ids = await queue_pdus(sender_storage, [receiver.server_name], 2)
    await replica_factory()
    intervals: list[int] = []

    async def interval_changes() -> None:
        while len(intervals) < 3:
            _, interval = await sender_storage.backoff_state(receiver.server_name)
            if interval and (not intervals or interval != intervals[-1]):
                intervals.append(interval)
            await asyncio.sleep(0.02)

    await asyncio.wait_for(interval_changes(), 15)
    assert intervals[0] == 300
    assert intervals[1] > intervals[0] and intervals[2] > intervals[1]
    # Backed off at the maximum for a while: bring it back and say so.
    await sender_storage.record_failure(
        receiver.server_name, int(time.time() * 1000) + 60_000, 3000, "test"
    )
    await receiver.come_back()
    await asyncio.sleep(0.5)
    assert receiver.pdu_ids() == []
    # Backed off for another minute: only the reset can bring the PDUs before then.
    assert await sender_storage.reset_backoff(receiver.server_name)
    await wait_until(lambda: receiver.pdu_ids() == ids, timeout=30)
    assert await sender_storage.backoff_state(receiver.server_name) == (0, 0)
    assert not await sender_storage.reset_backoff(receiver.server_name)


async def test_429_retry_after_is_honoured(
    sender_storage: SenderStorage, receiver_factory, replica_factory
) -> None:
    receiver = await receiver_factory()
    receiver.fail_next = 1
    receiver.fail_status = 429
    receiver.fail_body = {"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 1500}
    ids = await queue_pdus(sender_storage, [receiver.server_name], 1)
    await replica_factory()
    await wait_until(lambda: len(receiver.attempts) == 1)
    failed_at = time.monotonic()
    await wait_until(lambda: receiver.pdu_ids() == ids)
    assert time.monotonic() - failed_at >= 1.3


async def test_a_refused_transaction_is_dropped_and_the_queue_moves_on(
    sender_storage: SenderStorage, receiver_factory, replica_factory
) -> None:
    receiver = await receiver_factory()
    receiver.fail_next = 1
    receiver.fail_status = 400
    receiver.fail_body = {"errcode": "M_BAD_JSON", "error": "no"}
    refused = await queue_pdus(sender_storage, [receiver.server_name], 1)
    await replica_factory()
    await wait_until(lambda: len(receiver.attempts) == 1)
    later = await queue_pdus(sender_storage, [receiver.server_name], 2)
    await wait_until(lambda: receiver.pdu_ids() == later)
    assert [pdu["content"]["id"] for pdu in receiver.attempts[0].body["pdus"]] == refused
    assert await sender_storage.backoff_state(receiver.server_name) == (0, 0)


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (404, {}, {}),  # a reverse proxy while the server behind it is away
        (404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}, {}),
        (500, {"errcode": "M_UNKNOWN", "error": "Internal server error"}, {}),
        (429, {"errcode": "M_LIMIT_EXCEEDED"}, {"Retry-After": "1"}),
        (403, {"errcode": "M_FORBIDDEN", "error": "Federation denied with us"}, {}),
        (400, {}, {}),  # no Matrix error: not the homeserver refusing the transaction
    ],
)
async def test_answers_that_are_not_a_refusal_of_the_transaction_lose_nothing(
    sender_storage: SenderStorage,
    receiver_factory,
    replica_factory,
    status: int,
    body: dict,
    headers: dict,
) -> None:
    """The remote answers ``status`` for a while, then 200: every event arrives, in order,
    once, and the failing transaction is retried unchanged (same txn id, same contents)."""
    receiver = await receiver_factory()
    receiver.fail_next = 3
    receiver.fail_status, receiver.fail_body, receiver.fail_headers = status, body, headers
    ids = await queue_pdus(sender_storage, [receiver.server_name], 3)
    await replica_factory()
    await wait_until(lambda: len(receiver.attempts) >= 1)
    ids += await queue_pdus(sender_storage, [receiver.server_name], 60)  # queued meanwhile
    await wait_until(lambda: len(receiver.pdu_ids()) >= len(ids), timeout=60)
    assert receiver.pdu_ids() == ids  # in order, each once
    statuses = [attempt.status for attempt in receiver.attempts]
    assert statuses[:4] == [status, status, status, 200]
    assert len({attempt.txn_id for attempt in receiver.attempts[:4]}) == 1
    assert all(attempt.body == receiver.attempts[0].body for attempt in receiver.attempts[:4])
    # The last 200 is recorded with the destination's next batched database call.
    for _ in range(600):
        if not await sender_storage.pool.fetchval("SELECT count(*) FROM sender.pdu_queue"):
            break
        await asyncio.sleep(0.05)
    assert await sender_storage.pool.fetchval("SELECT count(*) FROM sender.pdu_queue") == 0


async def test_a_transaction_too_large_for_the_remote_is_dropped(
    sender_storage: SenderStorage, receiver_factory, replica_factory
) -> None:
    receiver = await receiver_factory()
    receiver.fail_next = 1
    receiver.fail_status = 413
    receiver.fail_body = {"errcode": "M_TOO_LARGE", "error": "too big"}
    await queue_pdus(sender_storage, [receiver.server_name], 1)
    await replica_factory()
    await wait_until(lambda: len(receiver.attempts) == 1)
    later = await queue_pdus(sender_storage, [receiver.server_name], 1)
    await wait_until(lambda: receiver.pdu_ids() == later)
    assert await sender_storage.backoff_state(receiver.server_name) == (0, 0)


async def test_a_dead_destination_does_not_delay_a_healthy_one(
    sender_storage: SenderStorage, receiver_factory, replica_factory
) -> None:
    healthy = await receiver_factory()
    slow = await receiver_factory()
    slow.release = asyncio.Event()  # the slow destination answers only when released
    dead = await receiver_factory()
    await dead.go_down()
    await replica_factory()
    try:
        for _ in range(3):
            ids = await queue_pdus(
                sender_storage, [dead.server_name, slow.server_name, healthy.server_name], 1
            )
            await wait_until(lambda: bool(slow.arrived))
            await wait_until(lambda ids=ids: healthy.pdu_ids()[-1:] == ids)
            # Delivered while the slow destination's transaction is still unanswered.
            assert slow.attempts == []
    finally:
        slow.release.set()


async def test_one_event_is_stored_once_for_many_destinations(
    sender_storage: SenderStorage,
) -> None:
    destinations = [f"d{i}.example" for i in range(30)]
    await queue_pdus(sender_storage, destinations, 2)
    pool = sender_storage.pool
    assert await pool.fetchval("SELECT count(*) FROM sender.pdus") == 2
    assert await pool.fetchval("SELECT count(*) FROM sender.pdu_queue") == 60
