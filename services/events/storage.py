"""The events service's tables: events, rooms, extremities, current state, streams.

Every function takes the asyncpg connection to run on, so callers decide the
transaction (one per input batch: a room's, or a /send's rooms'). State groups live in
:mod:`services.events.state_storage`. Tables are in schema ``events`` and
always named with it: pool connections do not set a search_path.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

import asyncpg

from matrix_protocol.canonical_json import decode_json, encode_json
from matrix_protocol.events import Event
from matrix_protocol.room_versions import room_version
from mxfed.database import keep_session_state

# Notified by events.assign_stream_positions() (migration 012) when positions are given.
NOTIFY_CHANNEL = "mxfed_events_stream"


class Status(IntEnum):
    """Same numbers as ``mxfed.events.v1.EventStatus``."""

    ACCEPTED = 1
    SOFT_FAILED = 2
    REJECTED = 3
    OUTLIER = 4


@dataclass
class StoredEvent:
    event: Event
    status: Status
    rejection_reason: str = ""
    redacted: bool = False
    stream_position: int | None = None
    state_group_before: int | None = None
    state_group_after: int | None = None
    servers_before: list[str] = field(default_factory=list)

    @property
    def event_id(self) -> str:
        return self.event.event_id


@dataclass
class RoomRow:
    room_id: str
    room_version: str
    create_event_id: str | None
    current_state_group: int | None


def lock_key(text: str) -> int:
    """A signed 64-bit advisory lock key for ``text``."""
    return int.from_bytes(
        hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True
    )


_EVENT_COLUMNS = (
    "e.event_id, r.room_version, e.pdu_json, e.status, e.rejection_reason, e.redacted,"
    " e.stream_position, e.state_group_before, e.state_group_after, e.servers_before"
)


def _stored_event(row: asyncpg.Record) -> StoredEvent:
    version = room_version(row["room_version"])
    event = Event(decode_json(row["pdu_json"]), version, row["event_id"])
    return StoredEvent(
        event=event,
        status=Status(row["status"]),
        rejection_reason=row["rejection_reason"],
        redacted=row["redacted"],
        stream_position=row["stream_position"],
        state_group_before=row["state_group_before"],
        state_group_after=row["state_group_after"],
        servers_before=list(row["servers_before"]),
    )


# ---------------------------------------------------------------- rooms


async def get_rooms(conn: asyncpg.Connection, room_ids: Iterable[str]) -> dict[str, RoomRow]:
    rows = await conn.fetch(
        "SELECT room_id, room_version, create_event_id, current_state_group"
        " FROM events.rooms WHERE room_id = ANY($1::text[])",
        list(set(room_ids)),
    )
    return {row["room_id"]: RoomRow(**dict(row)) for row in rows}


async def join_started(conn: asyncpg.Connection, room_id: str, now: int) -> None:
    await conn.execute(
        "INSERT INTO events.joins_in_progress (room_id, started_ts) VALUES ($1, $2)"
        " ON CONFLICT (room_id) DO UPDATE SET started_ts = EXCLUDED.started_ts",
        room_id,
        now,
    )


async def join_ended(conn: asyncpg.Connection, room_id: str) -> None:
    await conn.execute("DELETE FROM events.joins_in_progress WHERE room_id = $1", room_id)


async def rooms_or_joins(
    conn: asyncpg.Connection, room_ids: Iterable[str], joins_since: int
) -> tuple[dict[str, RoomRow], set[str]]:
    """Of ``room_ids``, the rooms we know, and of the others those whose join started
    at ``joins_since`` or later and has not ended. One snapshot: a join ends after
    its room is stored, so a room is in one or the other once its join started."""
    rows = await conn.fetch(
        "SELECT k.room_id, r.room_version, r.create_event_id, r.current_state_group,"
        " EXISTS (SELECT 1 FROM events.joins_in_progress j"
        "   WHERE j.room_id = k.room_id AND j.started_ts >= $2) AS joining"
        " FROM unnest($1::text[]) AS k(room_id)"
        " LEFT JOIN events.rooms r ON r.room_id = k.room_id",
        list(set(room_ids)),
        joins_since,
    )
    rooms = {
        row["room_id"]: RoomRow(
            room_id=row["room_id"],
            room_version=row["room_version"],
            create_event_id=row["create_event_id"],
            current_state_group=row["current_state_group"],
        )
        for row in rows
        if row["room_version"] is not None
    }
    joining = {row["room_id"] for row in rows if row["room_version"] is None and row["joining"]}
    return rooms, joining


@dataclass
class RoomHead:
    """What a room batch starts from (:func:`room_head`)."""

    room: RoomRow
    extremities: dict[str, int]  # forward extremity event id → depth
    group_ids: list[int]  # state group ids reserved for the batch
    has_waiting_redactions: bool
    partial_state: bool
    # Places in the stream queue reserved for the batch (:func:`reserve_stream_pending`).
    stream_orders: list[int] = field(default_factory=list)
    # Local senders' transaction ids already used: (sender, txn id) → (event id, its
    # stream position, None while pending; the table has no position of its own).
    sent_before: dict[tuple[str, str], tuple[str, int | None]] = field(default_factory=dict)
    # Which of the caller's ``held_among`` ids are stored.
    held: set[str] = field(default_factory=set)


async def room_head(
    conn: asyncpg.Connection,
    room_id: str,
    group_ids: int,
    *,
    stream_orders: int = 0,
    local_transactions: Sequence[tuple[str, str]] = (),
    held_among: Sequence[str] = (),
) -> RoomHead | None:
    """The room's row and forward extremities, ``group_ids`` state group ids reserved, and
    whether it has waiting redactions or a partial state, in one round trip (a batch's
    start waits for it under the room's lock); None for an unknown room. Call after
    :func:`lock_room`: a statement sees what committed before it began.

    The same round trip can reserve ``stream_orders`` places in the stream queue (for a
    caller that answers only after the stream round: the commit then skips its WAL flush,
    as with :func:`reserve_stream_pending`), look up ``local_transactions`` and tell which
    of ``held_among`` (event ids) are stored.
    """
    heads = await room_heads(
        conn,
        [(room_id, group_ids, stream_orders, held_among)],
        {room_id: local_transactions},
    )
    return heads.get(room_id)


async def room_heads(
    conn: asyncpg.Connection,
    rooms: Sequence[tuple[str, int, int, Sequence[str]]],
    local_transactions: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> dict[str, RoomHead]:
    """:func:`room_head` for several rooms in one round trip (the rooms of a /send, or of
    local sends written together, under their locks): per room (room id, state group ids
    to reserve, places in the stream queue to reserve, ids of which to tell those stored);
    unknown rooms left out. Places in the stream queue make the commit skip its WAL
    flush, as with :func:`room_head`. ``local_transactions``: per room, local senders'
    (sender, txn id) to look up (:attr:`RoomHead.sent_before`)."""
    local_transactions = local_transactions or {}
    asked = [
        (n, key)
        for n, (room_id, _, _, _) in enumerate(rooms, 1)
        for key in local_transactions.get(room_id, ())
    ]
    rows = await conn.fetch(
        "SELECT w.room_id, r.room_version, r.create_event_id, r.current_state_group,"
        " ARRAY(SELECT f.event_id FROM events.forward_extremities f"
        "       CROSS JOIN LATERAL (SELECT e.depth FROM events.events e"
        "                           WHERE e.event_id = f.event_id OFFSET 0) e"
        "       WHERE f.room_id = w.room_id ORDER BY f.event_id) AS extremity_ids,"
        " ARRAY(SELECT e.depth FROM events.forward_extremities f"
        "       CROSS JOIN LATERAL (SELECT e.depth FROM events.events e"
        "                           WHERE e.event_id = f.event_id OFFSET 0) e"
        "       WHERE f.room_id = w.room_id ORDER BY f.event_id) AS extremity_depths,"
        " ARRAY(SELECT nextval('events.state_group_ids') FROM generate_series(1, w.group_ids))"
        "   AS group_ids,"
        " EXISTS (SELECT 1 FROM events.waiting_redactions x WHERE x.room_id = w.room_id"
        "         OFFSET 0) AS has_waiting_redactions,"
        " EXISTS (SELECT 1 FROM events.partial_state_rooms p WHERE p.room_id = w.room_id"
        "         OFFSET 0) AS partial_state,"
        " ARRAY(SELECT nextval('events.stream_pending_order')"
        "       FROM generate_series(1, w.stream_orders)) AS stream_orders,"
        " ARRAY(SELECT a.event_id FROM unnest($4::int[], $5::text[]) AS a(n, event_id)"
        "       WHERE a.n = w.n AND EXISTS (SELECT 1 FROM events.events h"
        "                                   WHERE h.event_id = a.event_id OFFSET 0))"
        "   AS held_ids,"
        " ARRAY(SELECT k.i FROM unnest($7::int[], $8::text[], $9::text[]) WITH ORDINALITY"
        "       AS k(n, sender, txn_id, i) CROSS JOIN LATERAL ("
        "         SELECT t.event_id FROM events.local_transactions t"
        "          WHERE t.sender = k.sender AND t.txn_id = k.txn_id OFFSET 0) t"
        "       WHERE k.n = w.n ORDER BY k.i) AS sent_at,"
        " ARRAY(SELECT t.event_id FROM unnest($7::int[], $8::text[], $9::text[])"
        "       WITH ORDINALITY AS k(n, sender, txn_id, i) CROSS JOIN LATERAL ("
        "         SELECT t.event_id FROM events.local_transactions t"
        "          WHERE t.sender = k.sender AND t.txn_id = k.txn_id OFFSET 0) t"
        "       WHERE k.n = w.n ORDER BY k.i) AS sent_ids,"
        " ARRAY(SELECT e.stream_position FROM unnest($7::int[], $8::text[], $9::text[])"
        "       WITH ORDINALITY AS k(n, sender, txn_id, i) CROSS JOIN LATERAL ("
        "         SELECT t.event_id FROM events.local_transactions t"
        "          WHERE t.sender = k.sender AND t.txn_id = k.txn_id OFFSET 0) t"
        "       LEFT JOIN LATERAL (SELECT e.stream_position FROM events.events e"
        "                          WHERE e.event_id = t.event_id OFFSET 0) e ON true"
        "       WHERE k.n = w.n ORDER BY k.i) AS sent_positions"
        " FROM unnest($1::text[], $2::int[], $3::int[]) WITH ORDINALITY"
        "   AS w(room_id, group_ids, stream_orders, n)"
        " CROSS JOIN LATERAL (SELECT r.room_version, r.create_event_id, r.current_state_group"
        "                     FROM events.rooms r WHERE r.room_id = w.room_id OFFSET 0) r,"
        " set_config('synchronous_commit', CASE WHEN $6 THEN 'off'"
        "   ELSE current_setting('synchronous_commit') END, true)",
        [room_id for room_id, _, _, _ in rooms],
        [group_ids for _, group_ids, _, _ in rooms],
        [stream_orders for _, _, stream_orders, _ in rooms],
        [n for n, (_, _, _, held_among) in enumerate(rooms, 1) for _ in held_among],
        [event_id for _, _, _, held_among in rooms for event_id in held_among],
        any(stream_orders > 0 for _, _, stream_orders, _ in rooms),
        [n for n, _ in asked],
        [sender for _, (sender, _) in asked],
        [txn_id for _, (_, txn_id) in asked],
    )
    return {
        row["room_id"]: RoomHead(
            RoomRow(
                row["room_id"],
                row["room_version"],
                row["create_event_id"],
                row["current_state_group"],
            ),
            dict(zip(row["extremity_ids"], row["extremity_depths"], strict=True)),
            list(row["group_ids"]),
            row["has_waiting_redactions"],
            row["partial_state"],
            sorted(row["stream_orders"]),
            {
                asked[i - 1][1]: (event_id, position)
                for i, event_id, position in zip(
                    row["sent_at"], row["sent_ids"], row["sent_positions"], strict=True
                )
            },
            held=set(row["held_ids"]),
        )
        for row in rows
    }


async def insert_room(conn: asyncpg.Connection, room_id: str, version: str) -> bool:
    status = await conn.execute(
        "INSERT INTO events.rooms (room_id, room_version) VALUES ($1, $2)"
        " ON CONFLICT (room_id) DO NOTHING",
        room_id,
        version,
    )
    return status.endswith(" 1")


def room_lock_keys(room_ids: Iterable[str]) -> list[int]:
    """The rooms' advisory lock keys in the order every writer takes several (sorted), so
    that two writers never wait for each other's locks in a cycle."""
    return sorted({lock_key("room:" + room_id) for room_id in room_ids})


async def lock_room(conn: asyncpg.Connection, room_id: str) -> None:
    """Only one replica works on a room at a time (until this transaction ends)."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key("room:" + room_id))


@contextlib.asynccontextmanager
async def room_transaction(
    conn: asyncpg.Connection, *room_ids: str, flushed_by_round: bool = False
) -> AsyncIterator[None]:
    """A transaction that holds the rooms' locks (:func:`lock_room`) from its start, begun
    in one round trip (BEGIN and the locks as one simple query); committed when the block
    ends, rolled back when it raises. Several rooms' locks are taken in the order of their
    keys, so that two such transactions never wait for each other's locks in a cycle.

    Its statements run with generic plans (made once per connection): with the default
    plan_cache_mode a room head (:func:`room_head`) or an insert of a few events was
    planned afresh on every execution, as a generic plan of their generate_series,
    unnest and ANY(array) parameters is estimated dearer than a custom one (room_head
    0.5 ms → 0.15 ms); they find their rows by key whatever the parameters. And without
    sequential scans where an index serves: a generic plan made while a table was small
    (local_transactions after a few sends, analyzed then) kept hashing the whole table
    on every execution as it grew, until its next ANALYZE (a transaction-id lookup of
    local sends 0.1 → 8 ms within seconds of a fresh start). That alone made it hash
    the table's whole index instead, so the lookups by key are written as subqueries run
    per key (``LATERAL`` or ``EXISTS`` with ``OFFSET 0``, which the planner neither
    pulls up into a join nor hashes): :func:`room_heads`, and the checked write's
    function (migration 021). And without JIT, which a scan that must stay (no index
    serves) would trigger, costed as it then is.

    ``flushed_by_round``: the caller answers only after a stream round, whose synchronous
    commit makes this one durable: the commit skips its WAL flush (as :func:`room_head`
    does when it reserves places in the stream queue), unless the transaction gives the
    positions itself (:func:`position_if_free`), which then flushes its commit."""
    locks = "".join(f"; SELECT pg_advisory_xact_lock({key})" for key in room_lock_keys(room_ids))
    flush = "; SET LOCAL synchronous_commit = off" if flushed_by_round else ""
    try:
        await conn.execute(
            "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan;"
            f" SET LOCAL enable_seqscan = off; SET LOCAL jit = off{flush}{locks}"
        )
        yield
    except BaseException:
        if not conn.is_closed() and conn.is_in_transaction():
            await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")


async def update_room_head(
    conn: asyncpg.Connection, room_id: str, current_state_group: int, create_event_id: str | None
) -> None:
    await conn.execute(
        "UPDATE events.rooms SET current_state_group = $2,"
        " create_event_id = COALESCE(create_event_id, $3) WHERE room_id = $1",
        room_id,
        current_state_group,
        create_event_id,
    )


async def set_create_event(conn: asyncpg.Connection, room_id: str, create_event_id: str) -> None:
    await conn.execute(
        "UPDATE events.rooms SET create_event_id = $2"
        " WHERE room_id = $1 AND create_event_id IS NULL",
        room_id,
        create_event_id,
    )


# ---------------------------------------------------------------- events


async def fetch_events(
    conn: asyncpg.Connection, event_ids: Iterable[str]
) -> dict[str, StoredEvent]:
    ids = list(set(event_ids))
    if not ids:
        return {}
    rows = await conn.fetch(
        f"SELECT {_EVENT_COLUMNS} FROM events.events e JOIN events.rooms r USING (room_id)"
        " WHERE e.event_id = ANY($1::text[])",
        ids,
    )
    return {row["event_id"]: _stored_event(row) for row in rows}


async def fetch_event_rows(
    conn: asyncpg.Connection, event_ids: Sequence[str]
) -> list[asyncpg.Record]:
    """Rows for answering reads (EventRecord fields), in no particular order."""
    return await conn.fetch(
        "SELECT e.event_id, e.room_id, r.room_version, e.pdu_json, e.status,"
        " e.stream_position, e.redacted, e.rejection_reason, e.state_group_before,"
        " e.type, e.state_key, e.sender, e.servers_before"
        " FROM events.events e JOIN events.rooms r USING (room_id)"
        " WHERE e.event_id = ANY($1::text[])",
        list(event_ids),
    )


async def auth_chain_ids(conn: asyncpg.Connection, event_ids: Iterable[str]) -> list[str]:
    """Every event reachable through auth_events from ``event_ids`` (themselves excluded)."""
    rows = await conn.fetch(
        """
        WITH RECURSIVE chain(id) AS (
            SELECT a.auth_id FROM events.event_auth a WHERE a.event_id = ANY($1::text[])
            UNION
            SELECT a.auth_id FROM events.event_auth a JOIN chain c ON a.event_id = c.id
        )
        SELECT id FROM chain
        """,
        list(set(event_ids)),
    )
    return [row["id"] for row in rows]


@dataclass
class EventWrite:
    """One row of ``events`` to insert at the end of a room batch."""

    stored: StoredEvent
    pdu_json: str
    membership: str | None
    # The event is stored already as an outlier: give it its place in the DAG.
    promote: bool = False
    # The remote server we accepted it for (send_join/leave/knock we host).
    relayed_for: str | None = None


@dataclass
class HeadChange:
    """What else a room batch writes with its events: forward extremities removed and
    added (never the same id), local senders' (sender, txn id, event id) rows."""

    removed_extremities: Sequence[str] = ()
    added_extremities: Sequence[str] = ()
    local_transactions: Sequence[tuple[str, str, str]] = ()

    @property
    def changes_anything(self) -> bool:
        return bool(self.removed_extremities or self.added_extremities or self.local_transactions)


@dataclass(frozen=True)
class ExpectedHead:
    """The head a batch was opened on without reading it under the lock (one this process
    wrote or read before): its write checks, in the same statement, that the room's head
    is still this one."""

    extremity: str  # a head kept for this is one forward extremity (RoomBatch.known_head)
    current_state_group: int


@dataclass
class RoomWrites:
    """What one room's batch inserts: its events (``writes``), those streamed queued at
    their ``stream_pending`` place (:func:`reserve_stream_pending`), and ``change``.
    When any room of a write has ``expected``, the streamed events of every room of it
    take their places in the stream queue in the insert itself (their ``stream_pending``
    values only say which are streamed)."""

    room_id: str
    writes: Sequence[EventWrite]
    stream_pending: Mapping[str, int]
    change: HeadChange
    expected: ExpectedHead | None = None


async def insert_events(conn: asyncpg.Connection, rooms: Sequence[RoomWrites]) -> bool:
    """The rooms' writes (those of a /send's rooms written in one transaction), inside the
    caller's transaction. The rooms with few new events go with their changes in one
    statement (one round trip), a room with more as a COPY per table.

    Rooms written with an :class:`ExpectedHead` (each with few new events; any other
    room of the call too) are written in one statement that also tells whether, when it
    began (under the rooms' locks), each such room's head was the expected one and it had
    neither waiting redactions nor a partial state, and none of the local transaction ids
    written was used: False means the caller must roll back. True otherwise.

    False too when a local transaction id written was used by another write meanwhile
    (which the caller's look-up, under other rooms' locks, could not see): the caller
    rolls back and, looking it up again, finds that write's event."""
    try:
        return await _insert_events(conn, rooms)
    except asyncpg.UniqueViolationError as error:
        if not _transaction_id_used(error):
            raise
        return False


def _transaction_id_used(error: asyncpg.UniqueViolationError) -> bool:
    """Whether the insert failed on a local transaction id another write used meanwhile."""
    return error.constraint_name == "local_transactions_pkey"


async def insert_events_alone(
    conn: asyncpg.Connection, rooms: Sequence[RoomWrites]
) -> dict[str, int] | None:
    """:func:`insert_events` for rooms all opened on expected heads, by a caller that holds
    no transaction: one statement that takes the rooms' locks first and is its own
    transaction, committed when it returns; None when nothing was written (a head moved,
    a transaction id was used). When the stream lock was free it also gave the stream
    positions (migration 019): those it gave are answered, the written events' among
    them, and its commit was flushed; otherwise none are, and the commit's flush is left
    to the stream round the caller waits for."""
    assert all(r.expected is not None for r in rooms)
    try:
        written, positions = await _insert_few(conn, rooms, checked=True, take_locks=True)
    except asyncpg.UniqueViolationError as error:
        if not _transaction_id_used(error):
            raise
        return None
    return positions if written else None


async def _insert_events(conn: asyncpg.Connection, rooms: Sequence[RoomWrites]) -> bool:
    if any(r.expected is not None for r in rooms):
        assert all(len(r.writes) <= INSERT_FEW_AT_MOST for r in rooms)
        assert not any(w.promote for r in rooms for w in r.writes)
        written, _ = await _insert_few(conn, rooms, checked=True)
        return written
    few: list[RoomWrites] = []
    for room in rooms:
        promoted = [w for w in room.writes if w.promote]
        if promoted:
            await _promote_outliers(conn, room.room_id, promoted, room.stream_pending)
        new = [w for w in room.writes if not w.promote]
        if len(new) <= INSERT_FEW_AT_MOST:
            few.append(replace(room, writes=new))
        else:
            await _insert_many(conn, replace(room, writes=new))
    if any(r.writes or r.change.changes_anything for r in few):
        await _insert_few(conn, few)
    return True


async def _insert_many(conn: asyncpg.Connection, room: RoomWrites) -> None:
    writes, change = room.writes, room.change
    await replace_forward_extremities(
        conn, room.room_id, change.removed_extremities, change.added_extremities
    )
    if change.local_transactions:
        await store_local_transactions(conn, change.local_transactions)
    rows = [
        (
            w.stored.event_id,
            room.room_id,
            w.stored.event.type,
            w.stored.event.state_key,
            w.stored.event.sender,
            w.membership,
            w.stored.event.depth,
            w.stored.event.origin_server_ts,
            w.pdu_json,
            int(w.stored.status),
            w.stored.rejection_reason,
            w.stored.redacted,
            w.stored.state_group_before,
            w.stored.state_group_after,
            w.stored.servers_before,
            w.relayed_for,
            room.stream_pending.get(w.stored.event_id),
        )
        for w in writes
    ]
    await _insert_rows(conn, "events", _INSERTED_EVENT_COLUMNS, rows)
    await _insert_rows(conn, "event_auth", ("event_id", "auth_id"), _auth_edges(writes))
    await _insert_rows(conn, "event_edges", ("prev_event_id", "event_id"), _prev_edges(writes))


def _auth_edges(writes: Sequence[EventWrite]) -> list[tuple[str, str]]:
    return [(w.stored.event_id, a) for w in writes for a in w.stored.event.auth_event_ids]


def _prev_edges(writes: Sequence[EventWrite]) -> list[tuple[str, str]]:
    return list(
        {(prev_id, w.stored.event_id) for w in writes for prev_id in w.stored.event.prev_event_ids}
    )


_INSERTED_EVENT_COLUMNS = (
    "event_id",
    "room_id",
    "type",
    "state_key",
    "sender",
    "membership",
    "depth",
    "origin_server_ts",
    "pdu_json",
    "status",
    "rejection_reason",
    "redacted",
    "state_group_before",
    "state_group_after",
    "servers_before",
    "relayed_for",
    "stream_pending",
)
# Up to this many events of a room go in one statement (one round trip); more as a COPY
# per table, which waits for the server twice (to start, and at the end) but moves rows
# cheaper.
INSERT_FEW_AT_MOST = 16


async def _insert_few(
    conn: asyncpg.Connection,
    rooms: Sequence[RoomWrites],
    *,
    checked: bool = False,
    take_locks: bool = False,
) -> tuple[bool, dict[str, int]]:
    """The rooms' writes through ``events.insert_few_then_position`` (migrations 018-020),
    one round trip: ``checked``, the rooms' expected heads checked and streamed events
    placed in the stream queue by it; ``take_locks``, the rooms' locks taken by it (the
    caller holds no transaction), and the stream positions given by it if the stream lock
    was free. Whether anything was written (False: a checked head had moved) and the
    positions it gave."""
    rows = [(room, w) for room in rooms for w in room.writes]
    writes = [w for _, w in rows]
    events = [w.stored.event for w in writes]
    edges = _auth_edges(writes)
    prev_edges = _prev_edges(writes)
    removed = [(r.room_id, e) for r in rooms for e in r.change.removed_extremities]
    added = [(r.room_id, e) for r in rooms for e in r.change.added_extremities]
    sent = [row for r in rooms for row in r.change.local_transactions]
    expected = [(r.room_id, r.expected) for r in rooms if checked and r.expected is not None]
    answer = await conn.fetchrow(
        "SELECT * FROM events.insert_few_then_position($1, $2, $3, $4, $5, $6, $7, $8, $9,"
        " $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25,"
        " $26, $27, $28, $29, $30, $31, $32, $33)",
        room_lock_keys(r.room_id for r in rooms) if take_locks else [],
        checked,
        [room.room_id for room, _ in rows],
        [e.event_id for e in events],
        [e.type for e in events],
        [e.state_key for e in events],
        [e.sender for e in events],
        [w.membership for w in writes],
        [e.depth for e in events],
        [e.origin_server_ts for e in events],
        [w.pdu_json for w in writes],
        [int(w.stored.status) for w in writes],
        [w.stored.rejection_reason for w in writes],
        [w.stored.redacted for w in writes],
        [w.stored.state_group_before for w in writes],
        [w.stored.state_group_after for w in writes],
        [encode_json(w.stored.servers_before).decode() for w in writes],
        [w.relayed_for for w in writes],
        [room.stream_pending.get(w.stored.event_id) for room, w in rows],
        [edge[0] for edge in edges],
        [edge[1] for edge in edges],
        [edge[0] for edge in prev_edges],
        [edge[1] for edge in prev_edges],
        [room_id for room_id, _ in removed],
        [event_id for _, event_id in removed],
        [room_id for room_id, _ in added],
        [event_id for _, event_id in added],
        [row[0] for row in sent],
        [row[1] for row in sent],
        [row[2] for row in sent],
        [room_id for room_id, _ in expected],
        [head.extremity for _, head in expected],
        [head.current_state_group for _, head in expected],
    )
    positioned = dict(zip(answer["positioned_ids"], answer["positions"], strict=True))
    return answer["written"], positioned


async def _insert_rows(
    conn: asyncpg.Connection, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    if not rows:
        return
    if len(rows) > INSERT_FEW_AT_MOST:
        await conn.copy_records_to_table(
            table, schema_name="events", columns=list(columns), records=rows
        )
        return
    values = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
    await conn.executemany(
        f"INSERT INTO events.{table} ({', '.join(columns)}) VALUES ({values})", rows
    )


async def _promote_outliers(
    conn: asyncpg.Connection,
    room_id: str,
    writes: Sequence[EventWrite],
    stream_pending: Mapping[str, int],
) -> None:
    """Outliers that now have state: status, state groups and servers (edges are stored)."""
    await conn.executemany(
        "UPDATE events.events SET status = $3, rejection_reason = $4,"
        " state_group_before = $5, state_group_after = $6, servers_before = $7,"
        " relayed_for = $8, stream_pending = $9"
        " WHERE event_id = $1 AND room_id = $2 AND status = 4",
        [
            (
                w.stored.event_id,
                room_id,
                int(w.stored.status),
                w.stored.rejection_reason,
                w.stored.state_group_before,
                w.stored.state_group_after,
                w.stored.servers_before,
                w.relayed_for,
                stream_pending.get(w.stored.event_id),
            )
            for w in writes
        ],
    )


async def has_successors(conn: asyncpg.Connection, event_id: str) -> bool:
    """Whether a stored DAG event (not an outlier) cites ``event_id`` in its prev_events."""
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM events.event_edges g JOIN events.events e USING (event_id)"
            " WHERE g.prev_event_id = $1 AND e.status <> 4 LIMIT 1",
            event_id,
        )
    )


async def redact_event(
    conn: asyncpg.Connection, room_id: str, event_id: str, redacted_json: str
) -> None:
    await conn.execute(
        "UPDATE events.events SET pdu_json = $3, redacted = true"
        " WHERE event_id = $1 AND room_id = $2",
        event_id,
        room_id,
        redacted_json,
    )


@dataclass
class WaitingRedaction:
    """A stored redaction whose target we do not hold yet (``waiting_redactions``)."""

    target_id: str
    redaction_id: str
    authorised: bool
    redactor_server: str


async def waiting_redactions(
    conn: asyncpg.Connection, room_id: str
) -> dict[str, list[WaitingRedaction]]:
    """The room's waiting redactions by target id (usually none)."""
    rows = await conn.fetch(
        "SELECT target_id, redaction_id, authorised, redactor_server"
        " FROM events.waiting_redactions WHERE room_id = $1",
        room_id,
    )
    waiting: dict[str, list[WaitingRedaction]] = {}
    for row in rows:
        waiting.setdefault(row["target_id"], []).append(WaitingRedaction(**dict(row)))
    return waiting


async def update_waiting_redactions(
    conn: asyncpg.Connection,
    room_id: str,
    added: Sequence[WaitingRedaction],
    resolved_targets: Iterable[str],
) -> None:
    """Remember ``added``; forget the rows of targets that have arrived."""
    resolved = list(resolved_targets)
    if resolved:
        await conn.execute(
            "DELETE FROM events.waiting_redactions"
            " WHERE room_id = $1 AND target_id = ANY($2::text[])",
            room_id,
            resolved,
        )
    if added:
        await conn.executemany(
            "INSERT INTO events.waiting_redactions"
            " (room_id, target_id, redaction_id, authorised, redactor_server)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            [
                (room_id, w.target_id, w.redaction_id, w.authorised, w.redactor_server)
                for w in added
            ],
        )


async def reserve_stream_pending(conn: asyncpg.Connection, count: int) -> list[int]:
    """``count`` increasing places in the stream queue, for the events a room's
    transaction streams (written with them: :func:`insert_events`,
    :func:`mark_stream_pending`).

    They get positions after the commit, from :func:`assign_stream_positions`,
    in this order and after whatever the room queued before (migration 012).
    The caller answers only once that round has committed, so this transaction's
    commit does not wait for its WAL flush: the round's commit flushes the WAL
    past it (it saw this commit), one flush for both, and one for every room
    committed before the round.
    """
    orders = await conn.fetchval(
        "SELECT array(SELECT nextval('events.stream_pending_order')"
        " FROM generate_series(1, $1)) FROM set_config('synchronous_commit', 'off', true)",
        count,
    )
    return sorted(orders)


async def mark_stream_pending(conn: asyncpg.Connection, orders: Mapping[str, int]) -> None:
    """Queue stored events (not written in this batch) in the stream at ``orders``."""
    if not orders:
        return
    await conn.execute(
        "UPDATE events.events e SET stream_pending = p.o"
        " FROM unnest($1::text[], $2::bigint[]) AS p(id, o) WHERE e.event_id = p.id",
        list(orders),
        list(orders.values()),
    )


async def insert_ephemeral(conn: asyncpg.Connection, items: Sequence[dict[str, Any]]) -> None:
    """Typing and receipt rows, in order, queued for stream positions like events."""
    await conn.executemany(
        "INSERT INTO events.ephemeral (stream_pending, room_id, kind, user_id, typing,"
        " expires_ts, receipt_type, event_id, data_json)"
        " VALUES (nextval('events.stream_pending_order'), $1, $2, $3, $4, $5, $6, $7, $8)",
        [
            (
                item["room_id"],
                item["kind"],
                item["user_id"],
                item.get("typing"),
                item.get("expires_ts"),
                item.get("receipt_type"),
                item.get("event_id"),
                item.get("data_json"),
            )
            for item in items
        ],
    )


async def assign_stream_positions(conn: asyncpg.Connection) -> dict[str, int]:
    """Give every committed pending row its stream position; the events' ids → positions.

    Run on its own, not inside a transaction: the stream lock it takes is held
    only until this statement commits, and the stream channel is notified then.
    """
    rows = await conn.fetch(
        "SELECT assigned_event_id, assigned_position FROM events.assign_stream_positions()"
    )
    return {row["assigned_event_id"]: row["assigned_position"] for row in rows}


@dataclass(frozen=True)
class TransactionResponse:
    """A /send's response to store (``events.transactions``)."""

    origin: str
    txn_id: str
    response_json: str
    received_ts: int


async def position_if_free(
    conn: asyncpg.Connection, response: TransactionResponse | None = None
) -> tuple[dict[str, int], str | None]:
    """Inside a room transaction about to commit: when the stream lock is free, every
    pending row it can see (committed ones and its own) gets its position, the lock is
    held to the commit and that commit is flushed (migration 022); the events' ids →
    positions, empty when another holds the lock (a round after the commit positions
    them). ``response``: stored in the same statement unless one is stored already; the
    stored one is returned (None without ``response``)."""
    row = await conn.fetchrow(
        "WITH stored AS ("
        "  INSERT INTO events.transactions (origin, txn_id, response_json, received_ts)"
        "  SELECT $1, $2, $3, $4 WHERE $1::text IS NOT NULL"
        "  ON CONFLICT (origin, txn_id) DO NOTHING RETURNING response_json)"
        " SELECT p.positioned_ids, p.positions, coalesce((SELECT response_json FROM stored),"
        "   (SELECT t.response_json FROM events.transactions t"
        "     WHERE t.origin = $1 AND t.txn_id = $2)) AS response_json"
        " FROM events.position_if_free() p",
        response.origin if response else None,
        response.txn_id if response else None,
        response.response_json if response else None,
        response.received_ts if response else None,
    )
    assert row is not None
    positions = dict(zip(row["positioned_ids"], row["positions"], strict=True))
    return positions, row["response_json"]


async def stream_positions_of(conn: asyncpg.Connection, event_ids: Sequence[str]) -> dict[str, int]:
    """The positions ``event_ids`` have (those still pending, or never streamed, left out)."""
    rows = await conn.fetch(
        "SELECT event_id, stream_position FROM events.events"
        " WHERE event_id = ANY($1::text[]) AND stream_position IS NOT NULL",
        list(event_ids),
    )
    return {row["event_id"]: row["stream_position"] for row in rows}


# ---------------------------------------------------------------- extremities, current state


async def forward_extremities(conn: asyncpg.Connection, room_id: str) -> dict[str, int]:
    """Forward extremity event id → depth."""
    rows = await conn.fetch(
        "SELECT f.event_id, e.depth FROM events.forward_extremities f"
        " JOIN events.events e USING (event_id) WHERE f.room_id = $1",
        room_id,
    )
    return {row["event_id"]: row["depth"] for row in rows}


async def replace_forward_extremities(
    conn: asyncpg.Connection, room_id: str, removed: Iterable[str], added: Iterable[str]
) -> None:
    """One statement (one round trip); ``removed`` and ``added`` never share an id."""
    removed, added = list(removed), list(added)
    if not removed and not added:
        return
    await conn.execute(
        "WITH gone AS (DELETE FROM events.forward_extremities"
        " WHERE room_id = $1 AND event_id = ANY($2::text[]))"
        " INSERT INTO events.forward_extremities (room_id, event_id)"
        " SELECT $1, a FROM unnest($3::text[]) AS t(a) ON CONFLICT DO NOTHING",
        room_id,
        removed,
        added,
    )


@dataclass
class CurrentStateRow:
    type: str
    state_key: str
    event_id: str
    membership: str | None


async def apply_current_state_delta(
    conn: asyncpg.Connection,
    room_id: str,
    removed: Sequence[tuple[str, str]],
    changed: Sequence[CurrentStateRow],
) -> None:
    if removed:
        await conn.executemany(
            "DELETE FROM events.current_state WHERE room_id = $1 AND type = $2 AND state_key = $3",
            [(room_id, t, k) for t, k in removed],
        )
    if len(changed) > COPY_THRESHOLD:
        await _copy_current_state(conn, room_id, changed)
    elif changed:
        await conn.executemany(
            "INSERT INTO events.current_state"
            " (room_id, type, state_key, event_id, membership, server)"
            " VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = EXCLUDED.event_id,"
            " membership = EXCLUDED.membership, server = EXCLUDED.server",
            [
                (
                    room_id,
                    row.type,
                    row.state_key,
                    row.event_id,
                    row.membership,
                    row.state_key.split(":", 1)[1]
                    if row.type == "m.room.member" and ":" in row.state_key
                    else None,
                )
                for row in changed
            ],
        )


# More rows than this go through COPY into a temporary table (a join's whole state).
COPY_THRESHOLD = 500


def _member_server(event_type: str, state_key: str) -> str | None:
    if event_type == "m.room.member" and ":" in state_key:
        return state_key.split(":", 1)[1]
    return None


async def _copy_current_state(
    conn: asyncpg.Connection, room_id: str, changed: Sequence[CurrentStateRow]
) -> None:
    """Many current-state rows at once: COPY, then one upsert from the copy."""
    await conn.execute(
        "CREATE TEMPORARY TABLE IF NOT EXISTS current_state_in"
        " (type text, state_key text, event_id text, membership text, server text)"
        " ON COMMIT DELETE ROWS"
    )
    await conn.copy_records_to_table(
        "current_state_in",
        records=[
            (
                row.type,
                row.state_key,
                row.event_id,
                row.membership,
                _member_server(row.type, row.state_key),
            )
            for row in changed
        ],
    )
    await conn.execute(
        "INSERT INTO events.current_state"
        " (room_id, type, state_key, event_id, membership, server)"
        " SELECT $1, type, state_key, event_id, membership, server FROM current_state_in"
        " ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = EXCLUDED.event_id,"
        " membership = EXCLUDED.membership, server = EXCLUDED.server",
        room_id,
    )
    await conn.execute("DELETE FROM current_state_in")


async def current_state_of_rooms(
    conn: asyncpg.Connection, room_ids: Sequence[str], event_type: str, state_key: str
) -> dict[str, str]:
    """room id → the event id of (``event_type``, ``state_key``) in its current state, if any."""
    rows = await conn.fetch(
        "SELECT room_id, event_id FROM events.current_state"
        " WHERE room_id = ANY($1::text[]) AND type = $2 AND state_key = $3",
        list(room_ids),
        event_type,
        state_key,
    )
    return {row["room_id"]: row["event_id"] for row in rows}


@dataclass(frozen=True)
class RoomFacts:
    """What :func:`room_facts` found for some rooms."""

    # room id → the event id of its current state event of each type asked (state key "").
    state: dict[str, dict[str, str]]
    # The rooms in partial state (when asked).
    partial: set[str]


async def room_facts(
    conn: asyncpg.Connection, room_ids: Sequence[str], types: Sequence[str], partial: bool
) -> RoomFacts:
    """In one round trip: the rooms' current state events of ``types`` with the state
    key "", and (when ``partial``) which of the rooms are in partial state."""
    rows = await conn.fetch(
        "SELECT room_id, type, event_id FROM events.current_state"
        " WHERE room_id = ANY($1::text[]) AND type = ANY($2::text[]) AND state_key = ''"
        " UNION ALL SELECT room_id, NULL, NULL FROM events.partial_state_rooms"
        " WHERE $3 AND room_id = ANY($1::text[])",
        list(room_ids),
        list(types),
        partial,
    )
    facts = RoomFacts({}, set())
    for row in rows:
        if row["type"] is None:
            facts.partial.add(row["room_id"])
        else:
            facts.state.setdefault(row["room_id"], {})[row["type"]] = row["event_id"]
    return facts


async def current_state_ids(
    conn: asyncpg.Connection, room_id: str, filters: Sequence[tuple[str, str | None]] = ()
) -> list[str]:
    if not filters:
        rows = await conn.fetch(
            "SELECT event_id FROM events.current_state WHERE room_id = $1", room_id
        )
        return [row["event_id"] for row in rows]
    ids: list[str] = []
    for event_type, state_key in filters:
        if state_key is None:
            rows = await conn.fetch(
                "SELECT event_id FROM events.current_state WHERE room_id = $1 AND type = $2",
                room_id,
                event_type,
            )
        else:
            rows = await conn.fetch(
                "SELECT event_id FROM events.current_state"
                " WHERE room_id = $1 AND type = $2 AND state_key = $3",
                room_id,
                event_type,
                state_key,
            )
        ids.extend(row["event_id"] for row in rows)
    return list(dict.fromkeys(ids))


async def member_events(conn: asyncpg.Connection, event_ids: Sequence[str]) -> list[asyncpg.Record]:
    """Member events' ``state_key``, ``membership`` and ``stream_position`` (no JSON)."""
    return await conn.fetch(
        """
        SELECT event_id, state_key, membership, stream_position FROM events.events
        WHERE event_id = ANY($1::text[]) AND type = 'm.room.member'
        """,
        list(event_ids),
    )


async def joined_servers(conn: asyncpg.Connection, room_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT DISTINCT server FROM events.current_state"
        " WHERE room_id = $1 AND membership = 'join' ORDER BY server",
        room_id,
    )
    return [row["server"] for row in rows]


async def server_has_joined_member(conn: asyncpg.Connection, room_id: str, server: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM events.current_state"
            " WHERE room_id = $1 AND membership = 'join' AND server = $2 LIMIT 1",
            room_id,
            server,
        )
    )


async def depth_range(conn: asyncpg.Connection, room_id: str) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT COALESCE(min(depth), 0) AS lo, COALESCE(max(depth), 0) AS hi"
        " FROM events.events WHERE room_id = $1 AND status <> 4",
        room_id,
    )
    return row["lo"], row["hi"]


# ---------------------------------------------------------------- timeline


async def timeline_page(
    conn: asyncpg.Connection,
    room_id: str,
    after: tuple[int, int] | None,
    backwards: bool,
    limit: int,
) -> list[asyncpg.Record]:
    """Accepted events in (depth, nid) order after/before a position."""
    columns = (
        "e.nid, e.depth, e.event_id, e.room_id, r.room_version, e.pdu_json, e.status,"
        " e.stream_position, e.redacted, e.rejection_reason, e.type"
    )
    base = (
        f"SELECT {columns} FROM events.events e JOIN events.rooms r USING (room_id)"
        " WHERE e.room_id = $1 AND e.status = 1"
    )
    if backwards:
        if after is None:
            return await conn.fetch(
                f"{base} ORDER BY e.depth DESC, e.nid DESC LIMIT $2", room_id, limit
            )
        return await conn.fetch(
            f"{base} AND (e.depth, e.nid) < ($2, $3) ORDER BY e.depth DESC, e.nid DESC LIMIT $4",
            room_id,
            after[0],
            after[1],
            limit,
        )
    if after is None:
        return await conn.fetch(f"{base} ORDER BY e.depth, e.nid LIMIT $2", room_id, limit)
    return await conn.fetch(
        f"{base} AND (e.depth, e.nid) > ($2, $3) ORDER BY e.depth, e.nid LIMIT $4",
        room_id,
        after[0],
        after[1],
        limit,
    )


# ---------------------------------------------------------------- transactions


async def stored_transaction_response(
    conn: asyncpg.Connection, origin: str, txn_id: str
) -> str | None:
    return await conn.fetchval(
        "SELECT response_json FROM events.transactions WHERE origin = $1 AND txn_id = $2",
        origin,
        txn_id,
    )


async def store_transaction_response(
    conn: asyncpg.Connection,
    origin: str,
    txn_id: str,
    response_json: str,
    now_ms: int,
    *,
    flush: bool = True,
) -> str:
    """Store the response unless one is stored already; return the stored one.

    ``flush=False``: its commit does not wait for the WAL flush (``synchronous_commit``
    off for this statement's transaction)."""
    stored = await conn.fetchval(
        "INSERT INTO events.transactions (origin, txn_id, response_json, received_ts)"
        " SELECT $1, $2, $3, $4 FROM set_config('synchronous_commit',"
        "   CASE WHEN $5 THEN current_setting('synchronous_commit') ELSE 'off' END, true)"
        " ON CONFLICT (origin, txn_id) DO NOTHING RETURNING response_json",
        origin,
        txn_id,
        response_json,
        now_ms,
        flush,
    )
    if stored is not None:
        return stored
    existing = await stored_transaction_response(conn, origin, txn_id)
    return existing if existing is not None else response_json


# ---------------------------------------------------------------- streams


async def stream_events_after(
    conn: asyncpg.Connection, after: int, limit: int, room_id: str | None
) -> list[asyncpg.Record]:
    columns = (
        "e.stream_position, e.event_id, e.room_id, r.room_version, e.pdu_json, e.status,"
        " e.redacted, e.rejection_reason, e.sender, e.type, e.servers_before, e.relayed_for"
    )
    if room_id:
        return await conn.fetch(
            f"SELECT {columns} FROM events.events e JOIN events.rooms r USING (room_id)"
            " WHERE e.stream_position > $1 AND e.room_id = $3"
            " ORDER BY e.stream_position LIMIT $2",
            after,
            limit,
            room_id,
        )
    return await conn.fetch(
        f"SELECT {columns} FROM events.events e JOIN events.rooms r USING (room_id)"
        " WHERE e.stream_position > $1 ORDER BY e.stream_position LIMIT $2",
        after,
        limit,
    )


async def stream_after_with_ephemeral(
    conn: asyncpg.Connection, after: int, limit: int, room_id: str | None
) -> list[asyncpg.Record]:
    """Events and ephemeral rows after ``after`` (at most ``limit`` of each), in one
    statement: one snapshot, so no round commits between the two reads (its ephemeral
    rows seen, its events at lower positions not). ``ephemeral`` tells them apart."""
    room = " AND room_id = $3" if room_id else ""
    events_room = " AND e.room_id = $3" if room_id else ""
    return await conn.fetch(
        "(SELECT e.stream_position, false AS ephemeral, e.event_id, e.room_id, r.room_version,"
        " e.pdu_json, e.status, e.redacted, e.rejection_reason, e.sender, e.type,"
        " e.servers_before, e.relayed_for, NULL AS kind, NULL AS user_id,"
        " NULL::boolean AS typing, NULL AS receipt_type, NULL AS data_json"
        " FROM events.events e JOIN events.rooms r USING (room_id)"
        f" WHERE e.stream_position > $1{events_room} ORDER BY e.stream_position LIMIT $2)"
        " UNION ALL"
        " (SELECT stream_position, true, event_id, room_id, NULL, NULL, NULL, NULL, NULL, NULL,"
        " NULL, NULL, NULL, kind, user_id, typing, receipt_type, data_json FROM events.ephemeral"
        f" WHERE stream_position > $1{room} ORDER BY stream_position LIMIT $2)"
        " ORDER BY stream_position",
        after,
        limit,
        *([room_id] if room_id else []),
    )


async def max_stream_position(conn: asyncpg.Connection) -> int:
    value = await conn.fetchval(
        "SELECT GREATEST((SELECT max(stream_position) FROM events.events),"
        " (SELECT max(stream_position) FROM events.ephemeral))"
    )
    return int(value or 0)


# ---------------------------------------------------------------- aliases, local txns


async def create_alias(
    conn: asyncpg.Connection, alias: str, room_id: str, creator: str, servers: Sequence[str]
) -> bool:
    status = await conn.execute(
        "INSERT INTO events.aliases (alias, room_id, creator, servers) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (alias) DO NOTHING",
        alias,
        room_id,
        creator,
        list(servers),
    )
    return status.endswith(" 1")


async def delete_alias(conn: asyncpg.Connection, alias: str) -> bool:
    status = await conn.execute("DELETE FROM events.aliases WHERE alias = $1", alias)
    return status.endswith(" 1")


async def get_alias(conn: asyncpg.Connection, alias: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT room_id, servers FROM events.aliases WHERE alias = $1", alias
    )


async def store_local_transactions(
    conn: asyncpg.Connection, rows: Sequence[tuple[str, str, str]]
) -> None:
    """Local senders' transaction ids: (sender, txn id, event id) rows; one used already
    raises :class:`asyncpg.UniqueViolationError` (:func:`insert_events` says so)."""
    await conn.execute(
        "INSERT INTO events.local_transactions (sender, txn_id, event_id)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[])",
        [row[0] for row in rows],
        [row[1] for row in rows],
        [row[2] for row in rows],
    )


# ---------------------------------------------------------------- partial state


@dataclass
class PartialStateRoom:
    """A room joined with a partial state (``events.partial_state_rooms``)."""

    room_id: str
    join_event_id: str
    joined_via: str
    servers: list[str]
    members_expected: int = 0
    resync_state: int = 2  # ResyncState.RESYNC_PENDING
    resync_attempts: int = 0
    resync_error: str = ""
    joined_ts: int = 0


@dataclass
class Replacement:
    """A stored event placed again: its state groups, status and servers."""

    event_id: str
    status: Status
    rejection_reason: str
    state_group_before: int
    state_group_after: int
    servers_before: list[str]


async def partial_state_room(conn: asyncpg.Connection, room_id: str) -> PartialStateRoom | None:
    row = await conn.fetchrow(
        "SELECT room_id, join_event_id, joined_via, servers, members_expected, resync_state,"
        " resync_attempts, resync_error, joined_ts"
        " FROM events.partial_state_rooms WHERE room_id = $1",
        room_id,
    )
    if row is None:
        return None
    fields = dict(row)
    fields["servers"] = list(fields["servers"])
    return PartialStateRoom(**fields)


async def partial_state_room_ids(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch("SELECT room_id FROM events.partial_state_rooms ORDER BY joined_ts")
    return [row["room_id"] for row in rows]


async def insert_partial_state_room(conn: asyncpg.Connection, room: PartialStateRoom) -> None:
    await conn.execute(
        "INSERT INTO events.partial_state_rooms"
        " (room_id, join_event_id, joined_via, servers, joined_ts) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (room_id) DO UPDATE SET join_event_id = $2, joined_via = $3,"
        " servers = $4, joined_ts = $5, members_expected = 0, resync_state = 2,"
        " resync_attempts = 0, resync_error = ''",
        room.room_id,
        room.join_event_id,
        room.joined_via,
        room.servers,
        room.joined_ts,
    )


async def add_partial_state_events(
    conn: asyncpg.Connection, room_id: str, event_ids: Sequence[str]
) -> None:
    if event_ids:
        await conn.executemany(
            "INSERT INTO events.partial_state_events (event_id, room_id) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING",
            [(event_id, room_id) for event_id in event_ids],
        )


async def partial_state_event_ids(conn: asyncpg.Connection, room_id: str) -> list[str]:
    """Events placed on a partial state, in the order they can be placed again (depth, nid)."""
    rows = await conn.fetch(
        "SELECT p.event_id FROM events.partial_state_events p"
        " JOIN events.events e USING (event_id)"
        " WHERE p.room_id = $1 ORDER BY e.depth, e.nid",
        room_id,
    )
    return [row["event_id"] for row in rows]


async def partial_state_arrival_order(
    conn: asyncpg.Connection, room_id: str
) -> list[tuple[str, bool]]:
    """Events placed on a partial state in the order they were placed (arrived),
    each with whether it is streamed (has a stream position or waits for one)."""
    rows = await conn.fetch(
        "SELECT p.event_id,"
        " (e.stream_position IS NOT NULL OR e.stream_pending IS NOT NULL) AS streamed"
        " FROM events.partial_state_events p JOIN events.events e USING (event_id)"
        " WHERE p.room_id = $1 ORDER BY p.placed",
        room_id,
    )
    return [(row["event_id"], row["streamed"]) for row in rows]


async def delete_partial_state(conn: asyncpg.Connection, room_id: str) -> None:
    await conn.execute("DELETE FROM events.partial_state_events WHERE room_id = $1", room_id)
    await conn.execute("DELETE FROM events.partial_state_rooms WHERE room_id = $1", room_id)


async def replace_event_placements(
    conn: asyncpg.Connection, room_id: str, rows: Sequence[Replacement]
) -> None:
    if rows:
        await conn.executemany(
            "UPDATE events.events SET status = $3, rejection_reason = $4,"
            " state_group_before = $5, state_group_after = $6, servers_before = $7"
            " WHERE event_id = $1 AND room_id = $2",
            [
                (
                    r.event_id,
                    room_id,
                    int(r.status),
                    r.rejection_reason,
                    r.state_group_before,
                    r.state_group_after,
                    r.servers_before,
                )
                for r in rows
            ],
        )


async def update_resync_progress(
    conn: asyncpg.Connection,
    room_id: str,
    state: int,
    *,
    members_expected: int | None = None,
    failed: str | None = None,
) -> None:
    """The resync's state; ``failed`` counts an attempt and keeps its reason."""
    await conn.execute(
        "UPDATE events.partial_state_rooms SET resync_state = $2,"
        " members_expected = COALESCE($3, members_expected),"
        " resync_attempts = resync_attempts + (CASE WHEN $4::text IS NULL THEN 0 ELSE 1 END),"
        " resync_error = COALESCE($4, resync_error)"
        " WHERE room_id = $1",
        room_id,
        state,
        members_expected,
        failed,
    )


async def count_current_members(conn: asyncpg.Connection, room_id: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM events.current_state"
            " WHERE room_id = $1 AND type = 'm.room.member'",
            room_id,
        )
    )


async def held_event_ids(conn: asyncpg.Connection, event_ids: Sequence[str]) -> set[str]:
    """Which of ``event_ids`` are stored (any status)."""
    rows = await conn.fetch(
        "SELECT event_id FROM events.events WHERE event_id = ANY($1::text[])", list(event_ids)
    )
    return {row["event_id"] for row in rows}


async def try_session_lock(conn: asyncpg.Connection, text: str) -> bool:
    """A session advisory lock (held until :func:`session_unlock` or the connection ends)."""
    keep_session_state(conn)
    return await try_session_lock_key(conn, lock_key(text))


async def session_unlock(conn: asyncpg.Connection, text: str) -> None:
    await session_unlock_key(conn, lock_key(text))


async def try_session_lock_key(conn: asyncpg.Connection, key: int) -> bool:
    """:func:`try_session_lock` by its :func:`lock_key` (the caller keeps the connection
    or marks it with ``keep_session_state``)."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))


async def try_transaction_lock(
    conn: asyncpg.Connection, key: int, origin: str, txn_id: str
) -> tuple[bool, str | None]:
    """:func:`try_session_lock_key` for the transaction guard and, when taken, the
    response stored for (``origin``, ``txn_id``) as of then, in one round trip."""
    row = await conn.fetchrow(
        "SELECT taken, stored_response FROM events.try_transaction_lock($1, $2, $3)",
        key,
        origin,
        txn_id,
    )
    return bool(row["taken"]), row["stored_response"]


async def session_unlock_key(conn: asyncpg.Connection, key: int) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", key)


async def join_state_before(
    conn: asyncpg.Connection, event_id: str
) -> tuple[int, list[str]] | None:
    """The state group and the servers in the room before ``event_id`` (None: unknown
    event, or one without a state group)."""
    row = await conn.fetchrow(
        "SELECT state_group_before, servers_before FROM events.events WHERE event_id = $1",
        event_id,
    )
    if row is None or row["state_group_before"] is None:
        return None
    return row["state_group_before"], list(row["servers_before"])


async def memberships_of(
    conn: asyncpg.Connection, event_ids: Sequence[str]
) -> dict[str, str | None]:
    """The membership of each stored event of ``event_ids`` (None for a non-member event)."""
    rows = await conn.fetch(
        "SELECT event_id, membership FROM events.events WHERE event_id = ANY($1::text[])",
        list(event_ids),
    )
    return {row["event_id"]: row["membership"] for row in rows}


async def typing_replaced(
    conn: asyncpg.Connection, typing_users: Sequence[tuple[str, str]]
) -> None:
    """A newer typing notification of each (room, user) replaces an older one's expiry."""
    await conn.executemany(
        "UPDATE events.ephemeral SET expires_ts = NULL WHERE room_id = $1"
        " AND user_id = $2 AND kind = 'typing' AND expires_ts IS NOT NULL",
        typing_users,
    )


async def expire_typing(conn: asyncpg.Connection, now: int) -> list[tuple[str, str]]:
    """(room, user) of each typing notification whose expiry is before ``now``, no longer
    expiring."""
    rows = await conn.fetch(
        "UPDATE events.ephemeral SET expires_ts = NULL"
        " WHERE kind = 'typing' AND expires_ts IS NOT NULL AND expires_ts < $1"
        " RETURNING room_id, user_id",
        now,
    )
    return [(row["room_id"], row["user_id"]) for row in rows]


async def state_group_before(conn: asyncpg.Connection, room_id: str, event_id: str) -> int | None:
    """The state group before ``event_id`` of ``room_id`` (None: unknown event, or none)."""
    return await conn.fetchval(
        "SELECT state_group_before FROM events.events WHERE event_id = $1 AND room_id = $2",
        event_id,
        room_id,
    )


async def servers_before(conn: asyncpg.Connection, room_id: str, event_id: str) -> list[str] | None:
    """The servers in ``room_id`` before ``event_id`` (None: unknown event)."""
    servers = await conn.fetchval(
        "SELECT servers_before FROM events.events WHERE event_id = $1 AND room_id = $2",
        event_id,
        room_id,
    )
    return None if servers is None else list(servers)


# Purges (mxfed room purge / shutdown --purge): deletions under the room's lock ------


async def _forget_events(conn: asyncpg.Connection, event_ids: Sequence[str]) -> None:
    """Delete events and the rows that hang off them (not their state groups)."""
    ids = list(event_ids)
    await conn.execute("DELETE FROM events.event_auth WHERE event_id = ANY($1::text[])", ids)
    await conn.execute("DELETE FROM events.event_edges WHERE event_id = ANY($1::text[])", ids)
    await conn.execute(
        "DELETE FROM events.waiting_redactions"
        " WHERE redaction_id = ANY($1::text[]) OR target_id = ANY($1::text[])",
        ids,
    )
    await conn.execute(
        "DELETE FROM events.local_transactions WHERE event_id = ANY($1::text[])", ids
    )
    await conn.execute("DELETE FROM events.events WHERE event_id = ANY($1::text[])", ids)


async def purge_history(
    conn: asyncpg.Connection,
    room_id: str,
    *,
    before_depth: int | None = None,
    before_ts: int | None = None,
) -> tuple[list[str], int]:
    """Delete the room's non-state events before a depth or a timestamp; returns the ids
    deleted and the number of older state events kept.

    What later events need stays: every state event (auth events and the
    entries of state groups are state events), the state groups, and the
    forward extremities.
    """
    condition = "depth < $2" if before_depth is not None else "origin_server_ts < $2"
    bound = before_depth if before_depth is not None else before_ts
    async with conn.transaction():
        await lock_room(conn, room_id)
        rows = await conn.fetch(
            "SELECT event_id FROM events.events e WHERE room_id = $1 AND state_key IS NULL"
            f" AND {condition} AND NOT EXISTS (SELECT 1 FROM events.forward_extremities f"
            " WHERE f.room_id = $1 AND f.event_id = e.event_id)",
            room_id,
            bound,
        )
        purged = [row["event_id"] for row in rows]
        kept = await conn.fetchval(
            "SELECT count(*) FROM events.events"
            f" WHERE room_id = $1 AND state_key IS NOT NULL AND {condition}",
            room_id,
            bound,
        )
        if purged:
            await _forget_events(conn, purged)
    return purged, int(kept)


async def purge_room(conn: asyncpg.Connection, room_id: str) -> list[str]:
    """Delete everything held of a room; returns the event ids deleted."""
    async with conn.transaction():
        await lock_room(conn, room_id)
        rows = await conn.fetch("SELECT event_id FROM events.events WHERE room_id = $1", room_id)
        purged = [row["event_id"] for row in rows]
        await _forget_events(conn, purged)
        await conn.execute(
            "DELETE FROM events.state_group_entries WHERE group_id IN"
            " (SELECT id FROM events.state_groups WHERE room_id = $1)",
            room_id,
        )
        for table in (
            "state_groups",
            "forward_extremities",
            "current_state",
            "ephemeral",
            "aliases",
            "published_rooms",
            "membership_out_of_band",
            "partial_state_events",
            "partial_state_rooms",
            "rooms",
        ):
            await conn.execute(f"DELETE FROM events.{table} WHERE room_id = $1", room_id)
    return purged


_CONSUMED_SQL = """
SELECT state_key FROM events.events
WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'invite' AND status = $3
  AND (pdu_json::jsonb #>> '{content,third_party_invite,signed,token}') = $2
ORDER BY nid
LIMIT 1
"""


async def token_consumed_by(conn: asyncpg.Connection, room_id: str, token: str) -> str | None:
    """The invitee of the accepted invite that already carries ``token``, if any."""
    return await conn.fetchval(_CONSUMED_SQL, room_id, token, int(Status.ACCEPTED))
