"""SQL of the history walks: the events tables read for DAG walks and history queries.

The events tables keep no prev-edge table, so edges come out of the stored
PDU JSON (``prev_events`` survives redaction, and is ``[[id, hashes]]`` in
room v1/v2): one recursive CTE follows ``prev_events`` from a set of seeds
down to a depth cutoff. Outliers (status 4) are not part of the DAG here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from services.events.storage import Status

ACCEPTED, SOFT_FAILED, OUTLIER = int(Status.ACCEPTED), int(Status.SOFT_FAILED), int(Status.OUTLIER)

# prev_events ids of the events row ``e`` (v1/v2: [[id, hashes], ...]).
_PREVS = (
    "ARRAY(SELECT CASE jsonb_typeof(v) WHEN 'array' THEN v ->> 0 ELSE v #>> '{}' END"
    " FROM jsonb_array_elements(CASE jsonb_typeof(e.pdu_json::jsonb -> 'prev_events')"
    " WHEN 'array' THEN e.pdu_json::jsonb -> 'prev_events' ELSE '[]'::jsonb END) v)"
)

_WALK_SQL = f"""
WITH RECURSIVE walk(event_id, depth, status, prevs) AS (
    SELECT e.event_id, e.depth, e.status, {_PREVS}
      FROM events.events e
     WHERE e.event_id = ANY($2::text[]) AND e.room_id = $1 AND e.status <> {OUTLIER}
  UNION
    SELECT e.event_id, e.depth, e.status, {_PREVS}
      FROM walk w
     CROSS JOIN LATERAL unnest(w.prevs) AS p(id)
      JOIN events.events e ON e.event_id = p.id
     WHERE w.depth > $3 AND e.room_id = $1 AND e.status <> {OUTLIER}
       AND NOT (e.event_id = ANY($4::text[]))
)
SELECT event_id, depth, status, prevs FROM walk
"""


@dataclass
class WalkRow:
    event_id: str
    depth: int
    status: int
    prevs: list[str]


async def walk_rows(
    conn: asyncpg.Connection,
    room_id: str,
    seeds: Sequence[str],
    cutoff: int,
    stop: Sequence[str],
) -> list[WalkRow]:
    """The seeds and what they reach over ``prev_events`` down to ``cutoff`` (the
    last events loaded may be at or below it), never through ``stop``."""
    rows = await conn.fetch(_WALK_SQL, room_id, list(seeds), cutoff, list(stop))
    return [WalkRow(r["event_id"], r["depth"], r["status"], list(r["prevs"])) for r in rows]


async def lowest_depth(
    conn: asyncpg.Connection, room_id: str, event_ids: Sequence[str]
) -> int | None:
    """The smallest depth among the stored DAG events (not outliers) of ``event_ids``."""
    return await conn.fetchval(
        "SELECT min(depth) FROM events.events"
        f" WHERE event_id = ANY($1::text[]) AND room_id = $2 AND status <> {OUTLIER}",
        list(event_ids),
        room_id,
    )


async def event_at_timestamp(
    conn: asyncpg.Connection, room_id: str, ts: int, backwards: bool
) -> tuple[str, int] | None:
    """The accepted event closest to ``ts``: at/after it, or at/before it when ``backwards``."""
    if backwards:
        sql = (
            "SELECT event_id, origin_server_ts FROM events.events"
            f" WHERE room_id = $1 AND status = {ACCEPTED} AND origin_server_ts <= $2"
            " ORDER BY origin_server_ts DESC, depth DESC, event_id DESC LIMIT 1"
        )
    else:
        sql = (
            "SELECT event_id, origin_server_ts FROM events.events"
            f" WHERE room_id = $1 AND status = {ACCEPTED} AND origin_server_ts >= $2"
            " ORDER BY origin_server_ts, depth, event_id LIMIT 1"
        )
    row = await conn.fetchrow(sql, room_id, ts)
    return (row["event_id"], row["origin_server_ts"]) if row else None


@dataclass
class BackwardExtremity:
    event_id: str
    depth: int
    referenced_by: list[str]


async def backward_extremities(
    conn: asyncpg.Connection, room_id: str, limit: int = 0
) -> list[BackwardExtremity]:
    """Events cited as prev_events by stored DAG events (not rejected) that we do not hold.

    Outliers count as not held: they have no place in the DAG. Deepest first,
    by the depth of the deepest event citing them.
    """
    rows = await conn.fetch(
        f"""
        WITH refs AS (
            SELECT e.event_id AS child, e.depth, p.id AS prev
              FROM events.events e
             CROSS JOIN LATERAL unnest({_PREVS}) AS p(id)
             WHERE e.room_id = $1 AND e.status IN ({ACCEPTED}, {SOFT_FAILED})
        )
        SELECT r.prev, max(r.depth) AS depth, array_agg(r.child ORDER BY r.child) AS children
          FROM refs r
         WHERE NOT EXISTS (
             SELECT 1 FROM events.events x WHERE x.event_id = r.prev AND x.status <> {OUTLIER}
         )
         GROUP BY r.prev
         ORDER BY max(r.depth) DESC, r.prev
        """
        + (" LIMIT $2" if limit > 0 else ""),
        *((room_id, limit) if limit > 0 else (room_id,)),
    )
    return [BackwardExtremity(row["prev"], row["depth"], list(row["children"])) for row in rows]


async def servers_by_join_age(conn: asyncpg.Connection, room_id: str) -> list[str]:
    """Servers with a joined member now, earliest (shallowest current join) first."""
    rows = await conn.fetch(
        "SELECT cs.server, min(e.depth) AS depth FROM events.current_state cs"
        " JOIN events.events e ON e.event_id = cs.event_id"
        " WHERE cs.room_id = $1 AND cs.membership = 'join' AND cs.server IS NOT NULL"
        " GROUP BY cs.server ORDER BY min(e.depth), cs.server",
        room_id,
    )
    return [row["server"] for row in rows]
