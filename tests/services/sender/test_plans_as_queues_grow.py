"""The transaction functions (``sender.next_transactions``, ``sender.ingest``) examine the
rows of the call's own destinations only, whatever the tables held when their generic
plans were made.

Those plans are made once per session. Made while the queue held one destination's rows,
they walked the whole queue in stream order and scanned every known destination's row on
every call, so a server's cost per transaction grew with the servers it had ever sent to
and with the backlog of those that are down. Here the plans are made on such a queue,
then a down server's backlog and thousands of other destinations arrive, and
PostgreSQL's ``auto_explain`` shows what the next calls scanned."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from mxfed.database import apply_migrations, create_pool
from mxfed.service_runtime import migrations_directory
from services.sender.storage import IngestItem, SenderStorage, Transaction
from tests.support.databases import explain_from_now, rows_examined

LIVE = "live.example"
GROWN = 20_000
OWNER = "replica-1"
LIMITS = {"max_pdus": 50, "max_edus": 100}
_positions = itertools.count(100_000)  # the down server's backlog comes before: 1..GROWN


def _items(count: int) -> list[IngestItem]:
    return [
        IngestItem(p, f"$e{p}", "!room:a.test", b'{"n":%d}' % p, [LIVE])
        for p in itertools.islice(_positions, count)
    ]


@pytest.fixture
async def pool(own_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(own_database_url, max_size=2)
    await apply_migrations(pool, "sender", migrations_directory("sender"))
    yield pool
    await pool.close()


async def test_transactions_are_taken_and_recorded_by_key_after_the_queues_grew(
    pool: asyncpg.Pool, own_database_url: str
) -> None:
    # The functions' statements are planned once per session: all calls go on this one.
    conn = await asyncpg.connect(own_database_url)
    storage = SenderStorage(pool)

    async def ingest(items: list[IngestItem], **kwargs: Any) -> Any:
        return await SenderStorage.ingest_and_take(
            conn, items, items[-1].stream_position, instance_id=OWNER, **LIMITS, **kwargs
        )

    try:
        await ingest(_items(30))
        await pool.execute("ANALYZE")
        assert await storage.claim(OWNER, [LIVE], 60)
        first = (await SenderStorage.next_transactions_on(conn, [LIVE], [], OWNER, **LIMITS))[LIVE]
        assert len(first.positions) == 30
        await ingest(_items(1), take=[LIVE], completed=[(LIVE, first.txn_id)])
        # A server down for long, its backlog queued before ours, and many servers known.
        await pool.execute(
            "INSERT INTO sender.pdus (stream_position, event_id, room_id, pdu_json, queued_ts)"
            " SELECT i, '$d' || i, '!room:a.test', '{}', 0 FROM generate_series(1, $1) i",
            GROWN,
        )
        await pool.execute(
            "INSERT INTO sender.destinations (destination)"
            " SELECT 'd' || i || '.example' FROM generate_series(1, $1) i",
            GROWN,
        )
        await pool.execute(
            "INSERT INTO sender.pdu_queue (destination, stream_position)"
            " SELECT 'd1.example', i FROM generate_series(1, $1) i",
            GROWN,
        )
        await pool.execute(
            "INSERT INTO sender.edu_queue (destination, edu_type, content_json, volatile,"
            " queued_ts) SELECT 'd1.example', 'm.receipt', '{}', false, 0"
            " FROM generate_series(1, $1) i",
            GROWN,
        )
        await pool.execute(
            "INSERT INTO sender.edu_queue (destination, edu_type, content_json, volatile,"
            " queued_ts) VALUES ($1, 'm.typing', '{\"n\":1}', true, 0)",
            LIVE,
        )
        plans = await explain_from_now(conn)
        # The one taken by ingest above is pending: answered, the next is taken.
        pending = await pool.fetchval(
            "SELECT pending_txn_id FROM sender.destinations WHERE destination = $1", LIVE
        )
        taken = await SenderStorage.next_transactions_on(
            conn, [LIVE], [(LIVE, pending)], OWNER, **LIMITS
        )
        assert isinstance(taken[LIVE], Transaction)
        assert taken[LIVE].edus == [("m.typing", b'{"n":1}')] and taken[LIVE].pdus == []
        empty = await SenderStorage.next_transactions_on(
            conn, [LIVE], [(LIVE, taken[LIVE].txn_id)], OWNER, **LIMITS
        )
        assert empty[LIVE] is None
        items = _items(2)
        given = Transaction(
            LIVE,
            "given-1",
            1,
            [i.pdu_json for i in items],
            positions=[i.stream_position for i in items],
        )
        assert (await ingest(items, given=[given])).given == {LIVE: True}
        after = await ingest(_items(1), take=[LIVE], completed=[(LIVE, "given-1")])
        assert after.taken[LIVE].pdus == [b'{"n":%d}' % (items[-1].stream_position + 1)]
    finally:
        await conn.close()
    queues = {"pdu_queue", "pdus", "edu_queue", "destinations"}
    examined = list(rows_examined(plans, queues))
    assert queues <= {scan.table for scan in examined}
    for scan in examined:
        assert scan.rows <= 60, scan.shown
