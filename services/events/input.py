"""The receive pipeline: /send transactions and fetched PDU batches.

Spec: rooms.md §6 (checks in order), edus.md §1 (transactions: idempotency on
(origin, txn_id), always a per-PDU answer), §2 (m.typing), §4 (m.receipt).

Per transaction: parse; PDUs of rooms we do not know are ignored with no
entry (as Synapse does); 1. format → drop; 2. signatures, all PDUs in ONE
``VerifyJsonSignatures`` call → drop; 3. content hash mismatch → continue with
the redacted copy; the sender's server must be the origin (/send only). Then,
per room and before its lock, the deepest PDU whose prev_events are neither
stored nor in the transaction has its gap filled by the backfill service
(behaviours.md §2; a PDU whose prevs stay unknown is refused). Then
the rooms run in parallel, each in its own :class:`RoomBatch` (one database
transaction, PDUs in the order given) for steps 4–6.

NOTSPEC: ``unsigned`` is stripped from received PDUs before storing (Synapse
keeps only ``age``); it is covered by neither hashes nor signatures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc

from matrix_protocol.canonical_json import decode_json, encode_json
from matrix_protocol.event_ids import compute_event_id
from matrix_protocol.events import Event
from matrix_protocol.hashes import content_hash_matches
from matrix_protocol.pdu_format import MAX_ID_BYTES, PduFormatError, check_pdu_format
from matrix_protocol.redaction import redact
from matrix_protocol.room_versions import RoomVersion, UnsupportedRoomVersion, room_version
from matrix_protocol.server_names import is_valid_user_id
from matrix_protocol.signing import signatures_required_for_event
from mxfed.service_errors import BadRequest
from mxfed_api.backfill.v1 import backfill_pb2, backfill_pb2_grpc
from mxfed_api.keys.v1 import keys_pb2, keys_pb2_grpc
from services.events import metrics, storage
from services.events.reads import server_acl_allows
from services.events.room_batch import Outcome, RoomBatch, RoomsCore
from services.events.storage import Status

log = logging.getLogger(__name__)

TYPING_TIMEOUT_MS = 60_000
MAX_PDUS = 50
MAX_EDUS = 100
# Seconds a /send transaction waits for the missing events of one room.
GAP_FILL_TIMEOUT = 60.0


class InvalidTransaction(BadRequest):
    """The transaction itself is malformed (too many PDUs/EDUs)."""

    errcode = "M_BAD_JSON"


@dataclass
class Candidate:
    """A PDU that passed the format check, on its way through the checks."""

    event: Event
    pdu: dict[str, Any]
    redacted: bool = False
    error: str = ""


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


def _now_ms() -> int:
    return int(time.time() * 1000)


def _without_unsigned(pdu: dict[str, Any]) -> dict[str, Any]:
    if "unsigned" not in pdu:
        return pdu
    return {key: value for key, value in pdu.items() if key != "unsigned"}


class TransactionGuard:
    """At most one processing of a given (origin, txn_id) at a time, on every replica.

    Same replica: an asyncio lock per key. Other replicas: a session advisory
    lock on one dedicated connection, polled with ``pg_try_advisory_lock`` so
    that connection never blocks (a replica that dies drops its locks).
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._local: dict[tuple[str, str], asyncio.Lock] = {}
        self._users: dict[tuple[str, str], int] = defaultdict(int)
        self._conn: asyncpg.Connection | None = None
        self._conn_lock = asyncio.Lock()

    async def _query(self, sql: str, key: int) -> Any:
        async with self._conn_lock:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self._pool.acquire()
            return await self._conn.fetchval(sql, key)

    @asynccontextmanager
    async def hold(self, origin: str, txn_id: str) -> AsyncIterator[None]:
        name = (origin, txn_id)
        lock = self._local.setdefault(name, asyncio.Lock())
        self._users[name] += 1
        try:
            async with lock:
                key = storage.lock_key(f"txn:{origin}\x00{txn_id}")
                # Another replica holds it only while it processes the same
                # transaction; poll rather than block the shared connection.
                while not await self._query("SELECT pg_try_advisory_lock($1)", key):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                try:
                    yield
                finally:
                    await self._query("SELECT pg_advisory_unlock($1)", key)
        finally:
            self._users[name] -= 1
            if not self._users[name]:
                del self._users[name]
                self._local.pop(name, None)

    async def close(self) -> None:
        if self._conn is not None:
            await self._pool.release(self._conn)
            self._conn = None


class InputPipeline:
    def __init__(
        self,
        pool: asyncpg.Pool,
        core: RoomsCore,
        keys: keys_pb2_grpc.KeysStub,
        clock: StageClock | None = None,
        backfill: backfill_pb2_grpc.BackfillStub | None = None,
    ) -> None:
        self.pool = pool
        self.core = core
        self.keys = keys
        # Gap filling for /send (PerformFetchMissingEvents); None: no gap filling.
        self.backfill = backfill
        self.clock = clock or StageClock()
        self.guard = TransactionGuard(pool)

    # ------------------------------------------------------------ transactions

    async def input_transaction(
        self, origin: str, txn_id: str, pdus: Sequence[bytes], edus: Sequence[bytes]
    ) -> bytes:
        if len(pdus) > MAX_PDUS or len(edus) > MAX_EDUS:
            raise InvalidTransaction(f"at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs per transaction")
        async with self.guard.hold(origin, txn_id):
            async with self.pool.acquire() as conn:
                stored = await storage.stored_transaction_response(conn, origin, txn_id)
            if stored is not None:
                metrics.TRANSACTIONS.labels("retry").inc()
                return stored.encode()
            results, _ = await asyncio.gather(
                self._transaction_pdus(origin, pdus), self.input_edus(origin, edus)
            )
            response = encode_json({"pdus": results}).decode()
            async with self.pool.acquire() as conn:
                stored = await storage.store_transaction_response(
                    conn, origin, txn_id, response, _now_ms()
                )
            metrics.TRANSACTIONS.labels("processed").inc()
            return stored.encode()

    async def _transaction_pdus(
        self, origin: str, raw_pdus: Sequence[bytes]
    ) -> dict[str, dict[str, str]]:
        results: dict[str, dict[str, str]] = {}
        async with self.clock.stage("format"):
            parsed: list[tuple[str, dict[str, Any]]] = []
            for raw in raw_pdus:
                try:
                    pdu = decode_json(raw)
                except ValueError:
                    continue
                if isinstance(pdu, dict) and isinstance(pdu.get("room_id"), str):
                    parsed.append((pdu["room_id"], pdu))
            async with self.pool.acquire() as conn:
                rooms = await storage.get_rooms(conn, {room_id for room_id, _ in parsed})
            by_room: dict[str, list[Candidate]] = defaultdict(list)
            for room_id, pdu in parsed:
                room = rooms.get(room_id)
                if room is None:
                    metrics.PDUS_RECEIVED.labels("unknown_room").inc()
                    continue
                candidate = self._check_format(pdu, room_version(room.room_version), results)
                if candidate is not None:
                    by_room[room_id].append(candidate)
        candidates = [c for room in by_room.values() for c in room]
        await self._check_signatures_and_hashes(candidates)
        for candidate in candidates:
            if not candidate.error and candidate.event.sender_server != origin:
                candidate.error = "the sender's server is not the transaction origin"
        async with self.pool.acquire() as conn:
            denied_rooms = {
                room_id for room_id in by_room if not await server_acl_allows(conn, room_id, origin)
            }
        for candidate in candidates:
            if not candidate.error and candidate.event.room_id in denied_rooms:
                candidate.error = "the room's server ACL denies the origin server"
        for candidate in candidates:
            if candidate.error:
                results[candidate.event.event_id] = {"error": candidate.error}
                metrics.PDUS_RECEIVED.labels("dropped").inc()
        async with self.clock.stage("missing_events"):
            await asyncio.gather(
                *(
                    self._fill_gap(room_id, origin, [c for c in room if not c.error])
                    for room_id, room in by_room.items()
                )
            )
        outcomes = await asyncio.gather(
            *(
                self._input_room(room_id, [c for c in room if not c.error], soft_fail=True)
                for room_id, room in by_room.items()
            )
        )
        for room_outcomes in outcomes:
            for outcome in room_outcomes:
                results[outcome.event_id] = _answer(outcome)
        return results

    async def _fill_gap(self, room_id: str, origin: str, candidates: list[Candidate]) -> None:
        """behaviours.md §2: fetch what precedes the room's deepest PDU with unknown prevs.

        Runs before the room's lock is taken, so other PDUs of the room (other
        transactions) and other rooms do not wait; bounded by
        :data:`GAP_FILL_TIMEOUT`. Failures are logged and ignored: the PDU is
        then refused for its missing prev_events.
        """
        if self.backfill is None or not candidates:
            return
        in_transaction = {c.event.event_id for c in candidates}
        prevs = {p for c in candidates for p in c.event.prev_event_ids if p not in in_transaction}
        if not prevs:
            return
        async with self.pool.acquire() as conn:
            stored = await storage.fetch_events(conn, prevs)
        in_dag = {e for e, s in stored.items() if s.status is not Status.OUTLIER}
        gapped = [
            c
            for c in candidates
            if any(p not in in_transaction and p not in in_dag for p in c.event.prev_event_ids)
        ]
        if not gapped:
            return
        deepest = max(gapped, key=lambda c: c.event.depth)
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

    def _check_format(
        self,
        pdu: dict[str, Any],
        version: RoomVersion,
        results: dict[str, dict[str, str]],
        *,
        backfilled: bool = False,
    ) -> Candidate | None:
        try:
            check_pdu_format(pdu, version, backfilled=backfilled)
            event = Event.from_pdu(pdu, version)
        except (PduFormatError, ValueError) as error:
            metrics.PDUS_RECEIVED.labels("bad_format").inc()
            try:
                results[compute_event_id(pdu, version)] = {"error": f"invalid PDU: {error}"}
            except (ValueError, TypeError, KeyError, AttributeError):
                pass
            return None
        return Candidate(event, _without_unsigned(pdu))

    async def _check_signatures_and_hashes(self, candidates: list[Candidate]) -> None:
        """Steps 2 and 3: one VerifyJsonSignatures call for all; redact on hash mismatch."""
        async with self.clock.stage("signatures"):
            items: list[keys_pb2.JsonToVerify] = []
            owners: list[Candidate] = []
            for candidate in candidates:
                event = candidate.event
                try:
                    servers = signatures_required_for_event(event)
                except ValueError as error:
                    candidate.error = f"invalid PDU: {error}"
                    continue
                redacted_json = encode_json(redact(candidate.pdu, event.room_version))
                for server in sorted(servers):
                    items.append(
                        keys_pb2.JsonToVerify(
                            json=redacted_json,
                            server_name=server,
                            at_ts=event.origin_server_ts,
                            enforce_key_validity=event.room_version.enforce_key_validity,
                        )
                    )
                    owners.append(candidate)
            if items:
                reply = await self.keys.VerifyJsonSignatures(
                    keys_pb2.VerifyJsonSignaturesRequest(items=items)
                )
                for owner, item, result in zip(owners, items, reply.results, strict=True):
                    if not result.ok and not owner.error:
                        owner.error = (
                            f"signature of {item.server_name} does not verify: {result.error}"
                        )
        async with self.clock.stage("hashes"):
            for candidate in candidates:
                if not candidate.error and not content_hash_matches(candidate.pdu):
                    candidate.pdu = redact(candidate.pdu, candidate.event.room_version)
                    candidate.event = Event(
                        candidate.pdu, candidate.event.room_version, candidate.event.event_id
                    )
                    candidate.redacted = True

    async def _input_room(
        self,
        room_id: str,
        candidates: list[Candidate],
        *,
        soft_fail: bool,
        backfill: bool = False,
        gap_fill: bool = False,
        state_before: Mapping[str, Sequence[str]] | None = None,
    ) -> list[Outcome]:
        if not candidates:
            return []
        outcomes: list[Outcome] = []
        async with self.pool.acquire() as conn, conn.transaction():
            batch = RoomBatch(self.core, conn, room_id)
            if not await batch.open(len(candidates)):
                return []
            await batch.prefetch(c.event for c in candidates)
            async with self.clock.stage("checks_and_state"):
                for candidate in candidates:
                    outcome = await batch.add(
                        candidate.event,
                        candidate.pdu,
                        redacted=candidate.redacted,
                        soft_fail=soft_fail,
                        backfill=backfill,
                        gap_fill=gap_fill,
                        state_before=(state_before or {}).get(candidate.event.event_id),
                    )
                    outcomes.append(outcome)
            async with self.clock.stage("persistence"):
                await batch.write()
        batch.committed()
        for outcome in outcomes:
            metrics.PDUS_RECEIVED.labels(_outcome_label(outcome)).inc()
        return outcomes

    # ------------------------------------------------------------ fetched batches

    async def input_pdus(
        self,
        room_id: str,
        version_id: str,
        kind: str,
        raw_pdus: Sequence[bytes],
        state_before: Mapping[str, Sequence[str]] | None = None,
    ) -> list[Outcome]:
        """PDUs we fetched ourselves (backfill, missing events, a join's state).

        ``kind`` is "new" (full checks), "gap_fill" (events pulled in to
        connect a live event: full checks including soft-fail, no 20/10
        limits), "backfill" (history older than what we hold: oldest first,
        no soft-fail, no stream positions, no effect on extremities or
        current state) or "outlier". The room is registered with
        ``version_id`` if new. Outliers are put in auth order first and
        checked against their own auth events only. ``state_before``
        (gap_fill and backfill): event id → stored state event ids, the state
        before events whose prevs are missing.
        """
        version = room_version(version_id)
        async with self.pool.acquire() as conn:
            await storage.insert_room(conn, room_id, version.identifier)
        results: dict[str, dict[str, str]] = {}
        candidates: list[Candidate] = []
        outcomes: list[Outcome] = []
        for raw in raw_pdus:
            try:
                pdu = decode_json(raw)
            except ValueError:
                continue
            if not isinstance(pdu, dict):
                continue
            # Fetched history may exceed the 20 prev / 10 auth events limits
            # (endpoints.md §3 /backfill); size limits still apply.
            candidate = self._check_format(
                pdu, version, results, backfilled=kind in ("gap_fill", "backfill")
            )
            if candidate is not None and candidate.event.room_id == room_id:
                candidates.append(candidate)
        outcomes.extend(
            Outcome(event_id, None, answer["error"]) for event_id, answer in results.items()
        )
        await self._check_signatures_and_hashes(candidates)
        outcomes.extend(Outcome(c.event.event_id, None, c.error) for c in candidates if c.error)
        valid = [c for c in candidates if not c.error]
        if kind == "outlier":
            outcomes.extend(await self._input_outliers(room_id, _auth_order(valid)))
        elif kind == "backfill":
            valid.sort(key=lambda c: c.event.depth)
            outcomes.extend(
                await self._input_room(
                    room_id, valid, soft_fail=False, backfill=True, state_before=state_before
                )
            )
        else:
            gap_fill = kind == "gap_fill"
            outcomes.extend(
                await self._input_room(
                    room_id,
                    valid,
                    soft_fail=True,
                    gap_fill=gap_fill,
                    state_before=state_before if gap_fill else None,
                )
            )
        return outcomes

    async def _input_outliers(self, room_id: str, candidates: list[Candidate]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        async with self.pool.acquire() as conn, conn.transaction():
            batch = RoomBatch(self.core, conn, room_id)
            if not await batch.open(0):
                return []
            await batch.prefetch(c.event for c in candidates)
            for candidate in candidates:
                outcomes.append(
                    await batch.add_outlier(
                        candidate.event, candidate.pdu, redacted=candidate.redacted
                    )
                )
            await batch.write()
        batch.committed()
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
                    # A newer typing notification replaces any older one's expiry.
                    await conn.executemany(
                        "UPDATE events.ephemeral SET expires_ts = NULL WHERE room_id = $1"
                        " AND user_id = $2 AND kind = 'typing' AND expires_ts IS NOT NULL",
                        typing_users,
                    )
                await storage.assign_stream_positions(conn, [], accepted)

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
            rows = await conn.fetch(
                "UPDATE events.ephemeral SET expires_ts = NULL"
                " WHERE kind = 'typing' AND expires_ts IS NOT NULL AND expires_ts < $1"
                " RETURNING room_id, user_id",
                _now_ms(),
            )
            if rows:
                await storage.assign_stream_positions(
                    conn,
                    [],
                    [
                        {
                            "room_id": r["room_id"],
                            "kind": "typing",
                            "user_id": r["user_id"],
                            "typing": False,
                        }
                        for r in rows
                    ],
                )
        return len(rows)

    async def run_typing_expiry(self, interval: float = 5.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.expire_typing()
            except (asyncpg.PostgresError, OSError):
                log.warning("typing expiry failed", exc_info=True)


def _auth_order(candidates: list[Candidate]) -> list[Candidate]:
    """``candidates`` with every event after the batch's events it cites as auth events."""
    by_id = {c.event.event_id: c for c in candidates}
    ordered: list[Candidate] = []
    placed: set[str] = set()

    def place(candidate: Candidate, seen: set[str]) -> None:
        event_id = candidate.event.event_id
        if event_id in placed or event_id in seen:
            return
        seen.add(event_id)
        for auth_id in candidate.event.auth_event_ids:
            if auth_id in by_id:
                place(by_id[auth_id], seen)
        placed.add(event_id)
        ordered.append(candidate)

    for candidate in sorted(candidates, key=lambda c: c.event.depth):
        place(candidate, set())
    return ordered


def _answer(outcome: Outcome) -> dict[str, str]:
    if outcome.status is Status.REJECTED:
        return {"error": f"rejected: {outcome.error}"}
    if outcome.status is None and not outcome.already_stored:
        return {"error": outcome.error}
    return {}


def _outcome_label(outcome: Outcome) -> str:
    if outcome.already_stored:
        return "duplicate"
    if outcome.status is None:
        return "error"
    return outcome.status.name.lower()


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
            "expires_ts": _now_ms() + TYPING_TIMEOUT_MS if typing else None,
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
