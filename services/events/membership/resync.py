"""The background resync of rooms joined with a partial state.

Spec: https://spec.matrix.org/v1.19/server-server-api/#put_matrixfederationv2send_joinroomideventid
(``omit_members``, ``members_omitted``, ``servers_in_room``);
https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1state_idsroomid
and ``GET /state/{roomId}``, ``GET /event/{eventId}``; the partial-state
window follows MSC3706 / MSC3902 as Synapse implements them.

A join whose answer omitted members stores the partial state and returns
(:mod:`.join`). This module then fetches the full state at our join:
``/state_ids`` at the join event (the resident first, then the other
servers of ``servers_in_room``), the events we lack — the whole state with
one ``/state`` call when many are missing, the rest with ``/event`` in
concurrent batches, each from the next server when one fails — checks them
like every fetched PDU (:func:`~services.events.pdu_checks.check_fetched`),
and stores them through one :class:`RoomBatch` (outliers in auth order,
then :meth:`RoomBatch.end_partial_state`, which places our join and every
event since on the full state, checks them again and ends the partial
state). When /state gave every event we lack, that batch is built and
written while the keys service still verifies their signatures, in a
transaction committed only once all have verified (rolled back otherwise,
and the events refused fetched again with /event, as when the signatures
are checked first).

Supervised: a failed attempt is recorded (``resync_attempts``,
``resync_error``) and retried with backoff; the task is restartable —
``resume_all`` at start-up picks up every room still partial, so a restart
of the events process resumes the resync. One replica resyncs a room at a
time (a session advisory lock); the others retry later and find it done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from enum import IntEnum
from typing import Any

import asyncpg

from matrix_protocol.room_versions import RoomVersion, room_version
from mxfed.bulk_work import cyclic_gc_paused
from mxfed.federation_client import FederationError, federation_path
from services.events import metrics, storage
from services.events.membership.common import MembershipDeps
from services.events.pdu_checks import (
    CheckedBatch,
    CheckedPdu,
    PendingChecks,
    check_fetched,
    start_checks,
)
from services.events.room_batch import Rejudged, RoomBatch, auth_order
from services.events.stored_while_verifying import store_while_verifying

log = logging.getLogger(__name__)

# More missing events than this: ask for the whole state at once (/state).
STATE_FETCH_THRESHOLD = 50
EVENT_FETCH_CONCURRENCY = 20
EVENT_BATCH = 500
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
# Every call has a deadline: a 100k-member /state answer is large.
STATE_IDS_TIMEOUT = 60.0
STATE_TIMEOUT = 300.0


class ResyncState(IntEnum):
    """Same numbers as ``mxfed.events.v1.ResyncState``."""

    FULL_STATE = 1
    PENDING = 2
    FETCHING = 3
    STORING = 4
    RETRYING = 5


class ResyncError(Exception):
    """An attempt could not finish (retried later)."""


def _lock_name(room_id: str) -> str:
    return "resync:" + room_id


class PartialStateResync:
    def __init__(self, deps: MembershipDeps) -> None:
        self.deps = deps
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self.retry_first = RETRY_FIRST_SECONDS
        # Rooms resyncing here: (members known, members expected), for the gauges.
        self._members: dict[str, tuple[int, int]] = {}

    def start(self, room_id: str) -> None:
        """Resync ``room_id`` in the background unless that already runs here."""
        task = self._tasks.get(room_id)
        if task is not None and not task.done():
            return
        self._tasks[room_id] = self.deps.spawn(self._supervise(room_id), f"resync {room_id}")
        metrics.PARTIAL_STATE_ROOMS.set(len([t for t in self._tasks.values() if not t.done()]))

    def _count(self, room_id: str, members: tuple[int, int] | None) -> None:
        if members is None:
            self._members.pop(room_id, None)
        else:
            self._members[room_id] = members
        metrics.RESYNC_MEMBERS.labels("known").set(sum(k for k, _ in self._members.values()))
        metrics.RESYNC_MEMBERS.labels("expected").set(sum(e for _, e in self._members.values()))

    async def resume_all(self) -> None:
        """Start the resync of every room still partial (at start-up)."""
        async with self.deps.pool.acquire() as conn:
            room_ids = await storage.partial_state_room_ids(conn)
        for room_id in room_ids:
            log.info("resuming the resync of a partial-state room", extra={"room_id": room_id})
            self.start(room_id)

    async def wait(self, room_id: str) -> None:
        """Until the resync task of ``room_id`` here ends (tests, benchmarks)."""
        task = self._tasks.get(room_id)
        if task is not None:
            await asyncio.shield(task)

    async def _supervise(self, room_id: str) -> None:
        delay = self.retry_first
        while True:
            try:
                if await self._attempt(room_id):
                    self._count(room_id, None)
                    running = [r for r, t in self._tasks.items() if not t.done() and r != room_id]
                    metrics.PARTIAL_STATE_ROOMS.set(len(running))
                    return
                metrics.RESYNCS.labels("busy").inc()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - every failure is retried
                metrics.RESYNCS.labels("failed").inc()
                reason = str(error) or type(error).__name__
                log.warning(
                    "resync attempt failed; retrying",
                    extra={"room_id": room_id, "error": reason, "retry_in": delay},
                )
                try:
                    async with self.deps.pool.acquire() as conn:
                        await storage.update_resync_progress(
                            conn, room_id, ResyncState.RETRYING, failed=reason[:500]
                        )
                except Exception:  # noqa: BLE001 - the database may be what failed
                    log.exception("could not record a failed resync attempt")
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _attempt(self, room_id: str) -> bool:
        """One attempt; True when the room is no longer partial, False if another has it."""
        async with self.deps.pool.acquire() as lock_conn:
            if not await storage.try_session_lock(lock_conn, _lock_name(room_id)):
                return False
            try:
                with cyclic_gc_paused():
                    return await self._resync(room_id)
            finally:
                await storage.session_unlock(lock_conn, _lock_name(room_id))

    async def _progress(self, room_id: str, state: ResyncState, **extra: Any) -> None:
        async with self.deps.pool.acquire() as conn:
            await storage.update_resync_progress(conn, room_id, state, **extra)

    async def _resync(self, room_id: str) -> bool:
        deps = self.deps
        started = time.monotonic()
        async with deps.pool.acquire() as conn:
            row = await storage.partial_state_room(conn, room_id)
            if row is None:
                return True
            rooms = await storage.get_rooms(conn, [room_id])
            version = room_version(rooms[room_id].room_version)
            join = (await storage.fetch_events(conn, [row.join_event_id])).get(row.join_event_id)
            partial_ids: set[str] = set()
            if join is not None and join.state_group_before is not None:
                partial = await deps.core.state_store.get(conn, join.state_group_before)
                partial_ids = set(partial.state.values())
            members_now = await storage.count_current_members(conn, room_id)
        servers = [
            s for s in dict.fromkeys([row.joined_via, *row.servers]) if s and s != deps.server_name
        ]
        await self._progress(room_id, ResyncState.FETCHING)
        state_ids, chain_ids, server = await self._state_ids(room_id, row.join_event_id, servers)
        # Only member events were left out of the answer (omit_members): the
        # members we know now plus the ones the full state has and we lack.
        members_expected = members_now + len(set(state_ids) - partial_ids)
        self._count(room_id, (members_now, members_expected))
        await self._progress(room_id, ResyncState.FETCHING, members_expected=members_expected)
        wanted = list(dict.fromkeys([*state_ids, *chain_ids]))
        async with deps.pool.acquire() as conn:
            held = await storage.held_event_ids(conn, wanted)
        missing = [e for e in wanted if e not in held]
        stored = await self._fetch_and_store(
            room_id, version, row.join_event_id, state_ids, held, missing, [server, *servers]
        )
        if stored is None:
            return False
        rejudged, valid = stored
        metrics.RESYNC_SECONDS.labels("total").observe(time.monotonic() - started)
        metrics.RESYNCS.labels("done").inc()
        metrics.RESYNC_REJUDGED.labels("to_rejected").inc(rejudged.rejected)
        metrics.RESYNC_REJUDGED.labels("rejected_to_accepted").inc(rejudged.accepted)
        metrics.RESYNC_REJUDGED.labels("rejected_to_soft_failed").inc(rejudged.soft_failed)
        metrics.RESYNC_REJUDGED.labels("accepted_to_soft_failed").inc(
            rejudged.soft_failed_after_acceptance
        )
        log.info(
            "partial-state room resynced",
            extra={
                "room_id": room_id,
                "state_events": len(state_ids),
                "fetched": len(valid),
                "rejected_on_full_state": rejudged.rejected,
                "accepted_on_full_state": rejudged.accepted,
                "soft_failed_on_full_state": rejudged.soft_failed,
                "soft_failed_after_acceptance": rejudged.soft_failed_after_acceptance,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return True

    async def _fetch_and_store(
        self,
        room_id: str,
        version: RoomVersion,
        join_event_id: str,
        state_ids: Sequence[str],
        held: set[str],
        missing: Sequence[str],
        servers: Sequence[str],
    ) -> tuple[Rejudged, dict[str, CheckedPdu]] | None:
        """The events we lack fetched, checked and stored; None if the room changed under us.

        When the resident's /state gives every one, they are stored while the
        keys service verifies their signatures, in a transaction committed
        only once all have verified; otherwise (or when one has not) the
        signatures are waited for first, what is still missing is fetched
        with /event, and then it is stored.
        """
        fetched_at = time.monotonic()
        pending = None
        if len(missing) > STATE_FETCH_THRESHOLD:
            raw = await self._state_answer(room_id, join_event_id, servers)
            if raw is not None:
                with metrics.RESYNC_SECONDS.labels("checks").time():
                    pending = await start_checks(self.deps.keys, raw, version, room_id)
        try:
            if pending is not None:
                wanted = set(missing)
                unverified = {
                    c.event.event_id: c for c in pending.unverified if c.event.event_id in wanted
                }
                if len(unverified) == len(wanted):
                    await self._progress(room_id, ResyncState.STORING)
                    stored_at = time.monotonic()
                    committed, rejudged = await store_while_verifying(
                        self.deps.pool,
                        pending,
                        unverified.values(),
                        lambda conn: self._store_batch(
                            conn, room_id, join_event_id, state_ids, unverified
                        ),
                        what="/state answer",
                        room_id=room_id,
                    )
                    if committed:
                        metrics.RESYNC_SECONDS.labels("fetch").observe(stored_at - fetched_at)
                        metrics.RESYNC_SECONDS.labels("store").observe(time.monotonic() - stored_at)
                        return None if rejudged is None else (rejudged, unverified)
            valid = await self._fetch_checked(
                room_id, version, join_event_id, missing, servers, pending
            )
        finally:
            if pending is not None:
                pending.cancel()  # nobody waits for the signatures any more
        lacking = [e for e in state_ids if e not in held and e not in valid]
        if lacking:
            raise ResyncError(f"{len(lacking)} state events could not be fetched or checked")
        metrics.RESYNC_SECONDS.labels("fetch").observe(time.monotonic() - fetched_at)
        await self._progress(room_id, ResyncState.STORING)
        stored_at = time.monotonic()
        rejudged = await self._store(room_id, version, join_event_id, state_ids, valid)
        if rejudged is None:
            return None
        metrics.RESYNC_SECONDS.labels("store").observe(time.monotonic() - stored_at)
        return rejudged, valid

    async def _store(
        self,
        room_id: str,
        version: RoomVersion,
        join_event_id: str,
        state_ids: Sequence[str],
        valid: dict[str, CheckedPdu],
    ) -> Rejudged | None:
        """Outliers, then the partial state ended; None if the room changed under us."""
        async with self.deps.pool.acquire() as conn, conn.transaction():
            batch, rejudged = await self._store_batch(
                conn, room_id, join_event_id, state_ids, valid
            )
        if batch is not None:
            await batch.committed()
        return rejudged

    async def _store_batch(
        self,
        conn: asyncpg.Connection,
        room_id: str,
        join_event_id: str,
        state_ids: Sequence[str],
        valid: dict[str, CheckedPdu],
    ) -> tuple[RoomBatch | None, Rejudged | None]:
        """:meth:`_store`'s batch, written in the caller's transaction (None: nothing to write)."""
        batch = RoomBatch(self.deps.core, conn, room_id)
        await batch.open(len(valid))
        if batch.partial is None:
            return None, Rejudged()  # finished meanwhile (a full rejoin)
        if batch.partial.join_event_id != join_event_id:
            return None, None  # joined again meanwhile: start over with that join
        await batch.prefetch(c.event for c in valid.values())
        failed: set[str] = set()
        for entry in auth_order(valid.values()):
            outcome = await batch.add_outlier(entry)
            if outcome.status is None and not outcome.already_stored:
                failed.add(outcome.event_id)
        usable = [e for e in state_ids if e not in failed]
        if len(usable) < len(state_ids):
            log.info(
                "state events at our join that could not be stored",
                extra={"room_id": room_id, "count": len(state_ids) - len(usable)},
            )
        rejudged = await batch.end_partial_state(usable)
        await batch.write()
        return batch, rejudged

    async def _state_answer(
        self, room_id: str, join_event_id: str, servers: Sequence[str]
    ) -> list[Any] | None:
        """The PDUs and auth chain of the first /state answer at our join, if any."""
        path = federation_path("_matrix", "federation", "v1", "state", room_id)
        for server in dict.fromkeys(servers):
            try:
                answer = await self.deps.client.get_json(
                    server, path, query={"event_id": join_event_id}, timeout=STATE_TIMEOUT
                )
            except FederationError as error:
                log.info(
                    "/state for a resync failed",
                    extra={"room_id": room_id, "server": server, "error": str(error)},
                )
                continue
            if isinstance(answer, dict):
                return [*(answer.get("pdus") or []), *(answer.get("auth_chain") or [])]
        return None

    async def _state_ids(
        self, room_id: str, event_id: str, servers: Sequence[str]
    ) -> tuple[list[str], list[str], str]:
        path = federation_path("_matrix", "federation", "v1", "state_ids", room_id)
        problems = []
        for server in servers:
            try:
                answer = await self.deps.client.get_json(
                    server, path, query={"event_id": event_id}, timeout=STATE_IDS_TIMEOUT
                )
            except FederationError as error:
                problems.append(f"{server}: {error}")
                continue
            if not isinstance(answer, dict):
                problems.append(f"{server}: malformed /state_ids answer")
                continue
            pdu_ids = _strings(answer.get("pdu_ids"))
            chain_ids = _strings(answer.get("auth_chain_ids"))
            if pdu_ids is None or chain_ids is None:
                problems.append(f"{server}: malformed /state_ids answer")
                continue
            return pdu_ids, chain_ids, server
        raise ResyncError("no server gave the state at our join: " + "; ".join(problems))

    async def _fetch_checked(
        self,
        room_id: str,
        version: RoomVersion,
        join_event_id: str,
        missing: Sequence[str],
        servers: Sequence[str],
        state_checks: PendingChecks | None,
    ) -> dict[str, CheckedPdu]:
        """``missing`` fetched and checked: those of the /state answer being checked
        (``state_checks``), then /event for the rest."""
        servers = list(dict.fromkeys(servers))
        wanted = set(missing)
        valid: dict[str, CheckedPdu] = {}

        def keep(checked: CheckedBatch) -> None:
            valid.update((c.event.event_id, c) for c in checked.valid if c.event.event_id in wanted)

        async def check(raw: Iterable[Any]) -> None:
            with metrics.RESYNC_SECONDS.labels("checks").time():
                keep(await check_fetched(self.deps.keys, raw, version, room_id))

        if state_checks is not None:
            with metrics.RESYNC_SECONDS.labels("checks").time():
                keep(await state_checks.verified())
        rest = [e for e in missing if e not in valid]
        limit = asyncio.Semaphore(EVENT_FETCH_CONCURRENCY)

        async def one(event_id: str) -> Any:
            path = federation_path("_matrix", "federation", "v1", "event", event_id)
            for server in servers:
                async with limit:
                    try:
                        answer = await self.deps.client.get_json(server, path)
                    except FederationError:
                        continue
                pdus = answer.get("pdus") if isinstance(answer, dict) else None
                if isinstance(pdus, list) and len(pdus) == 1:
                    return pdus[0]
            return None

        for start in range(0, len(rest), EVENT_BATCH):
            batch = rest[start : start + EVENT_BATCH]
            raw = await asyncio.gather(*(one(e) for e in batch))
            await check([p for p in raw if p is not None])
        return valid


def _strings(value: Any) -> list[str] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return value
