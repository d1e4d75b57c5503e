"""The sender service's tables (schema ``sender``, see ``migrations/``).

* ``ingest_cursor``: how far ingest has read the events service's stream;
* ``pdus``: each outbound event's JSON, once;
* ``pdu_queue`` / ``edu_queue``: what each destination still has to get; rows
  tagged with a ``txn_id`` make up the transaction in flight;
* ``destinations``: backoff, lease and the pending transaction per destination;
* ``replicas``: live sender replicas (heartbeats).

Leases and backoff use the database clock (``now()``) for expiry checks, so
replicas on machines with skewed clocks still agree on who holds what.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import asyncpg

from mxfed.clock import now_ms

log = logging.getLogger(__name__)

WAKE_CHANNEL = "mxfed_sender_wake"
LEAVE_LOCK_TIMEOUT = "5s"
RELEASE_TIMEOUT_SECONDS = 5.0
# NOTIFY payloads must stay below 8000 bytes; beyond this "*" means "rescan".
_MAX_NOTIFY_PAYLOAD = 7000


@dataclass(frozen=True)
class IngestItem:
    """One local event from the events stream and where it must go."""

    stream_position: int
    event_id: str
    room_id: str
    pdu_json: bytes
    destinations: Sequence[str]


@dataclass(frozen=True)
class QueuedEdu:
    destination: str
    edu_type: str
    content_json: bytes
    volatile: bool
    edu_key: str | None = None


@dataclass
class Transaction:
    """The transaction in flight to one destination, exactly as it is (re)sent."""

    destination: str
    txn_id: str
    origin_server_ts: int
    pdus: list[bytes] = field(default_factory=list)
    edus: list[tuple[str, bytes]] = field(default_factory=list)  # (edu_type, content_json)
    resumed: bool = False  # recorded earlier (a retry, possibly by another replica)
    positions: list[int] = field(default_factory=list)  # stream positions of the PDUs


@dataclass(frozen=True)
class Ingested:
    """What :meth:`SenderStorage.ingest_and_take` did."""

    added: int  # queue rows
    taken: dict[str, Taken]  # the transactions of ``take``
    given: dict[str, bool]  # destination -> whether its given transaction was recorded


# ``sender.ingest``'s own result rows (the others are next_transactions').
_INGEST_RESULTS = frozenset({"ingested", "given", "not_given"})


@dataclass(frozen=True)
class Backoff:
    """The destination is backed off until ``retry_until_ts`` (ms)."""

    retry_until_ts: int


class LeaseLost(Exception):
    """This replica no longer holds the destination's lease."""


# What taking a destination's next transaction gives (None: nothing queued).
Taken = Transaction | Backoff | LeaseLost | None


@dataclass(frozen=True)
class DestinationRow:
    destination: str
    pending_pdus: int
    pending_edus: int
    oldest_pending_ts: int
    last_success_ts: int
    retry_until_ts: int
    retry_interval_ms: int
    lease_owner: str | None
    pending_txn_id: str | None
    failures: int
    last_error: str | None


@dataclass(frozen=True)
class QueueStats:
    pending_pdus: int
    pending_edus: int
    destinations_pending: int
    destinations_backed_off: int
    top: list[tuple[str, int]]  # (destination, pending rows), largest first
    oldest_queued_ts: int = 0  # when the oldest queued PDU or EDU was queued (ms); 0: none


# Distinct destinations of both queues by skipping through their
# (destination, ...) indexes: one index probe per destination.
_DISTINCT_QUEUED_DESTINATIONS = """
WITH RECURSIVE
pq(d) AS (
    (SELECT destination FROM sender.pdu_queue ORDER BY destination LIMIT 1)
    UNION ALL
    SELECT (SELECT q.destination FROM sender.pdu_queue q WHERE q.destination > pq.d
            ORDER BY q.destination LIMIT 1)
      FROM pq WHERE pq.d IS NOT NULL
),
eq(d) AS (
    (SELECT destination FROM sender.edu_queue ORDER BY destination LIMIT 1)
    UNION ALL
    SELECT (SELECT e.destination FROM sender.edu_queue e WHERE e.destination > eq.d
            ORDER BY e.destination LIMIT 1)
      FROM eq WHERE eq.d IS NOT NULL
)
SELECT d FROM pq WHERE d IS NOT NULL
UNION
SELECT d FROM eq WHERE d IS NOT NULL
"""


def _replayable_commit(call: str) -> str:
    """``call`` (a ``SELECT * FROM`` one of the transaction functions) in a statement whose
    commit does not wait for the WAL flush, unless the call took queued EDUs into a new
    transaction.

    What these calls write can all be had again if a crash of the database server loses
    their commit: the events and their queue rows are read again from the events stream
    (the cursor, lost with them, goes back as far), a 200 not recorded leaves its
    transaction pending and resent under the same id (which the destination deduplicates,
    https://spec.matrix.org/v1.19/server-server-api/#transactions), a transaction taken
    or given but not recorded leaves its events queued for a later one (PDUs the
    destination already has are ignored by their event ids). EDUs are different: they were
    acknowledged to whoever queued them, and one sent under a transaction id that is then
    forgotten would be sent again under another, so their take is flushed before its
    transaction can leave. The flush saved is one per ingested batch and per recorded 200,
    each of which otherwise waits for the disk while the events service's own commits do.
    """
    return (
        f"WITH r AS MATERIALIZED ({call})"
        " SELECT r.* FROM r, (SELECT set_config('synchronous_commit', CASE WHEN EXISTS ("
        "   SELECT 1 FROM r WHERE r.r_result = 'ready' AND NOT r.r_resumed"
        "   AND cardinality(r.r_edu_types) > 0)"
        " THEN current_setting('synchronous_commit') ELSE 'off' END, true)) AS commit_mode"
    )


_INGEST = _replayable_commit(
    "SELECT * FROM sender.ingest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
    " $13, $14, $15, $16, $17, $18, $19, $20, $21)"
)
_NEXT_TRANSACTIONS = _replayable_commit(
    "SELECT * FROM sender.next_transactions($1, $2, $3, $4, $5, $6, $7)"
)


async def ping(connection: asyncpg.Connection) -> None:
    """One round trip: a connection that only LISTENs learns this way that it was lost."""
    await connection.fetchval("SELECT 1")


def wake_payloads(destinations: Iterable[str]) -> list[str]:
    """NOTIFY payloads naming ``destinations``; ``["*"]`` when they do not fit."""
    joined = "\n".join(sorted(set(destinations)))
    if not joined:
        return []
    return [joined] if len(joined) <= _MAX_NOTIFY_PAYLOAD else ["*"]


class SenderStorage:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # -- ingest ---------------------------------------------------------------

    @staticmethod
    async def read_cursor(connection: asyncpg.Connection) -> int:
        return int(await connection.fetchval("SELECT stream_position FROM sender.ingest_cursor"))

    @staticmethod
    async def ingest_batch(
        connection: asyncpg.Connection, items: Sequence[IngestItem], cursor: int
    ) -> int:
        """Store a batch of events and their queue rows and advance the cursor, atomically.

        Returns queue rows added. :meth:`ingest_and_take` without taking anything.
        """
        return (await SenderStorage.ingest_and_take(connection, items, cursor)).added

    @staticmethod
    async def ingest_and_take(
        connection: asyncpg.Connection,
        items: Sequence[IngestItem],
        cursor: int,
        take: Sequence[str] = (),
        *,
        completed: Sequence[tuple[str, str]] = (),
        instance_id: str = "",
        max_pdus: int = 0,
        max_edus: int = 0,
        quiet: Iterable[str] = (),
        given: Sequence[Transaction] = (),
    ) -> Ingested:
        """Store a batch, then record ``completed``, take the transactions of ``take``
        and record those ``given``.

        Runs on the connection that holds the ingest lock. The batch is
        stored atomically with the advanced cursor; replaying it after a
        crash inserts nothing twice (every insert is ON CONFLICT DO NOTHING
        and the cursor only moves forward). Then, in the same database
        transaction, exactly what :meth:`next_transactions` does for ``take``
        and ``completed``. ``given``: transactions of the batch's rows, made by
        the caller (ids of its own) and already on their way; each is recorded
        as its destination's pending one (its rows tagged with its id) when the
        lease is still ``instance_id``'s and nothing is pending there (after
        ``completed``), else left out (its rows stay queued). One round trip
        (``sender.ingest``, ``migrations/009``, its scans bounded by ``010``). The
        destinations queued for are notified at commit, but for ``quiet`` ones
        (whose worker is handed its result).
        """
        positions, event_ids, room_ids, pdu_jsons = [], [], [], []
        queue_destinations: list[str] = []
        queue_positions: list[int] = []
        for item in items:
            if not item.destinations:
                continue
            positions.append(item.stream_position)
            event_ids.append(item.event_id)
            room_ids.append(item.room_id)
            pdu_jsons.append(item.pdu_json)
            for destination in item.destinations:
                queue_destinations.append(destination)
                queue_positions.append(item.stream_position)
        handed = set(quiet)
        rows = await connection.fetch(
            _INGEST,
            positions,
            event_ids,
            room_ids,
            pdu_jsons,
            now_ms(),
            queue_destinations,
            queue_positions,
            cursor,
            WAKE_CHANNEL,
            wake_payloads(d for d in queue_destinations if d not in handed),
            list(dict.fromkeys(take)),
            [d for d, _ in completed],
            [t for _, t in completed],
            instance_id,
            max_pdus,
            max_edus,
            [txn.destination for txn in given],
            [txn.txn_id for txn in given],
            [txn.origin_server_ts for txn in given],
            [txn.destination for txn in given for _ in txn.positions],
            [position for txn in given for position in txn.positions],
        )
        added = next(int(row["r_position"]) for row in rows if row["r_result"] == "ingested")
        return Ingested(
            added,
            _transactions([row for row in rows if row["r_result"] not in _INGEST_RESULTS]),
            {
                row["r_destination"]: row["r_result"] == "given"
                for row in rows
                if row["r_result"] in ("given", "not_given")
            },
        )

    @staticmethod
    async def wake(connection: asyncpg.Connection, destinations: Iterable[str]) -> None:
        """Wake the replicas' workers of ``destinations`` (a NOTIFY naming them)."""
        for payload in wake_payloads(destinations):
            await connection.execute("SELECT pg_notify($1, $2)", WAKE_CHANNEL, payload)

    # -- EDUs -------------------------------------------------------------------

    async def queue_edus(self, edus: Sequence[QueuedEdu]) -> int:
        if not edus:
            return 0
        now = now_ms()
        async with self.pool.acquire() as connection, connection.transaction():
            keyed = [(e.destination, e.edu_key) for e in edus if e.edu_key]
            if keyed:
                # A newer keyed EDU replaces the unsent older one (not one in flight).
                await connection.execute(
                    "DELETE FROM sender.edu_queue q USING unnest($1::text[], $2::text[])"
                    " AS t(d, k) WHERE q.destination = t.d AND q.edu_key = t.k"
                    " AND q.txn_id IS NULL",
                    [d for d, _ in keyed],
                    [k for _, k in keyed],
                )
            await connection.execute(
                "INSERT INTO sender.destinations (destination)"
                " SELECT DISTINCT d FROM unnest($1::text[]) AS t(d) ORDER BY d"
                " ON CONFLICT DO NOTHING",
                [e.destination for e in edus],
            )
            await connection.executemany(
                "INSERT INTO sender.edu_queue (destination, edu_type, content_json, volatile,"
                " edu_key, queued_ts) VALUES ($1, $2, $3, $4, $5, $6)",
                [
                    (e.destination, e.edu_type, e.content_json, e.volatile, e.edu_key, now)
                    for e in edus
                ],
            )
            await self.wake(connection, (e.destination for e in edus))
        return len(edus)

    # -- replicas and leases --------------------------------------------------

    async def heartbeat(self, instance_id: str, live_within: float) -> list[str]:
        """Record that this replica is alive; return the live replicas, sorted."""
        async with self.pool.acquire() as connection:
            await connection.execute(
                "INSERT INTO sender.replicas (instance_id, heartbeat_at) VALUES ($1, now())"
                " ON CONFLICT (instance_id) DO UPDATE SET heartbeat_at = now()",
                instance_id,
            )
            rows = await connection.fetch(
                "SELECT instance_id FROM sender.replicas"
                " WHERE heartbeat_at > now() - make_interval(secs => $1) ORDER BY instance_id",
                live_within,
            )
            await connection.execute(
                "DELETE FROM sender.replicas WHERE heartbeat_at < now() - interval '10 minutes'"
            )
        return [row["instance_id"] for row in rows]

    async def take_over(self, instance_id: str, name: str) -> int:
        """This replica starts under ``name``: the leases of earlier replicas of that name
        (a restart: the process before this one, which may have died without a clean
        stop) are given back at once and their replica rows removed; returns how many.

        The earlier process, should it still run, finds its leases lost at its next
        transaction (the lease check is by ``instance_id``) and stops sending.
        """
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute(f"SET LOCAL lock_timeout = '{LEAVE_LOCK_TIMEOUT}'")
            await connection.execute(
                "INSERT INTO sender.replicas (instance_id, heartbeat_at, name)"
                " VALUES ($1, now(), $2)"
                " ON CONFLICT (instance_id) DO UPDATE SET heartbeat_at = now(), name = $2",
                instance_id,
                name,
            )
            earlier = [
                row["instance_id"]
                for row in await connection.fetch(
                    "SELECT instance_id FROM sender.replicas WHERE name = $1 AND instance_id <> $2",
                    name,
                    instance_id,
                )
            ]
            if not earlier:
                return 0
            released = await connection.fetchval(
                "WITH theirs AS (SELECT destination FROM sender.destinations"
                "  WHERE lease_owner = ANY($1::text[]) ORDER BY destination FOR UPDATE),"
                " freed AS (UPDATE sender.destinations d"
                "  SET lease_owner = NULL, lease_expires_at = NULL"
                "  FROM theirs WHERE d.destination = theirs.destination RETURNING 1)"
                " SELECT count(*) FROM freed",
                earlier,
            )
            await connection.execute(
                "DELETE FROM sender.replicas WHERE instance_id = ANY($1::text[])", earlier
            )
        return int(released)

    async def leave(self, instance_id: str) -> None:
        """A clean stop: give every lease back and leave the replica list.

        Bounded by a lock timeout: a stop must never hang behind a row lock;
        leases that could not be given back simply expire.
        """
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                await connection.execute(f"SET LOCAL lock_timeout = '{LEAVE_LOCK_TIMEOUT}'")
                await connection.execute(
                    "WITH mine AS (SELECT destination FROM sender.destinations"
                    "  WHERE lease_owner = $1 ORDER BY destination FOR UPDATE)"
                    " UPDATE sender.destinations d SET lease_owner = NULL, lease_expires_at = NULL"
                    " FROM mine WHERE d.destination = mine.destination",
                    instance_id,
                )
                await connection.execute(
                    "DELETE FROM sender.replicas WHERE instance_id = $1", instance_id
                )
        except asyncpg.LockNotAvailableError:
            log.warning(
                "leases not given back on stop; they will expire", extra={"instance": instance_id}
            )

    async def claim(
        self, instance_id: str, destinations: Sequence[str], lease_seconds: float
    ) -> list[str]:
        """Take the leases of those ``destinations`` that are free or expired.

        Rows locked by another claimer right now are skipped, not waited for.
        """
        rows = await self.pool.fetch(
            "WITH free AS ("
            "  SELECT destination FROM sender.destinations"
            "  WHERE destination = ANY($1::text[])"
            "    AND (lease_owner IS NULL OR lease_owner = $2 OR lease_expires_at < now())"
            "  ORDER BY destination FOR UPDATE SKIP LOCKED)"
            " UPDATE sender.destinations d SET lease_owner = $2,"
            "  lease_expires_at = now() + make_interval(secs => $3)"
            " FROM free WHERE d.destination = free.destination RETURNING d.destination",
            list(destinations),
            instance_id,
            lease_seconds,
        )
        return [row["destination"] for row in rows]

    async def renew(
        self, instance_id: str, lease_seconds: float, destinations: Sequence[str]
    ) -> set[str]:
        """Extend the leases of ``destinations`` this replica still holds; return those.

        Only those the replica means to keep: a lease it gave up but could not give back
        (a release that failed) is left to expire, not renewed for as long as it lives."""
        # Rows are locked in destination order, as next_transactions locks
        # them, so a renewal and a batch of transactions never deadlock.
        rows = await self.pool.fetch(
            "WITH mine AS (SELECT destination FROM sender.destinations"
            "  WHERE destination = ANY($3::text[])"
            "    AND lease_owner = $1 AND lease_expires_at > now()"
            "  ORDER BY destination FOR UPDATE)"
            " UPDATE sender.destinations d"
            " SET lease_expires_at = now() + make_interval(secs => $2)"
            " FROM mine WHERE d.destination = mine.destination RETURNING d.destination",
            instance_id,
            lease_seconds,
            list(destinations),
        )
        return {row["destination"] for row in rows}

    async def release(self, instance_id: str, destination: str) -> None:
        await self.pool.execute(
            "UPDATE sender.destinations SET lease_owner = NULL, lease_expires_at = NULL"
            " WHERE destination = $1 AND lease_owner = $2",
            destination,
            instance_id,
        )

    async def release_many(self, instance_id: str, destinations: Sequence[str]) -> None:
        """Give back this replica's leases of ``destinations`` (rows locked in order).

        Bounded in time like :meth:`leave`: a lease that could not be given
        back expires by itself, so a stopping worker never waits on a lock.
        """
        await self.pool.execute(
            "WITH mine AS (SELECT destination FROM sender.destinations"
            "  WHERE destination = ANY($1::text[]) AND lease_owner = $2"
            "  ORDER BY destination FOR UPDATE)"
            " UPDATE sender.destinations d SET lease_owner = NULL, lease_expires_at = NULL"
            " FROM mine WHERE d.destination = mine.destination",
            list(destinations),
            instance_id,
            timeout=RELEASE_TIMEOUT_SECONDS,
        )

    async def destinations_with_work(self) -> list[str]:
        """Destinations with queued PDUs or EDUs (whatever their backoff).

        Runs every few seconds on every replica, so it reads one index entry
        per such destination (a skip scan of the queues' destination-first
        indexes), not every destination or every queued row.
        """
        rows = await self.pool.fetch(_DISTINCT_QUEUED_DESTINATIONS)
        return [row["d"] for row in rows]

    # -- transactions ---------------------------------------------------------

    async def next_transaction(
        self,
        destination: str,
        instance_id: str,
        *,
        max_pdus: int,
        max_edus: int,
    ) -> Transaction | Backoff | None:
        """The transaction to send to ``destination`` now, recorded before it is sent.

        The pending one if there is one (same id, same contents), else a new
        one made of the oldest queued rows. ``Backoff`` while backed off,
        ``None`` when nothing is queued. The lease is checked under the row
        lock in the same database transaction, so a replica that lost the
        lease cannot start a transaction: :class:`LeaseLost`. One destination's
        share of :meth:`next_transactions`.
        """
        result = (
            await self.next_transactions(
                [destination], [], instance_id, max_pdus=max_pdus, max_edus=max_edus
            )
        )[destination]
        if isinstance(result, LeaseLost):
            raise result
        return result

    async def next_transactions(
        self,
        destinations: Sequence[str],
        completed: Sequence[tuple[str, str]],
        instance_id: str,
        *,
        max_pdus: int,
        max_edus: int,
    ) -> dict[str, Taken]:
        """Record many 200s and take the next transaction of many destinations.

        ``completed``: (destination, txn id) pairs whose transaction was
        answered with 200 — their rows are deleted and their backoff reset
        (as :meth:`complete_transaction`), before the next transactions of
        ``destinations`` are taken (as :meth:`next_transaction`; a lost
        lease comes back as a :class:`LeaseLost` value). One round trip
        (``sender.next_transactions``, ``migrations/003``) whatever the
        number of destinations; each PDU's JSON travels once, shared by the
        transactions that carry it. Every scan in it is bounded by the call's own
        destinations, whatever the plan (``migrations/010``): a down server's backlog or
        the many servers known cost a call nothing.
        """
        async with self.pool.acquire() as connection:
            return await self.next_transactions_on(
                connection,
                destinations,
                completed,
                instance_id,
                max_pdus=max_pdus,
                max_edus=max_edus,
            )

    @staticmethod
    async def next_transactions_on(
        connection: asyncpg.Connection,
        destinations: Sequence[str],
        completed: Sequence[tuple[str, str]],
        instance_id: str,
        *,
        max_pdus: int,
        max_edus: int,
    ) -> dict[str, Taken]:
        """:meth:`next_transactions` on ``connection``."""
        wanted = list(dict.fromkeys(destinations))
        rows = await connection.fetch(
            _NEXT_TRANSACTIONS,
            wanted,
            [d for d, _ in completed],
            [t for _, t in completed],
            instance_id,
            max_pdus,
            max_edus,
            now_ms(),
        )
        return _transactions(rows)

    async def complete_transaction(self, destination: str, txn_id: str) -> None:
        """The destination answered 200: forget what it got, reset its backoff."""
        await self.next_transactions([], [(destination, txn_id)], "", max_pdus=0, max_edus=0)

    async def drop_transaction(self, destination: str, txn_id: str, error: str) -> None:
        """The destination refused the transaction outright: drop its contents."""
        async with self.pool.acquire() as connection, connection.transaction():
            await self._forget_transaction(connection, destination, txn_id)
            await connection.execute(
                "UPDATE sender.destinations SET last_error = $2 WHERE destination = $1",
                destination,
                error[:500],
            )

    @staticmethod
    async def _forget_transaction(
        connection: asyncpg.Connection, destination: str, txn_id: str
    ) -> None:
        await connection.execute(
            "DELETE FROM sender.pdu_queue WHERE destination = $1 AND txn_id = $2",
            destination,
            txn_id,
        )
        await connection.execute(
            "DELETE FROM sender.edu_queue WHERE destination = $1 AND txn_id = $2",
            destination,
            txn_id,
        )
        await connection.execute(
            "UPDATE sender.destinations SET pending_txn_id = NULL, pending_txn_ts = NULL"
            " WHERE destination = $1 AND pending_txn_id = $2",
            destination,
            txn_id,
        )

    async def record_failure(
        self, destination: str, retry_until_ts: int, retry_interval_ms: int, error: str
    ) -> None:
        await self.pool.execute(
            "UPDATE sender.destinations SET retry_until_ts = $2, retry_interval_ms = $3,"
            " failures = failures + 1, last_error = $4 WHERE destination = $1",
            destination,
            retry_until_ts,
            retry_interval_ms,
            error[:500],
        )

    async def record_transaction_failure(
        self,
        destination: str,
        *,
        min_interval_ms: int,
        max_interval_ms: int,
        growth: float,
        asked_wait_ms: int | None,
        error: str,
        backlog_cap: int,
    ) -> tuple[int, int, int]:
        """A transaction failed: back off; returns (wait ms, interval ms, unsent PDUs).

        The next interval follows ``BackoffPolicy.next_interval`` (``min`` on the
        first failure, else the current one times ``growth``, within bounds).
        When the remote asked for a wait (429), that wait is honoured (up to
        the maximum) and the interval is not escalated. Unsent PDUs are
        counted up to ``backlog_cap + 1``. One round trip: every unreachable
        destination comes through here after each retry.
        """
        row = await self.pool.fetchrow(
            "WITH cur AS (SELECT destination, retry_interval_ms AS ms FROM sender.destinations"
            "  WHERE destination = $1 FOR UPDATE),"
            " new AS (SELECT destination, CASE"
            "   WHEN $6::bigint IS NOT NULL THEN (CASE WHEN ms > 0 THEN ms ELSE $3 END)"
            "   WHEN ms <= 0 THEN $3"
            "   ELSE least(greatest((ms * $5::float8)::bigint, $3), $4) END AS interval"
            "  FROM cur)"
            " UPDATE sender.destinations d SET retry_interval_ms = new.interval,"
            "  retry_until_ts = $2 + CASE WHEN $6::bigint IS NULL THEN new.interval"
            "   ELSE least(greatest($6::bigint, 0), $4) END,"
            "  failures = d.failures + 1, last_error = $7"
            " FROM new WHERE d.destination = new.destination"
            " RETURNING d.retry_until_ts - $2 AS wait, new.interval,"
            "  (SELECT count(*) FROM (SELECT 1 FROM sender.pdu_queue q WHERE q.destination = $1"
            "   AND q.txn_id IS NULL LIMIT $8 + 1) AS t) AS backlog",
            destination,
            now_ms(),
            min_interval_ms,
            max_interval_ms,
            growth,
            asked_wait_ms,
            error[:500],
            backlog_cap,
        )
        if row is None:
            return 0, 0, 0
        return int(row["wait"]), int(row["interval"]), int(row["backlog"])

    async def backoff_state(self, destination: str) -> tuple[int, int]:
        """(retry_until_ts, retry_interval_ms) of ``destination``."""
        row = await self.pool.fetchrow(
            "SELECT retry_until_ts, retry_interval_ms FROM sender.destinations"
            " WHERE destination = $1",
            destination,
        )
        return (row["retry_until_ts"], row["retry_interval_ms"]) if row else (0, 0)

    async def reset_backoff(self, destination: str) -> bool:
        """Clear the destination's backoff and wake its queue; was it backed off?"""
        async with self.pool.acquire() as connection, connection.transaction():
            status = await connection.execute(
                "UPDATE sender.destinations SET retry_until_ts = 0, retry_interval_ms = 0,"
                " failures = 0 WHERE destination = $1"
                " AND (retry_until_ts > 0 OR retry_interval_ms > 0)",
                destination,
            )
            if status == "UPDATE 0":
                return False
            await self.wake(connection, [destination])
        return True

    # -- catch-up and housekeeping -------------------------------------------

    async def backlog(self, destination: str, cap: int) -> int:
        """Unsent PDUs queued for ``destination``, counted up to ``cap + 1``."""
        return int(
            await self.pool.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM sender.pdu_queue WHERE destination = $1"
                " AND txn_id IS NULL LIMIT $2) AS t",
                destination,
                cap + 1,
            )
        )

    async def prune_for_catch_up(self, destination: str, per_room: int) -> tuple[int, int]:
        """Keep the newest ``per_room`` unsent PDUs per room; drop volatile EDUs.

        Rows in the transaction in flight are kept (it must be resent as it
        was). Returns (PDUs dropped, EDUs dropped).
        """
        async with self.pool.acquire() as connection, connection.transaction():
            pdus = await connection.execute(
                "DELETE FROM sender.pdu_queue q USING ("
                "  SELECT q2.stream_position, row_number() OVER ("
                "   PARTITION BY p.room_id ORDER BY q2.stream_position DESC) AS rank"
                "  FROM sender.pdu_queue q2 JOIN sender.pdus p USING (stream_position)"
                "  WHERE q2.destination = $1 AND q2.txn_id IS NULL) AS r"
                " WHERE q.destination = $1 AND q.stream_position = r.stream_position"
                " AND r.rank > $2",
                destination,
                per_room,
            )
            edus = await connection.execute(
                "DELETE FROM sender.edu_queue WHERE destination = $1 AND volatile"
                " AND txn_id IS NULL",
                destination,
            )
        return int(pdus.rsplit(" ", 1)[1]), int(edus.rsplit(" ", 1)[1])

    async def backed_off_over(self, cap: int, long_interval_ms: int) -> list[str]:
        """Backed-off destinations whose outage calls for catch-up pruning."""
        rows = await self.pool.fetch(
            "SELECT d.destination FROM sender.destinations d WHERE d.retry_interval_ms > 0"
            " AND (d.retry_interval_ms >= $2 OR (SELECT count(*) FROM (SELECT 1"
            "  FROM sender.pdu_queue q WHERE q.destination = d.destination"
            "  AND q.txn_id IS NULL LIMIT $1 + 1) AS t) > $1)",
            cap,
            long_interval_ms,
        )
        return [row["destination"] for row in rows]

    async def expire_typing(self, max_age_ms: int) -> int:
        """Unsent typing notifications older than a typing timeout are pointless."""
        status = await self.pool.execute(
            "DELETE FROM sender.edu_queue WHERE edu_type = 'm.typing' AND txn_id IS NULL"
            " AND queued_ts < $1",
            now_ms() - max_age_ms,
        )
        return int(status.rsplit(" ", 1)[1])

    async def collect_garbage(self, *, full: bool = True) -> int:
        """Drop stored events that no destination still needs.

        Events older than the oldest queued row are unneeded: deleted by
        primary-key range, cheap. ``full`` also checks the events after it one
        by one (each an index probe of the queue), which a long-lived old row
        (a destination down for long) makes a scan of most stored events.
        """
        async with self.pool.acquire() as connection:
            status = await connection.execute(
                "DELETE FROM sender.pdus p WHERE p.stream_position < coalesce("
                " (SELECT min(q.stream_position) FROM sender.pdu_queue q),"
                " (SELECT max(i.stream_position) + 1 FROM sender.ingest_cursor i))"
            )
            dropped = int(status.rsplit(" ", 1)[1])
            if full:
                status = await connection.execute(
                    "DELETE FROM sender.pdus p WHERE NOT EXISTS ("
                    " SELECT 1 FROM sender.pdu_queue q"
                    " WHERE q.stream_position = p.stream_position)"
                )
                dropped += int(status.rsplit(" ", 1)[1])
        return dropped

    # -- inspection -----------------------------------------------------------

    async def query_destinations(
        self, destinations: Sequence[str], include_idle: bool, limit: int
    ) -> list[DestinationRow]:
        rows = await self.pool.fetch(
            "WITH pq AS (SELECT q.destination, count(*) AS n, min(p.queued_ts) AS oldest"
            "   FROM sender.pdu_queue q JOIN sender.pdus p USING (stream_position)"
            "   GROUP BY q.destination),"
            " eq AS (SELECT destination, count(*) AS n, min(queued_ts) AS oldest"
            "   FROM sender.edu_queue GROUP BY destination)"
            " SELECT d.*, coalesce(pq.n, 0) AS pending_pdus, coalesce(eq.n, 0) AS pending_edus,"
            "  least(pq.oldest, eq.oldest) AS oldest"
            " FROM sender.destinations d LEFT JOIN pq USING (destination)"
            " LEFT JOIN eq USING (destination)"
            " WHERE (cardinality($1::text[]) = 0 OR d.destination = ANY($1::text[]))"
            "  AND ($2 OR cardinality($1::text[]) > 0 OR pq.n > 0 OR eq.n > 0"
            "   OR d.retry_until_ts > 0 OR d.lease_owner IS NOT NULL)"
            " ORDER BY coalesce(pq.n, 0) + coalesce(eq.n, 0) DESC, d.destination LIMIT $3",
            list(destinations),
            include_idle,
            limit,
        )
        return [
            DestinationRow(
                destination=r["destination"],
                pending_pdus=r["pending_pdus"],
                pending_edus=r["pending_edus"],
                oldest_pending_ts=r["oldest"] or 0,
                last_success_ts=r["last_success_ts"],
                retry_until_ts=r["retry_until_ts"],
                retry_interval_ms=r["retry_interval_ms"],
                lease_owner=r["lease_owner"],
                pending_txn_id=r["pending_txn_id"],
                failures=r["failures"],
                last_error=r["last_error"],
            )
            for r in rows
        ]

    async def live_replicas(self, live_within: float) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT instance_id FROM sender.replicas"
            " WHERE heartbeat_at > now() - make_interval(secs => $1) ORDER BY instance_id",
            live_within,
        )
        return [row["instance_id"] for row in rows]

    async def stats(self, top_n: int, *, with_top: bool = True) -> QueueStats:
        """Queue totals for the metrics.

        Row totals are counts over the queues (a sequential scan each);
        destinations pending come from the indexes
        (:meth:`destinations_with_work`); the longest queues need a count per
        destination, a grouping over every queued row, so only ``with_top``.
        """
        async with self.pool.acquire() as connection:
            totals = await connection.fetchrow(
                "SELECT (SELECT count(*) FROM sender.pdu_queue) AS pdus,"
                " (SELECT count(*) FROM sender.edu_queue) AS edus,"
                # The oldest queued PDU is the lowest stream position (an index probe).
                " (SELECT p.queued_ts FROM sender.pdus p WHERE p.stream_position ="
                "   (SELECT min(stream_position) FROM sender.pdu_queue)) AS oldest_pdu,"
                " (SELECT min(queued_ts) FROM sender.edu_queue) AS oldest_edu,"
                " (SELECT count(*) FROM sender.destinations WHERE retry_interval_ms > 0"
                "   AND retry_until_ts > $1) AS backed_off",
                now_ms(),
            )
            pending = await connection.fetch(_DISTINCT_QUEUED_DESTINATIONS)
            top = []
            if with_top:
                top = await connection.fetch(
                    "SELECT destination, count(*) AS n FROM ("
                    " SELECT destination FROM sender.pdu_queue"
                    " UNION ALL SELECT destination FROM sender.edu_queue) AS t"
                    " GROUP BY destination ORDER BY n DESC, destination LIMIT $1",
                    top_n,
                )
        return QueueStats(
            pending_pdus=totals["pdus"],
            pending_edus=totals["edus"],
            destinations_pending=len(pending),
            destinations_backed_off=totals["backed_off"],
            top=[(r["destination"], r["n"]) for r in top],
            oldest_queued_ts=min(
                (ts for ts in (totals["oldest_pdu"], totals["oldest_edu"]) if ts), default=0
            ),
        )


def _transactions(rows: Sequence[asyncpg.Record]) -> dict[str, Taken]:
    """The results of ``sender.next_transactions`` rows, per destination."""
    pdus = {row["r_position"]: row["r_pdu_json"] for row in rows if row["r_result"] == "pdu"}
    results: dict[str, Taken] = {}
    for row in rows:
        result, destination = row["r_result"], row["r_destination"]
        if result == "pdu":
            continue
        if result == "lease_lost":
            results[destination] = LeaseLost(destination)
        elif result == "backoff":
            results[destination] = Backoff(row["r_retry_until"])
        elif result == "empty":
            results[destination] = None
        else:
            results[destination] = Transaction(
                destination=destination,
                txn_id=row["r_txn"],
                origin_server_ts=row["r_txn_ts"],
                # (as a join would: a stored event that went missing is
                # not sent, rather than failing every destination's batch)
                pdus=[pdus[p] for p in row["r_positions"] if p in pdus],
                positions=[p for p in row["r_positions"] if p in pdus],
                edus=list(zip(row["r_edu_types"], row["r_edu_contents"], strict=True)),
                resumed=row["r_resumed"],
            )
    return results
