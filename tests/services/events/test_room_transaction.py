"""storage.room_transaction: the room's lock held from the transaction's start, what the
block wrote committed when it ends, rolled back when it raises; generic plans inside, and
no sequential scans where an index serves; several rooms' locks taken in the order of
their keys."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
import pytest

from services.events import storage
from tests.support.polling import wait_until


async def _room_locked_elsewhere(pool: asyncpg.Pool, room_id: str) -> bool:
    async with pool.acquire() as other, other.transaction():
        key = storage.lock_key("room:" + room_id)
        return not await other.fetchval("SELECT pg_try_advisory_xact_lock($1)", key)


async def _room_stored(pool: asyncpg.Pool, room_id: str) -> bool:
    return bool(
        await pool.fetchval("SELECT count(*) FROM events.rooms WHERE room_id = $1", room_id)
    )


async def test_the_lock_is_held_and_the_block_committed(events_pool: asyncpg.Pool) -> None:
    room_id = f"!{secrets.token_hex(6)}:tx.test"
    async with events_pool.acquire() as conn:
        async with storage.room_transaction(conn, room_id):
            assert conn.is_in_transaction()
            assert await _room_locked_elsewhere(events_pool, room_id)
            assert await storage.insert_room(conn, room_id, "10")
        assert not conn.is_in_transaction()
    assert not await _room_locked_elsewhere(events_pool, room_id)
    assert await _room_stored(events_pool, room_id)


async def test_a_block_that_raises_leaves_nothing_and_no_open_transaction(
    events_pool: asyncpg.Pool,
) -> None:
    room_id = f"!{secrets.token_hex(6)}:tx.test"
    async with events_pool.acquire() as conn:
        with pytest.raises(LookupError):
            async with storage.room_transaction(conn, room_id):
                assert await storage.insert_room(conn, room_id, "10")
                raise LookupError("refused")
        assert not conn.is_in_transaction()
        # A failed statement inside: rolled back as well.
        with pytest.raises(asyncpg.PostgresError):
            async with storage.room_transaction(conn, room_id):
                await conn.execute("SELECT 1 / 0")
        assert not conn.is_in_transaction()
    assert not await _room_locked_elsewhere(events_pool, room_id)
    assert not await _room_stored(events_pool, room_id)


async def test_statements_run_with_generic_plans_inside_only(events_pool: asyncpg.Pool) -> None:
    """Planned once per connection inside (custom plans were made afresh on every call);
    the connection's setting is back once the transaction ends."""
    room_id = f"!{secrets.token_hex(6)}:tx.test"
    mode = "SELECT current_setting('plan_cache_mode')"
    async with events_pool.acquire() as conn:
        before = await conn.fetchval(mode)
        assert before != "force_generic_plan"
        async with storage.room_transaction(conn, room_id):
            assert await conn.fetchval(mode) == "force_generic_plan"
        assert await conn.fetchval(mode) == before
    # The stream round's function too.
    config = await events_pool.fetchval(
        "SELECT proconfig FROM pg_proc WHERE oid = 'events.assign_stream_positions'::regproc"
    )
    assert "plan_cache_mode=force_generic_plan" in config
    assert "enable_seqscan=off" in config and "jit=off" in config


async def test_rows_are_found_by_key_in_a_table_analyzed_while_small(
    events_pool: asyncpg.Pool,
) -> None:
    """A generic plan made inside uses the index of a table whose statistics say it is
    small (a sequential scan would be kept, and read the whole table on every execution,
    as the table grows until its next ANALYZE: local_transactions after a fresh start);
    outside, the planner's own choice."""
    room_id = f"!{secrets.token_hex(6)}:tx.test"
    lookup = "EXPLAIN SELECT event_id FROM pg_temp.sent WHERE sender = $1 AND txn_id = $2"
    async with events_pool.acquire() as conn:
        await conn.execute(
            "CREATE TEMP TABLE sent (sender text, txn_id text, event_id text,"
            " PRIMARY KEY (sender, txn_id));"
            " INSERT INTO pg_temp.sent SELECT '@small:tx.test', 'txn-' || n, '$small-' || n"
            "   FROM generate_series(1, 20) n;"
            " ANALYZE pg_temp.sent"
        )
        try:
            outside = "\n".join(r[0] for r in await conn.fetch(lookup, "@small:tx.test", "t"))
            async with storage.room_transaction(conn, room_id):
                inside = "\n".join(r[0] for r in await conn.fetch(lookup, "@small:tx.test", "t"))
                # A scan that stays is costed past jit_above_cost then: never compiled.
                assert await conn.fetchval("SELECT current_setting('jit')") == "off"
        finally:
            await conn.execute("DROP TABLE pg_temp.sent")
    assert "Seq Scan" in outside  # what the planner picks for the small table
    assert "Seq Scan" not in inside and "sent_pkey" in inside, inside


async def test_several_rooms_locks_are_taken_in_key_order(events_pool: asyncpg.Pool) -> None:
    """Two transactions over the same rooms (two /sends) then never hold one lock each
    while waiting for the other's: with the middle key held elsewhere, the transaction
    holds the lowest and waits, the highest still free."""
    rooms = sorted(
        (f"!{secrets.token_hex(6)}:tx.test" for _ in range(3)),
        key=lambda room_id: storage.lock_key("room:" + room_id),
    )
    low, middle, high = rooms
    async with events_pool.acquire() as holder, holder.transaction():
        await storage.lock_room(holder, middle)

        async def locked_all() -> list[bool]:
            async with (
                events_pool.acquire() as conn,
                storage.room_transaction(conn, high, low, middle),
            ):
                return [await _room_locked_elsewhere(events_pool, r) for r in rooms]

        opening = asyncio.create_task(locked_all())
        await wait_until(
            lambda: _room_locked_elsewhere(events_pool, low), what="the lowest key's lock"
        )
        assert not opening.done()
        assert not await _room_locked_elsewhere(events_pool, high)
    assert await opening == [True, True, True]
