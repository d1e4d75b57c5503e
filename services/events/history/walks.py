"""Walks of the room DAG over ``prev_events``, in SQL.

The events tables keep no prev-edge table, so edges come out of the stored
PDU JSON (``prev_events`` survives redaction, and is ``[[id, hashes]]`` in
room v1/v2). Each query is one recursive CTE that follows ``prev_events``
from a set of seeds down to a depth cutoff; the depth-ordered walk itself
(deepest first, ties by event id) runs in Python over what the CTE loaded.

Every event the walk returns was reached through a chain of events the walk
also returned, so with ``limit`` results nothing further than ``limit`` steps
away can matter: starting with a cutoff ``limit`` below the shallowest seed
usually loads everything in one query. When a walk reaches an event whose
prevs lie below the cutoff, one more query loads the next stretch.

Outliers (status 4) are not part of the DAG here: they are neither walked
through nor returned. Rejected events are walked through but never returned
(they are not part of the room); soft-failed events are returned only when a
returned event (or the request itself) names them.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import asyncpg

ACCEPTED, SOFT_FAILED, REJECTED, OUTLIER = 1, 2, 3, 4

MAX_BACKFILL = 100
MAX_MISSING_EVENTS = 20
DEFAULT_MISSING_EVENTS = 10

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
class Node:
    event_id: str
    depth: int
    status: int
    prevs: list[str]
    # True once the prevs are loaded (or known not to be stored).
    walked: bool = False


async def _load(
    conn: asyncpg.Connection,
    room_id: str,
    seeds: Iterable[str],
    cutoff: int,
    stop: Sequence[str],
    nodes: dict[str, Node],
) -> None:
    rows = await conn.fetch(_WALK_SQL, room_id, list(set(seeds)), cutoff, list(stop))
    for row in rows:
        node = nodes.get(row["event_id"])
        if node is None:
            node = nodes[row["event_id"]] = Node(
                row["event_id"], row["depth"], row["status"], list(row["prevs"])
            )
        if row["depth"] > cutoff:
            node.walked = True


async def walk_prev_events(
    conn: asyncpg.Connection,
    room_id: str,
    start_ids: Sequence[str],
    limit: int,
    *,
    include_starts: bool,
    stop_ids: Sequence[str] = (),
    min_depth: int | None = None,
) -> list[str]:
    """Event ids in walk order (deepest first), at most ``limit`` of them.

    ``stop_ids`` are neither returned nor walked through. ``min_depth``:
    shallower events are neither returned nor walked through.
    """
    if limit <= 0 or not start_ids:
        return []
    stop = set(stop_ids)
    starts = [s for s in dict.fromkeys(start_ids) if not (include_starts and s in stop)]
    lowest = await conn.fetchval(
        "SELECT min(depth) FROM events.events"
        " WHERE event_id = ANY($1::text[]) AND room_id = $2 AND status <> 4",
        starts,
        room_id,
    )
    if lowest is None:
        return []
    nodes: dict[str, Node] = {}
    await _load(conn, room_id, starts, lowest - limit - 1, sorted(stop), nodes)

    heap: list[tuple[int, str]] = []
    queued: set[str] = set()
    result: list[str] = []

    def push(event_id: str) -> None:
        node = nodes.get(event_id)
        if node is None or event_id in queued or event_id in stop:
            return
        if min_depth is not None and node.depth < min_depth:
            return
        queued.add(event_id)
        heapq.heappush(heap, (-node.depth, event_id))

    if include_starts:
        for start in starts:
            push(start)
    else:
        # The starts are known to the caller: only what precedes them counts.
        queued.update(starts)
        for start in starts:
            node = nodes.get(start)
            for prev in node.prevs if node is not None else ():
                push(prev)

    while heap and len(result) < limit:
        _, event_id = heapq.heappop(heap)
        node = nodes[event_id]
        if node.status != REJECTED:
            result.append(event_id)
        if not node.walked:
            unloaded = [n for n in nodes.values() if not n.walked and n.event_id in queued]
            cutoff = node.depth - (limit - len(result)) - 1
            await _load(
                conn,
                room_id,
                [p for n in unloaded for p in n.prevs if p not in nodes],
                cutoff,
                sorted(stop),
                nodes,
            )
            for n in unloaded:
                n.walked = True
        for prev in node.prevs:
            push(prev)
    return result


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
