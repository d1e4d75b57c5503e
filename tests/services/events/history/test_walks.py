"""The DAG walks behind /backfill, /get_missing_events, /timestamp_to_event and backfill points.

Rows are written straight into the events service's tables (its migrations,
a fresh database), so each DAG shape is exact and cheap to build.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from mxfed.database import apply_migrations, create_pool
from mxfed.service_runtime import migrations_directory
from services.events.history import storage as history_storage
from services.events.history import walks
from tests.support.databases import create_database, drop_database

ROOM = "!room:example.org"


@pytest.fixture(scope="module")
async def pool() -> AsyncIterator[asyncpg.Pool]:
    url = await create_database("mxfed_history")
    pool = await create_pool(url)
    await apply_migrations(pool, "events", migrations_directory("events"))
    yield pool
    await pool.close()
    await drop_database(url)


class Dag:
    """Events of one room: ``add(id, prevs, depth)`` then ``store()``."""

    def __init__(self, pool: asyncpg.Pool, room_id: str, version: str = "10") -> None:
        self.pool = pool
        self.room_id = room_id
        self.version = version
        self.rows: list[tuple] = []

    def add(
        self,
        event_id: str,
        prevs: list[str],
        depth: int,
        *,
        status: int = 1,
        ts: int | None = None,
        event_type: str = "m.room.message",
        state_key: str | None = None,
        membership: str | None = None,
    ) -> str:
        prev_json = [[p, {"sha256": "x"}] for p in prevs] if self.version == "1" else prevs
        pdu = {"type": event_type, "prev_events": prev_json, "depth": depth}
        self.rows.append(
            (
                event_id,
                self.room_id,
                event_type,
                state_key,
                "@a:example.org",
                membership,
                depth,
                ts if ts is not None else 1000 * depth,
                orjson.dumps(pdu).decode(),
                status,
            )
        )
        return event_id

    def chain(self, prefix: str, length: int, start_depth: int = 1, first_prevs=()) -> list[str]:
        ids, prevs = [], list(first_prevs)
        for i in range(length):
            event_id = self.add(f"${prefix}{i}", prevs, start_depth + i)
            ids.append(event_id)
            prevs = [event_id]
        return ids

    async def store(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO events.rooms (room_id, room_version) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING",
                self.room_id,
                self.version,
            )
            await conn.executemany(
                "INSERT INTO events.events (event_id, room_id, type, state_key, sender,"
                " membership, depth, origin_server_ts, pdu_json, status)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                self.rows,
            )
        self.rows = []


_rooms = iter(range(10_000))


async def new_dag(pool: asyncpg.Pool, version: str = "10") -> Dag:
    return Dag(pool, f"!r{next(_rooms)}:example.org", version)


async def backfill(pool, dag, starts, limit):
    async with pool.acquire() as conn:
        return await walks.walk_prev_events(conn, dag.room_id, starts, limit, include_starts=True)


async def missing(pool, dag, earliest, latest, limit, min_depth=None):
    async with pool.acquire() as conn:
        return await walks.walk_prev_events(
            conn,
            dag.room_id,
            latest,
            limit,
            include_starts=False,
            stop_ids=earliest,
            min_depth=min_depth,
        )


# backfill ------------------------------------------------------------------------------------


async def test_backfill_walks_a_chain_newest_first_including_the_start(pool) -> None:
    dag = await new_dag(pool)
    ids = dag.chain("a", 50)
    await dag.store()
    assert await backfill(pool, dag, [ids[-1]], 10) == ids[-1:-11:-1]
    assert await backfill(pool, dag, [ids[20]], 100) == ids[20::-1]


async def test_backfill_past_the_first_cutoff_keeps_going(pool) -> None:
    # A fork whose long branch is much deeper than the start makes the walk load twice.
    dag = await new_dag(pool)
    ids = dag.chain("b", 300)
    await dag.store()
    got = await backfill(pool, dag, [ids[-1]], 100)
    assert got == ids[-1:-101:-1]


async def test_backfill_merges_branches_by_depth(pool) -> None:
    dag = await new_dag(pool)
    root = dag.chain("root", 3)
    left = dag.chain("left", 5, start_depth=4, first_prevs=[root[-1]])
    right = dag.chain("right", 2, start_depth=4, first_prevs=[root[-1]])
    merge = dag.add("$merge", [left[-1], right[-1]], 9)
    await dag.store()
    got = await backfill(pool, dag, [merge], 100)
    assert got[0] == merge
    assert set(got) == {merge, *root, *left, *right}
    depths = {e: i for i, e in enumerate(got)}
    # deeper events always come before shallower ones
    for a, da in [(left[4], 8), (left[0], 4), (right[1], 5), (root[0], 1)]:
        for b, db in [(left[4], 8), (left[0], 4), (right[1], 5), (root[0], 1)]:
            if da > db:
                assert depths[a] < depths[b]
    assert len(await backfill(pool, dag, [merge], 4)) == 4


async def test_backfill_from_several_starts_and_unknown_ones(pool) -> None:
    dag = await new_dag(pool)
    ids = dag.chain("c", 10)
    await dag.store()
    got = await backfill(pool, dag, [ids[5], ids[7], "$unknown"], 100)
    assert got == ids[7::-1]
    assert await backfill(pool, dag, ["$unknown"], 10) == []


async def test_backfill_stays_in_the_room(pool) -> None:
    dag = await new_dag(pool)
    other = await new_dag(pool)
    foreign = other.chain("foreign", 3)
    await other.store()
    ids = dag.chain("d", 3, first_prevs=[foreign[-1]])
    await dag.store()
    assert await backfill(pool, dag, [ids[-1]], 100) == ids[::-1]
    assert await backfill(pool, dag, [foreign[-1]], 100) == []


async def test_backfill_skips_rejected_and_outliers_but_keeps_soft_failed(pool) -> None:
    dag = await new_dag(pool)
    root = dag.chain("e", 2)
    soft = dag.add("$soft", [root[-1]], 3, status=2)
    rejected = dag.add("$rejected", [soft], 4, status=3)
    dag.add("$outlier", [], 1, status=4)
    top = dag.add("$top", [rejected, "$outlier"], 5)
    await dag.store()
    assert await backfill(pool, dag, [top], 100) == [top, soft, *root[::-1]]


async def test_backfill_of_room_v1_prev_event_pairs(pool) -> None:
    dag = await new_dag(pool, version="1")
    ids = dag.chain("v1_", 5)
    await dag.store()
    assert await backfill(pool, dag, [ids[-1]], 3) == ids[-1:-4:-1]


# get_missing_events --------------------------------------------------------------------------


async def test_missing_events_stop_at_earliest_and_exclude_latest(pool) -> None:
    dag = await new_dag(pool)
    ids = dag.chain("f", 30)
    await dag.store()
    got = await missing(pool, dag, [ids[10]], [ids[20]], 20)
    assert got == ids[19:10:-1]
    got = await missing(pool, dag, [ids[0]], [ids[29]], 5)
    assert got == ids[28:23:-1]


async def test_missing_events_respect_min_depth(pool) -> None:
    dag = await new_dag(pool)
    ids = dag.chain("g", 20)  # depth = index + 1
    await dag.store()
    got = await missing(pool, dag, [], [ids[19]], 20, min_depth=15)
    assert got == ids[18:13:-1]


async def test_missing_events_over_a_fork(pool) -> None:
    dag = await new_dag(pool)
    root = dag.chain("h", 3)
    a = dag.chain("ha", 3, start_depth=4, first_prevs=[root[-1]])
    b = dag.chain("hb", 3, start_depth=4, first_prevs=[root[-1]])
    top = dag.add("$htop", [a[-1], b[-1]], 7)
    await dag.store()
    got = await missing(pool, dag, [a[-1]], [top], 20)
    assert set(got) == {*b, *root}  # a's branch is behind the earliest event... except root
    assert got.index(b[-1]) < got.index(root[-1])


# timestamps, extremities, servers ------------------------------------------------------------


async def test_event_at_timestamp(pool) -> None:
    dag = await new_dag(pool)
    dag.add("$t1", [], 1, ts=1000)
    dag.add("$t2", ["$t1"], 2, ts=2000)
    dag.add("$t3", ["$t2"], 3, ts=3000, status=2)  # soft-failed: not a candidate
    dag.add("$t4", ["$t3"], 4, ts=4000)
    await dag.store()
    async with pool.acquire() as conn:
        assert await history_storage.event_at_timestamp(conn, dag.room_id, 1500, False) == (
            "$t2",
            2000,
        )
        assert await history_storage.event_at_timestamp(conn, dag.room_id, 1500, True) == (
            "$t1",
            1000,
        )
        assert await history_storage.event_at_timestamp(conn, dag.room_id, 2500, False) == (
            "$t4",
            4000,
        )
        assert await history_storage.event_at_timestamp(conn, dag.room_id, 2000, True) == (
            "$t2",
            2000,
        )
        assert await history_storage.event_at_timestamp(conn, dag.room_id, 5000, False) is None
        assert await history_storage.event_at_timestamp(conn, dag.room_id, 999, True) is None


async def test_backward_extremities(pool) -> None:
    dag = await new_dag(pool)
    dag.add("$outlier_prev", [], 3, status=4)
    dag.add("$x1", ["$gone1"], 5)
    dag.add("$x2", ["$x1", "$gone2"], 6)
    dag.add("$x3", ["$x2", "$outlier_prev"], 9)
    dag.add("$x4", ["$gone1"], 7)
    dag.add("$rej", ["$gone3"], 10, status=3)
    await dag.store()
    async with pool.acquire() as conn:
        found = await history_storage.backward_extremities(conn, dag.room_id)
        top = await history_storage.backward_extremities(conn, dag.room_id, limit=1)
    assert [(e.event_id, e.depth, e.referenced_by) for e in found] == [
        ("$outlier_prev", 9, ["$x3"]),
        ("$gone1", 7, ["$x1", "$x4"]),
        ("$gone2", 6, ["$x2"]),
    ]
    assert [e.event_id for e in top] == ["$outlier_prev"]


async def test_servers_by_join_age(pool) -> None:
    dag = await new_dag(pool)
    dag.add("$j_new", [], 9, event_type="m.room.member", state_key="@n:new.org", membership="join")
    dag.add("$j_old", [], 2, event_type="m.room.member", state_key="@o:old.org", membership="join")
    dag.add("$j_mid", [], 5, event_type="m.room.member", state_key="@m:mid.org", membership="join")
    dag.add("$l", [], 1, event_type="m.room.member", state_key="@l:left.org", membership="leave")
    await dag.store()
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO events.current_state (room_id, type, state_key, event_id, membership,"
            " server) VALUES ($1, 'm.room.member', $2, $3, $4, $5)",
            [
                (dag.room_id, "@n:new.org", "$j_new", "join", "new.org"),
                (dag.room_id, "@o:old.org", "$j_old", "join", "old.org"),
                (dag.room_id, "@m:mid.org", "$j_mid", "join", "mid.org"),
                (dag.room_id, "@l:left.org", "$l", "leave", "left.org"),
            ],
        )
        assert await history_storage.servers_by_join_age(conn, dag.room_id) == [
            "old.org",
            "mid.org",
            "new.org",
        ]
