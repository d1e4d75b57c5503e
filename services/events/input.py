"""The receive pipeline: /send transactions and fetched PDU batches.

Spec: https://spec.matrix.org/v1.19/server-server-api/#checks-performed-on-receipt-of-a-pdu
(in order), https://spec.matrix.org/v1.19/server-server-api/#transactions
(idempotency on (origin, txn_id), always a per-PDU answer),
#typing-notifications and #receipts of that page.

Per transaction: parse; PDUs of rooms we do not know are ignored with no
entry (as Synapse does); steps 1–3 (:mod:`services.events.pdu_checks`:
format → drop; signatures, all PDUs in ONE ``VerifyJsonSignatures`` call →
drop; content hash mismatch → continue with the redacted copy); the sender's
server must be the origin and the room's server ACL must allow it (/send
only). Then, per room and before its lock, the deepest PDU whose prev_events
are neither stored nor in the transaction has its gap filled by the backfill
service (https://spec.matrix.org/v1.19/server-server-api/#backfilling-and-retrieving-missing-events;
a PDU whose prevs stay unknown is refused). Then
in a room whose current state names a policy server, events without its
valid signature get one asked for (:mod:`services.events.policy`). Then
each room's PDUs go, in the order given, through a :class:`RoomBatch` for steps
4–7: the rooms one after another in one database transaction, or, should that
fail, each in its own (:meth:`InputPipeline._input_rooms`).

Fetched batches (``InputPdus``) go through the same checks and into the
room's batch as their :class:`InputKind` says.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc

from matrix_protocol.canonical_json import decode_json, encode_json
from matrix_protocol.pdu_format import MAX_ID_BYTES
from matrix_protocol.policy_servers import POLICY_STATE_KEY
from matrix_protocol.room_versions import UnsupportedRoomVersion, room_version
from matrix_protocol.server_acl import SERVER_ACL_EVENT_TYPE, server_allowed
from matrix_protocol.server_names import is_valid_user_id
from matrix_protocol.transactions import MAX_EDUS, MAX_PDUS
from mxfed.clock import now_ms
from mxfed.held_connection import (
    CONNECTION_ERRORS,
    DatabaseUnavailable,
    HeldConnection,
    is_connection_error,
)
from mxfed.service_errors import BadRequest
from mxfed_api.backfill.v1 import backfill_pb2, backfill_pb2_grpc
from mxfed_api.keys.v1 import keys_pb2_grpc
from services.events import metrics, storage
from services.events.admin.blocks import BLOCKED_ROOMS
from services.events.cache import LruCache
from services.events.outcomes import Outcome, Reason
from services.events.pdu_checks import (
    CheckedPdu,
    Stage,
    check_fetched,
    check_format,
    check_signatures_and_hashes,
    untimed,
)
from services.events.policy import PolicyServers
from services.events.reads import server_acl_allows
from services.events.room_batch import AtCommit, RoomBatch, RoomsCore, auth_order
from services.events.storage import Status

log = logging.getLogger(__name__)

TYPING_TIMEOUT_MS = 60_000
# Seconds a /send transaction waits for the missing events of one room.
GAP_FILL_TIMEOUT = 60.0
# Seconds a /send transaction waits for a join in progress of a room it has
# PDUs of (a join's make_join, send_join and store take a few seconds at most
# in a big room), and how often it looks whether the join has ended.
JOIN_WAIT = 30.0
JOIN_POLL = 0.05


class InvalidTransaction(BadRequest):
    """The transaction itself is malformed (too many PDUs/EDUs)."""

    errcode = "M_BAD_JSON"


class UnsupportedInputVersion(BadRequest):
    """PDUs given for a room version this server does not implement."""

    errcode = "M_UNSUPPORTED_ROOM_VERSION"


class InputKind(enum.Enum):
    """How fetched PDUs enter their room (``InputPdus``; /send is always NEW)."""

    # Live events: full checks including soft failure.
    NEW = "new"
    # Events pulled in to connect a live event (get_missing_events): live too
    # (soft-fail checked, streamed), no 20/10 prev/auth limits, a forward
    # extremity only if nothing stored builds on it; the state before those
    # whose prevs stay missing may be given.
    GAP_FILL = "gap_fill"
    # History older than what we hold: oldest first, no soft failure, no
    # stream positions, no effect on extremities or current state.
    BACKFILL = "backfill"
    # Auth chains and state: checked against their own auth events only.
    OUTLIER = "outlier"

    @property
    def is_history(self) -> bool:
        """Fetched history, exempt from the 20 prev / 10 auth events limits."""
        return self in (InputKind.GAP_FILL, InputKind.BACKFILL)


@dataclass
class StageClock:
    """Seconds spent per stage (for metrics and the benchmark)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @asynccontextmanager
    async def stage(self, name: str) -> AsyncIterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.seconds[name] += elapsed
            metrics.STAGE_SECONDS.labels(name).observe(elapsed)


class TransactionGuard:
    """At most one processing of a given (origin, txn_id) at a time, on every replica.

    Same replica: an asyncio lock per key. Other replicas: a session advisory
    lock on one dedicated connection, polled with ``pg_try_advisory_lock`` so
    that connection never blocks (a replica that dies drops its locks). When
    that connection is lost its locks go with the session; a new connection
    takes back those still in use where no other replica has taken them
    meanwhile, and a lock of a lost session is never "unlocked" on the new
    one (:class:`~mxfed.held_connection.HeldConnection` generations).
    """

    # Seconds a transaction waits for the guard's connection before failing
    # (UNAVAILABLE: the database is away; the remote gets 503 and retries).
    CONNECT_WAIT = 2.0

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._local: dict[tuple[str, str], asyncio.Lock] = {}
        self._users: dict[tuple[str, str], int] = defaultdict(int)
        # Advisory lock key -> generation of the connection that holds it.
        self._held: dict[int, int] = {}
        self._conn = HeldConnection.from_pool(
            pool, "events.transaction_guard", on_open=self._take_back
        )
        self._conn_lock = asyncio.Lock()

    async def _take_back(self, connection: asyncpg.Connection) -> None:
        for key in list(self._held):
            if await storage.try_session_lock_key(connection, key):
                self._held[key] = self._conn.generation
            else:
                log.warning("a transaction's guard lock was taken by another replica meanwhile")

    async def _query(self, statement: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
        async with self._conn_lock:
            for attempt in (1, 2):
                try:
                    async with asyncio.timeout(self.CONNECT_WAIT):
                        await self._conn.connection()
                except TimeoutError:
                    raise DatabaseUnavailable("no connection for the guard") from None
                try:
                    return await self._conn.run(statement)
                except Exception as exc:
                    # Lost in the middle: once more, on a new connection.
                    if attempt == 2 or not is_connection_error(exc):
                        raise
            raise AssertionError("unreachable")

    async def _try_lock(self, key: int, origin: str, txn_id: str) -> tuple[bool, str | None]:
        """One ``pg_try_advisory_lock``, recorded when taken, and the response stored
        for the transaction by then (:func:`storage.try_transaction_lock`).

        A holder cancelled while the query is out (its caller gave up, say) may
        have taken the lock by the time the answer comes: that lock is given back
        before the cancellation goes on. Left to the session, it would refuse
        this transaction on every replica for as long as this one runs."""
        attempt = asyncio.ensure_future(
            self._query(
                lambda connection: storage.try_transaction_lock(connection, key, origin, txn_id)
            )
        )
        try:
            taken, stored = await asyncio.shield(attempt)
        except asyncio.CancelledError:
            await asyncio.shield(self._give_back(attempt, key))
            raise
        except Exception as error:
            # The statement may have taken the lock before it failed in its read: given
            # back, as the session would keep it otherwise (a connection error ends the
            # session, and its locks with it).
            if not is_connection_error(error):
                self._held[key] = self._conn.generation
                await self._unlock(key)
            raise
        if taken:
            self._held[key] = self._conn.generation
        return taken, stored

    async def _give_back(self, attempt: asyncio.Future[tuple[bool, str | None]], key: int) -> None:
        try:
            taken, _ = await attempt
        except Exception:
            return  # no answer: the session that may hold it is gone, or the query failed
        if taken:
            self._held[key] = self._conn.generation
            await self._unlock(key)

    async def _unlock(self, key: int) -> None:
        generation = self._held.pop(key, None)
        if generation != self._conn.generation or not self._conn.alive:
            return  # held by a session that is gone: nothing to unlock
        async with self._conn_lock:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self._conn.run(lambda connection: storage.session_unlock_key(connection, key))

    @asynccontextmanager
    async def hold(
        self, origin: str, txn_id: str, stage: Stage = untimed
    ) -> AsyncIterator[str | None]:
        """Hold the transaction's lock, giving the response stored for it once taken (a
        retry's; None for a new transaction); ``stage`` times taking and giving it back."""
        name = (origin, txn_id)
        lock = self._local.setdefault(name, asyncio.Lock())
        self._users[name] += 1
        try:
            async with lock:
                key = storage.lock_key(f"txn:{origin}\x00{txn_id}")
                # Another replica holds it only while it processes the same
                # transaction; poll rather than block the shared connection.
                async with stage("transaction_guard"):
                    taken, stored = await self._try_lock(key, origin, txn_id)
                    while not taken:
                        await asyncio.sleep(0.05)
                        taken, stored = await self._try_lock(key, origin, txn_id)
                try:
                    yield stored
                finally:
                    async with stage("transaction_guard"):
                        # Shielded: a cancellation must not leave the unlock unsent.
                        await asyncio.shield(self._unlock(key))
        finally:
            self._users[name] -= 1
            if not self._users[name]:
                del self._users[name]
                self._local.pop(name, None)

    async def close(self) -> None:
        await self._conn.close()


# Rooms whose version a /send's parse knows without a query.
ROOM_VERSIONS = 10_000


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Its exception retrieved: nobody awaits a task whose caller failed first."""
    if not task.cancelled():
        task.exception()


@dataclass
class _Lookups:
    """What :meth:`InputPipeline._lookups` found for a /send's rooms."""

    denied_rooms: set[str]
    in_dag: set[str]
    partial_rooms: list[str]
    # Rooms naming a policy server (:func:`policy.rooms_naming_one`).
    policy_rooms: set[str]


@dataclass
class _ResponseWithRooms:
    """A /send's response, stored in its rooms' own database transaction when one holds
    them all and each streams events: stored if and only if they are, durable with them
    (the commit that gives their positions, or the round after it, flushes it), in the
    statement that gives those positions (:class:`AtCommit`): no statement, connection or
    commit of its own after theirs. ``known``: the answers decided before
    the rooms (PDUs refused for their format, signatures, origin, ACLs)."""

    origin: str
    txn_id: str
    known: dict[str, dict[str, str]]
    # Given to the rooms' transaction; what it stored once committed.
    at_commit: AtCommit = field(default_factory=AtCommit)

    @property
    def stored(self) -> str | None:
        """The response as stored with the rooms (None: not stored with them)."""
        return self.at_commit.stored

    def prepare(
        self, batches: Collection[RoomBatch], outcomes: Sequence[Sequence[Outcome]]
    ) -> None:
        """In the rooms' transaction, their events written: the response for it to store
        with their positions (:class:`AtCommit`), unless a room streams nothing (its commit
        is not flushed then: the response is stored after it, with a flush of its own)."""
        if not batches or not all(batch.streams for batch in batches):
            return
        results = dict(self.known)
        for room_outcomes in outcomes:
            for outcome in room_outcomes:
                results[outcome.event_id] = _answer(outcome)
        response = encode_json({"pdus": results}).decode()
        self.at_commit.response = storage.TransactionResponse(
            self.origin, self.txn_id, response, now_ms()
        )


class InputPipeline:
    def __init__(
        self,
        pool: asyncpg.Pool,
        core: RoomsCore,
        keys: keys_pb2_grpc.KeysStub,
        clock: StageClock | None = None,
        backfill: backfill_pb2_grpc.BackfillStub | None = None,
        policy: PolicyServers | None = None,
    ) -> None:
        self.pool = pool
        self.core = core
        self.keys = keys
        # Asks rooms' policy servers for the signatures received events lack;
        # None: never asks (the batch still soft-fails unsigned events).
        self.policy = policy
        # Gap filling for /send (PerformFetchMissingEvents); None: no gap filling.
        self.backfill = backfill
        self.clock = clock or StageClock()
        self.guard = TransactionGuard(pool)
        # Room id → room version, which never changes: a /send's PDUs are parsed without
        # a query once their rooms are known. Keyed by rooms we hold, so bounded by them.
        self._versions: LruCache[str, str] = LruCache("events_room_versions", ROOM_VERSIONS)

    # ------------------------------------------------------------ transactions

    async def input_transaction(
        self, origin: str, txn_id: str, pdus: Sequence[bytes], edus: Sequence[bytes]
    ) -> bytes:
        if len(pdus) > MAX_PDUS or len(edus) > MAX_EDUS:
            raise InvalidTransaction(f"at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs per transaction")
        # Parsed (reads only) while the guard's lock is taken and a retry's stored
        # answer looked up, in one round trip.
        parsing = asyncio.ensure_future(self._parse(pdus))
        parsing.add_done_callback(_retrieved)
        try:
            async with self.guard.hold(origin, txn_id, self.clock.stage) as stored:
                if stored is not None:
                    # Its PDUs are not processed again: answered without their parse.
                    metrics.TRANSACTIONS.labels("retry").inc()
                    return stored.encode()
                results, by_room, refused = await parsing
                return await self._new_transaction(origin, txn_id, results, by_room, refused, edus)
        finally:
            parsing.cancel()  # a retry, or the guard failed first (a no-op once parsed)

    async def _new_transaction(
        self,
        origin: str,
        txn_id: str,
        results: dict[str, dict[str, str]],
        by_room: Mapping[str, list[CheckedPdu]],
        refused: Sequence[str],
        edus: Sequence[bytes],
    ) -> bytes:
        """The rest of :meth:`input_transaction` for a transaction seen the first time,
        under its guard; its stored answer."""
        for label in refused:
            metrics.PDUS_RECEIVED.labels(label).inc()
        with_rooms = _ResponseWithRooms(origin, txn_id, dict(results))
        (outcomes, committed), _ = await asyncio.gather(
            self._transaction_pdus(origin, by_room, with_rooms), self.input_edus(origin, edus)
        )
        if with_rooms.stored is not None:
            # Stored with the rooms: answered once their positions are given.
            await self._stream_committed(committed)
            metrics.TRANSACTIONS.labels("processed").inc()
            return with_rooms.stored.encode()
        results.update(outcomes)
        response = encode_json({"pdus": results}).decode()
        # When every room batch streams, what gives their events positions is also what
        # makes them durable: their own transaction's commit, flushed, when it found the
        # stream lock free (migration 022), else the stream round after it (its commit
        # flushes the WAL past theirs, and a round of another replica that positioned
        # them first had seen them committed). The response is stored without a flush of
        # its own (meanwhile, when there is a round), so the answer waits for one flush,
        # not two; should a crash lose it, a retry finds no stored answer and is answered
        # as a transaction of PDUs already stored. A batch with nothing to stream (all
        # refused, say) relies on the response's flush, as before.
        streamed = bool(committed) and all(batch.streams for batch in committed)
        _, answer = await asyncio.gather(
            self._stream_committed(committed),
            self._store_response(origin, txn_id, response, flush=not streamed),
        )
        metrics.TRANSACTIONS.labels("processed").inc()
        return answer.encode()

    async def _stream_committed(self, committed: Sequence[RoomBatch]) -> None:
        async with self.clock.stage("stream_positions"):
            await RoomBatch.stream_committed(committed)

    async def _store_response(self, origin: str, txn_id: str, response: str, flush: bool) -> str:
        async with self.clock.stage("store_response"), self.pool.acquire() as conn:
            return await storage.store_transaction_response(
                conn, origin, txn_id, response, now_ms(), flush=flush
            )

    async def _parse(
        self, raw_pdus: Sequence[bytes]
    ) -> tuple[dict[str, dict[str, str]], dict[str, list[CheckedPdu]], list[str]]:
        """The answers of PDUs refused for their format, the others by room (those of
        rooms we do not know are left out, with no answer), and the refusals' labels for
        :data:`metrics.PDUS_RECEIVED` (counted unless the transaction is a retry)."""
        results: dict[str, dict[str, str]] = {}
        refused: list[str] = []
        async with self.clock.stage("format"):
            parsed: list[tuple[str, dict[str, Any]]] = []
            for raw in raw_pdus:
                try:
                    pdu = decode_json(raw)
                except ValueError:
                    continue
                if isinstance(pdu, dict) and isinstance(pdu.get("room_id"), str):
                    parsed.append((pdu["room_id"], pdu))
            versions = {r: v for r, _ in parsed if (v := self._versions.get(r)) is not None}
            unknown = {room_id for room_id, _ in parsed if room_id not in versions}
            if unknown:
                rooms = await self._rooms_once_joined(unknown)
                for room_id, room in rooms.items():
                    versions[room_id] = room.room_version
                    self._versions.put(room_id, room.room_version)
            by_room: dict[str, list[CheckedPdu]] = defaultdict(list)
            for room_id, pdu in parsed:
                version = versions.get(room_id)
                if version is None:
                    refused.append("unknown_room")
                    continue
                checked = check_format(pdu, room_version(version))
                if isinstance(checked, Outcome):
                    refused.append("bad_format")
                    if checked.event_id:
                        results[checked.event_id] = {"error": checked.error}
                    continue
                by_room[room_id].append(checked)
        return results, by_room, refused

    async def _rooms_once_joined(self, room_ids: set[str]) -> dict[str, storage.RoomRow]:
        """The rooms of ``room_ids`` we know, after waiting (up to JOIN_WAIT) for the
        joins in progress of the others to end.

        A resident may send a room's next PDUs right after answering our
        send_join, before the join has stored the room; dropped, they would not
        be sent again.
        """
        rooms, joining = await self._known_and_joining(room_ids)
        if joining:
            deadline = time.monotonic() + JOIN_WAIT
            with metrics.TRANSACTIONS_WAITING_FOR_JOINS.track_inprogress():
                while joining and time.monotonic() < deadline:
                    await asyncio.sleep(JOIN_POLL)
                    joined, joining = await self._known_and_joining(joining)
                    rooms.update(joined)
        return rooms

    async def _known_and_joining(
        self, room_ids: set[str]
    ) -> tuple[dict[str, storage.RoomRow], set[str]]:
        """The rooms of ``room_ids`` we know, and of the others those being joined."""
        async with self.pool.acquire() as conn:
            return await storage.rooms_or_joins(conn, room_ids, now_ms() - int(JOIN_WAIT * 1000))

    async def _transaction_pdus(
        self,
        origin: str,
        by_room: Mapping[str, list[CheckedPdu]],
        with_rooms: _ResponseWithRooms | None = None,
    ) -> tuple[dict[str, dict[str, str]], list[RoomBatch]]:
        """The PDUs' answers, and the room batches committed, whose events the caller
        streams (:meth:`RoomBatch.stream_committed`). ``with_rooms``: the /send's response
        to store with the rooms when one transaction holds them all."""
        results: dict[str, dict[str, str]] = {}
        candidates = [c for room in by_room.values() for c in room]
        # The database is asked what the rooms need while the keys service verifies.
        _, lookups = await asyncio.gather(
            check_signatures_and_hashes(self.keys, candidates, self.clock.stage),
            self._lookups(by_room, origin),
        )
        for candidate in candidates:
            if candidate.event.sender_server != origin:
                candidate.refuse(
                    Reason.NOT_FROM_ORIGIN, "the sender's server is not the transaction origin"
                )
        for candidate in candidates:
            if candidate.event.room_id in lookups.denied_rooms:
                candidate.refuse(
                    Reason.DENIED_BY_SERVER_ACL, "the room's server ACL denies the origin server"
                )
            elif BLOCKED_ROOMS.blocks(candidate.event.room_id):
                candidate.refuse(Reason.ROOM_BLOCKED, "this room is blocked on this server")
        for candidate in candidates:
            if candidate.refusal is not None:
                results[candidate.event.event_id] = {"error": candidate.error}
                metrics.PDUS_RECEIVED.labels("dropped").inc()
        valid = {
            room_id: [c for c in room if c.refusal is None] for room_id, room in by_room.items()
        }
        metrics.BACKLOG.add({room_id: len(pending) for room_id, pending in valid.items()})
        try:
            async with self.clock.stage("missing_events"):
                gaps = {} if self.backfill is None else self._gaps(valid, lookups.in_dag)
                await asyncio.gather(
                    *(self._fill_gap(room_id, origin, deepest) for room_id, deepest in gaps.items())
                )
                await asyncio.gather(
                    *(
                        self._fetch_auth(room_id, origin, valid[room_id])
                        for room_id in lookups.partial_rooms
                        if room_id in valid
                    )
                )
            # Filled gaps may have changed a room's current state: looked up again then.
            await self._sign_received(valid, None if gaps else lookups.policy_rooms)
            if with_rooms is not None:
                with_rooms.known.update(results)
            outcomes, committed = await self._input_rooms(valid, with_rooms)
        finally:
            metrics.BACKLOG.done({room_id: len(pending) for room_id, pending in valid.items()})
        for room_outcomes in outcomes:
            for outcome in room_outcomes:
                results[outcome.event_id] = _answer(outcome)
        return results, committed

    async def _input_rooms(
        self,
        by_room: Mapping[str, list[CheckedPdu]],
        with_rooms: _ResponseWithRooms | None = None,
    ) -> tuple[list[list[Outcome]], list[RoomBatch]]:
        """Steps 4–6 for a /send's rooms (as :meth:`_input_room` does for one): their
        outcomes, and the batches committed, whose events the caller streams.

        Several rooms go in one database transaction (:meth:`_input_together`): one
        commit, and a few round trips for all, rather than each room its own. Should that
        fail, each room goes again in its own transaction, in parallel, so that one
        room's error cannot lose the others' PDUs: the first error is raised once the
        others are streamed. ``with_rooms``: the /send's response, stored in the
        transaction that holds all the rooms (never in the rooms' own ones)."""
        rooms = {room_id: room for room_id, room in by_room.items() if room}
        committed: list[RoomBatch] = []
        if len(rooms) == 1 and with_rooms is not None:
            [(room_id, room)] = rooms.items()
            outcomes = await self._input_room(
                room_id, room, InputKind.NEW, committed=committed, with_rooms=with_rooms
            )
            return [outcomes], committed
        if len(rooms) > 1:
            try:
                return await self._input_together(rooms, committed, with_rooms), committed
            except Exception:
                log.warning("a /send's rooms failed together: each goes alone", exc_info=True)
        alone = await asyncio.gather(
            *(
                self._input_room(room_id, room, InputKind.NEW, committed=committed)
                for room_id, room in rooms.items()
            ),
            return_exceptions=True,
        )
        errors = [result for result in alone if isinstance(result, BaseException)]
        if errors:
            await self._stream_committed(committed)
            raise errors[0]
        return [result for result in alone if not isinstance(result, BaseException)], committed

    async def _input_together(
        self,
        by_room: Mapping[str, list[CheckedPdu]],
        committed: list[RoomBatch],
        with_rooms: _ResponseWithRooms | None = None,
    ) -> list[list[Outcome]]:
        """The rooms' PDUs as NEW in one database transaction (:meth:`RoomBatch.together`),
        the rooms one after another; the batches are added to ``committed`` once it has
        committed. ``with_rooms``: the /send's response, stored in that transaction."""
        events = {room_id: [c.event for c in room] for room_id, room in by_room.items()}
        outcomes: list[list[Outcome]] = []
        at_commit = with_rooms.at_commit if with_rooms is not None else None
        async with RoomBatch.together(
            self.core, self.pool, events, streamed=True, stage=self.clock.stage, at_commit=at_commit
        ) as batches:
            async with self.clock.stage("checks_and_state"):
                for room_id, batch in batches.items():
                    outcomes.append([await batch.add_live(c) for c in by_room[room_id]])
            async with self.clock.stage("persistence"):
                await RoomBatch.write_together(list(batches.values()))
            if with_rooms is not None and len(batches) == len(by_room):
                with_rooms.prepare(batches.values(), outcomes)
        for batch in batches.values():
            batch.cache_committed()
        committed.extend(batches.values())
        for room_outcomes in outcomes:
            for outcome in room_outcomes:
                metrics.PDUS_RECEIVED.labels(outcome.label).inc()
        return outcomes

    async def _sign_received(
        self, by_room: Mapping[str, Sequence[CheckedPdu]], named: Collection[str] | None = None
    ) -> None:
        """Step 7's "ask for a new signature", before each room's lock (:mod:`.policy`);
        ``named``: the rooms naming a policy server, if the caller looked them up."""
        if self.policy is None:
            return
        policy = self.policy
        async with self.clock.stage("policy_server"):
            await policy.sign_received_rooms(by_room, named)

    async def _lookups(self, by_room: Mapping[str, Sequence[CheckedPdu]], origin: str) -> _Lookups:
        """What the database knows that a /send's rooms need before their batches, for
        all of them at once: the rooms whose server ACL denies ``origin``, which of the
        prev_events the PDUs cite outside the transaction are in the DAG (from the event
        cache first: those of a room's last transaction usually are), when gaps are
        filled the rooms in partial state (whose PDUs may cite auth events we lack), and
        the rooms naming a policy server."""
        in_transaction = {c.event.event_id for room in by_room.values() for c in room}
        in_dag: set[str] = set()
        unknown: list[str] = []
        if self.backfill is not None:
            prevs = {p for room in by_room.values() for c in room for p in c.event.prev_event_ids}
            for prev in prevs - in_transaction:
                cached = self.core.event_cache.get(prev)
                # An event in the DAG stays there; an outlier may have been placed since.
                if cached is not None and cached.status is not Status.OUTLIER:
                    in_dag.add(prev)
                else:
                    unknown.append(prev)
        acl, policy = SERVER_ACL_EVENT_TYPE, POLICY_STATE_KEY[0]
        async with self.clock.stage("lookups"), self.pool.acquire() as conn:
            # One round trip for the rooms' ACLs, policy servers and partial state, a
            # second for the ACL events and prev_events not cached, if any.
            facts = await storage.room_facts(
                conn,
                list(by_room),
                [acl] if self.policy is None else [acl, policy],
                partial=self.backfill is not None,
            )
            acl_ids = {room: state[acl] for room, state in facts.state.items() if acl in state}
            acls = {e: s for e in acl_ids.values() if (s := self.core.event_cache.get(e))}
            uncached = [e for e in acl_ids.values() if e not in acls]
            if unknown or uncached:
                stored = await storage.fetch_events(conn, unknown + uncached)
                in_dag.update(
                    e for e in unknown if (s := stored.get(e)) and s.status is not Status.OUTLIER
                )
                acls.update((e, stored[e]) for e in uncached if e in stored)
        denied_rooms = {
            room
            for room, acl_id in acl_ids.items()
            if acl_id in acls and not server_allowed(origin, acls[acl_id].event.content)
        }
        policy_rooms = {room for room, state in facts.state.items() if policy in state}
        return _Lookups(denied_rooms, in_dag, sorted(facts.partial), policy_rooms)

    @staticmethod
    def _gaps(
        by_room: Mapping[str, Sequence[CheckedPdu]], in_dag: set[str]
    ) -> dict[str, CheckedPdu]:
        """Per room, the deepest PDU with prev_events neither in the DAG nor in the
        transaction: what precedes it is fetched."""
        gaps = {}
        for room_id, candidates in by_room.items():
            in_transaction = {c.event.event_id for c in candidates}
            gapped = [
                c
                for c in candidates
                if any(p not in in_transaction and p not in in_dag for p in c.event.prev_event_ids)
            ]
            if gapped:
                gaps[room_id] = max(gapped, key=lambda c: c.event.depth)
        return gaps

    async def _fill_gap(self, room_id: str, origin: str, deepest: CheckedPdu) -> None:
        """Fetch what precedes ``deepest``, the room's deepest PDU with unknown prevs.

        Runs before the room's lock is taken, so other PDUs of the room (other
        transactions) and other rooms do not wait; bounded by
        :data:`GAP_FILL_TIMEOUT`. Failures are logged and ignored: the PDU is
        then refused for its missing prev_events.
        """
        assert self.backfill is not None
        try:
            reply = await self.backfill.PerformFetchMissingEvents(
                backfill_pb2.PerformFetchMissingEventsRequest(
                    room_id=room_id,
                    origin=origin,
                    event_json=encode_json(deepest.pdu),
                    timeout_seconds=GAP_FILL_TIMEOUT,
                ),
                timeout=GAP_FILL_TIMEOUT + 5,
            )
        except grpc.aio.AioRpcError as error:
            log.warning(
                "fetching missing events failed",
                extra={"room_id": room_id, "origin": origin, "error": error.details()},
            )
            return
        log.info(
            "fetched missing events",
            extra={
                "room_id": room_id,
                "event_id": deepest.event.event_id,
                "events_fetched": reply.events_fetched,
                "still_missing": list(reply.still_missing),
            },
        )

    async def _fetch_auth(
        self, room_id: str, origin: str, candidates: Sequence[CheckedPdu]
    ) -> None:
        """In a partial-state room, the auth events PDUs cite and we lack, from ``origin``.

        A partial state lacks most member events, so nearly every event of a
        member we were not told about cites an auth event (its sender's
        membership) we do not hold. As Synapse does, those are fetched with
        their auth chains from the sending server (``/event``, ``/event_auth``
        by the backfill service, stored as outliers) before the checks.
        Failures are logged: the PDU is then refused for its missing auth events.
        """
        if self.backfill is None or not candidates:
            return
        in_transaction = {c.event.event_id for c in candidates}
        cited = {a for c in candidates for a in c.event.auth_event_ids} - in_transaction
        if not cited:
            return
        async with self.pool.acquire() as conn:
            missing = sorted(set(cited) - await storage.held_event_ids(conn, sorted(cited)))
        if not missing:
            return
        try:
            reply = await self.backfill.PerformFetchEvents(
                backfill_pb2.PerformFetchEventsRequest(
                    room_id=room_id, origin=origin, event_ids=missing, with_auth_chain=True
                ),
                timeout=GAP_FILL_TIMEOUT + 5,
            )
        except grpc.aio.AioRpcError as error:
            log.warning(
                "fetching missing auth events failed",
                extra={"room_id": room_id, "origin": origin, "error": error.details()},
            )
            return
        log.info(
            "fetched missing auth events of a partial-state room",
            extra={
                "room_id": room_id,
                "events_fetched": reply.events_fetched,
                "still_missing": list(reply.still_missing),
            },
        )

    async def _input_room(
        self,
        room_id: str,
        candidates: list[CheckedPdu],
        kind: InputKind,
        state_before: Mapping[str, Sequence[str]] | None = None,
        committed: list[RoomBatch] | None = None,
        with_rooms: _ResponseWithRooms | None = None,
    ) -> list[Outcome]:
        """Steps 4–6 for one room's PDUs (in the order given), in one :class:`RoomBatch`.

        ``committed``: the batch is added to it once committed, its events' stream
        positions left to the caller (:meth:`RoomBatch.stream_committed`). ``with_rooms``:
        the /send's response (of this room's PDUs alone), stored in the room's transaction."""
        if not candidates:
            return []
        state_before = state_before or {}
        outcomes: list[Outcome] = []
        expected = 0 if kind is InputKind.OUTLIER else len(candidates)
        # A /send's batch (``committed``) takes its places in the stream queue with its
        # head, and its commit skips the WAL flush unless it gives its positions itself
        # (the stream lock free): the transaction is answered only after the stream
        # round or the stored response, whose commits flush past it.
        async with RoomBatch.transaction(
            self.core,
            self.pool,
            room_id,
            expected,
            stream_orders=0 if committed is None else len(candidates),
            events=[c.event for c in candidates],
            stage=self.clock.stage,
            at_commit=with_rooms.at_commit if with_rooms is not None else None,
        ) as opened:
            if opened is None:
                return []
            batch, _ = opened
            async with self.clock.stage("checks_and_state"):
                for candidate in candidates:
                    given = state_before.get(candidate.event.event_id)
                    if kind is InputKind.NEW:
                        outcome = await batch.add_live(candidate)
                    elif kind is InputKind.GAP_FILL:
                        outcome = await batch.add_gap_fill(candidate, given)
                    elif kind is InputKind.BACKFILL:
                        outcome = await batch.add_backfill(candidate, given)
                    else:
                        outcome = await batch.add_outlier(candidate)
                    outcomes.append(outcome)
            async with self.clock.stage("persistence"):
                await batch.write()
            if with_rooms is not None:
                with_rooms.prepare([batch], [outcomes])
        if committed is None:
            async with self.clock.stage("stream_positions"):
                await batch.committed()
        else:
            batch.cache_committed()
            committed.append(batch)
        for outcome in outcomes:
            metrics.PDUS_RECEIVED.labels(outcome.label).inc()
        return outcomes

    # ------------------------------------------------------------ fetched batches

    async def input_pdus(
        self,
        room_id: str,
        version_id: str,
        kind: InputKind,
        raw_pdus: Sequence[bytes],
        state_before: Mapping[str, Sequence[str]] | None = None,
    ) -> list[Outcome]:
        """PDUs we fetched ourselves (backfill, missing events, a room's state), as ``kind``.

        The room is registered with ``version_id`` if new. Backfilled PDUs
        are processed oldest first (by depth); outliers are put in auth order
        first. ``state_before`` (GAP_FILL and BACKFILL): event id → stored
        state event ids, the state before events whose prevs are missing.
        """
        try:
            version = room_version(version_id)
        except UnsupportedRoomVersion as error:
            raise UnsupportedInputVersion(str(error)) from None
        async with self.pool.acquire() as conn:
            await storage.insert_room(conn, room_id, version.identifier)
        pdus: list[Any] = []
        for raw in raw_pdus:
            try:
                pdus.append(decode_json(raw))
            except ValueError:
                continue
        checked = await check_fetched(
            self.keys, pdus, version, room_id, history=kind.is_history, stage=self.clock.stage
        )
        metrics.PDUS_RECEIVED.labels("bad_format").inc(checked.malformed)
        outcomes = checked.settled
        valid = checked.valid
        if kind in (InputKind.NEW, InputKind.GAP_FILL):
            await self._sign_received({room_id: valid})
        if kind is InputKind.OUTLIER:
            valid = auth_order(valid)
        elif kind is InputKind.BACKFILL:
            valid.sort(key=lambda c: c.event.depth)
        outcomes.extend(await self._input_room(room_id, valid, kind, state_before))
        return outcomes

    # ------------------------------------------------------------ EDUs

    async def input_edus(self, origin: str, raw_edus: Sequence[bytes]) -> None:
        items: list[dict[str, Any]] = []
        for raw in raw_edus:
            try:
                edu = decode_json(raw)
            except ValueError:
                continue
            if not isinstance(edu, dict) or not isinstance(edu.get("content"), dict):
                continue
            edu_type = edu.get("edu_type")
            if edu_type == "m.typing":
                items.extend(_typing_items(origin, edu["content"]))
            elif edu_type == "m.receipt":
                items.extend(_receipt_items(origin, edu["content"]))
        if not items:
            return
        async with self.pool.acquire() as conn:
            allowed = await self._edu_rooms_allowed(conn, origin, {i["room_id"] for i in items})
            accepted = [item for item in items if item["room_id"] in allowed]
            for item in items:
                outcome = "accepted" if item["room_id"] in allowed else "ignored"
                metrics.EDUS_RECEIVED.labels(item["kind"], outcome).inc()
            if not accepted:
                return
            async with conn.transaction():
                typing_users = [
                    (i["room_id"], i["user_id"]) for i in accepted if i["kind"] == "typing"
                ]
                if typing_users:
                    await storage.typing_replaced(conn, typing_users)
                await storage.insert_ephemeral(conn, accepted)
        await self.core.stream_positions.assign()

    async def _edu_rooms_allowed(
        self, conn: asyncpg.Connection, origin: str, room_ids: set[str]
    ) -> set[str]:
        """Rooms the origin has a joined member in and is not denied by the ACL."""
        allowed = set()
        for room_id in room_ids:
            if not await storage.server_has_joined_member(conn, room_id, origin):
                continue
            if await server_acl_allows(conn, room_id, origin):
                allowed.add(room_id)
        return allowed

    async def expire_typing(self) -> int:
        """Emit typing=false for typing notifications older than the 60 s timeout."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await storage.expire_typing(conn, now_ms())
            if rows:
                await storage.insert_ephemeral(
                    conn,
                    [
                        {"room_id": room_id, "kind": "typing", "user_id": user_id, "typing": False}
                        for room_id, user_id in rows
                    ],
                )
        if rows:
            await self.core.stream_positions.assign()
        return len(rows)

    async def run_typing_expiry(self, interval: float = 5.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.expire_typing()
            except (asyncpg.PostgresError, OSError):
                log.warning("typing expiry failed", exc_info=True)


def _answer(outcome: Outcome) -> dict[str, str]:
    """The /send answer for one PDU: empty when stored (even soft-failed) or known."""
    if outcome.status is Status.REJECTED:
        return {"error": f"rejected: {outcome.error}"}
    if outcome.status is None and not outcome.already_stored:
        return {"error": outcome.error}
    return {}


def _is_origin_user(user_id: Any, origin: str) -> bool:
    """A valid user id (≤ 255 bytes) on the server that sent the EDU."""
    return (
        isinstance(user_id, str)
        and is_valid_user_id(user_id)
        and user_id.split(":", 1)[1] == origin
    )


def _typing_items(origin: str, content: Mapping[str, Any]) -> list[dict[str, Any]]:
    room_id, user_id, typing = content.get("room_id"), content.get("user_id"), content.get("typing")
    if not (isinstance(room_id, str) and isinstance(user_id, str) and isinstance(typing, bool)):
        return []
    if not _is_origin_user(user_id, origin):
        return []
    return [
        {
            "room_id": room_id,
            "kind": "typing",
            "user_id": user_id,
            "typing": typing,
            "expires_ts": now_ms() + TYPING_TIMEOUT_MS if typing else None,
        }
    ]


def _receipt_items(origin: str, content: Mapping[str, Any]) -> list[dict[str, Any]]:
    items = []
    for room_id, by_type in content.items():
        if not isinstance(by_type, Mapping) or not isinstance(by_type.get("m.read"), Mapping):
            continue
        for user_id, receipt in by_type["m.read"].items():
            if not _is_origin_user(user_id, origin):
                continue
            if not isinstance(receipt, Mapping):
                continue
            event_ids, data = receipt.get("event_ids"), receipt.get("data")
            if not (
                isinstance(event_ids, list)
                and len(event_ids) == 1
                and isinstance(event_ids[0], str)
                and len(event_ids[0].encode()) <= MAX_ID_BYTES
            ):
                continue
            if not isinstance(data, Mapping):
                continue
            items.append(
                {
                    "room_id": room_id,
                    "kind": "receipt",
                    "user_id": user_id,
                    "receipt_type": "m.read",
                    "event_id": event_ids[0],
                    "data_json": encode_json(data).decode(),
                }
            )
    return items


__all__ = ["InputPipeline", "InvalidTransaction", "StageClock", "UnsupportedRoomVersion"]
