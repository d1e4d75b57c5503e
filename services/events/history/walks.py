"""Walks of the room DAG over ``prev_events``.

:func:`storage.walk_rows` loads, in one recursive query, what a set of seeds
reaches over ``prev_events`` down to a depth cutoff; the depth-ordered walk
itself (deepest first, ties by event id) runs here over what it loaded.

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

from services.events.history import storage
from services.events.storage import Status

MAX_BACKFILL = 100
MAX_MISSING_EVENTS = 20
DEFAULT_MISSING_EVENTS = 10


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
    for row in await storage.walk_rows(conn, room_id, list(set(seeds)), cutoff, stop):
        node = nodes.get(row.event_id)
        if node is None:
            node = nodes[row.event_id] = Node(row.event_id, row.depth, row.status, row.prevs)
        if row.depth > cutoff:
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
    lowest = await storage.lowest_depth(conn, room_id, starts)
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
        if node.status != Status.REJECTED:
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
