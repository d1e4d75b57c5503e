"""The one persistence path for events of a room, received or built here.

Spec: https://spec.matrix.org/v1.19/server-server-api/#checks-performed-on-receipt-of-a-pdu
steps 4–7 (auth against the event's own auth events → reject; against the
state before it → reject; against the current state → soft fail; in a room
whose current state names a policy server, its valid signature → else soft
fail, https://spec.matrix.org/v1.19/server-server-api/#validating-policy-server-signatures)
and "Rejection" / "Soft failure"; the state before an event is resolved from its
prev_events (https://spec.matrix.org/v1.19/rooms/v2/#state-resolution).

A :class:`RoomBatch` is one room inside one database transaction (which the
rooms of a /send share: :meth:`RoomBatch.together`): it holds the room's
advisory lock (so one replica works on a room at a time), keeps
the room's head (forward extremities, current state) in memory while events
are added one after another in the given order, and writes everything —
events, auth edges, state groups, extremities, current state, the streamed
events' place in the stream queue, redactions (applied or waiting for their
target) — when :meth:`RoomBatch.write` runs at the end. A replica that dies
before commit leaves nothing behind. Stream positions are given right after
the commit (:meth:`RoomBatch.committed`), so rooms do not commit one at a
time. Nothing else writes events of a room. Steps 1–3 (format, signatures,
hashes) happen before, in :mod:`services.events.pdu_checks`.

Each way an event enters the room is a named case, one method each:

===================  ==========  ====================  ===============  ========
method               soft fail   state before          forward extrem.  streamed
                     (6 and 7)
===================  ==========  ====================  ===============  ========
``add_live``         yes         from prev_events      advances         yes
``add_gap_fill``     yes         prevs, else given     if latest        yes
``add_backfill``     no          prevs, else given     never            no
``add_local``        refused     from prev_events      advances         yes
``add_join``         no          given (the resident)  the only one     yes
``add_outlier``      —           none                  never            no
===================  ==========  ====================  ===============  ========

Only accepted events move the head and are streamed; soft-failed ones are
stored with their state (later events may cite them) but do neither. Events
built here (``add_local``) and our join (``add_join``) are stored only when
accepted: anything else refuses them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from matrix_protocol.auth_events import auth_types_for_event
from matrix_protocol.auth_rules import AuthError, check_auth_events_structure, check_auth_rules
from matrix_protocol.canonical_json import encode_json
from matrix_protocol.events import Event, StateKey
from matrix_protocol.policy_servers import (
    POLICY_SERVER_KEY_ID,
    POLICY_STATE_KEY,
    PolicyServer,
    has_valid_policy_signature,
    needs_policy_signature,
    policy_server_from_content,
)
from matrix_protocol.power_levels import named_power_level, user_power_level
from matrix_protocol.redaction import redact
from matrix_protocol.room_versions import RoomVersion, room_version
from matrix_protocol.state_resolution import MissingEventError
from services.events import metrics, storage
from services.events.admin.blocks import sender_blocked
from services.events.cache import LruCache
from services.events.outcomes import Outcome, Reason
from services.events.pdu_checks import CheckedPdu, Stage, untimed
from services.events.state import StateResolver
from services.events.state_storage import PendingGroups, StateGroup, StateStore, diff
from services.events.storage import (
    EventWrite,
    PartialStateRoom,
    Replacement,
    RoomHead,
    RoomRow,
    Status,
    StoredEvent,
    WaitingRedaction,
)
from services.events.streams import StreamPositions

CREATE = "m.room.create"
REDACTION = "m.room.redaction"
POWER_LEVELS: StateKey = ("m.room.power_levels", "")


@dataclass
class RoomsCore:
    """The per-replica pieces every batch shares."""

    server_name: str
    state_store: StateStore
    resolver: StateResolver
    # Events as stored (immutable for our purposes: auth and state), except
    # that the end of a partial state places its window's events again.
    event_cache: LruCache[str, StoredEvent]
    stream_positions: StreamPositions
    # Rooms this replica has seen in partial state: when one is seen out of
    # it, what the cache holds of its events may predate their new placing.
    partial_rooms: set[str] = field(default_factory=set)


def redaction_origin(event: Event) -> str:
    """The server an event counts as coming from for redactions.

    Spec: https://spec.matrix.org/v1.19/rooms/v3/#handling-redactions

    A redaction may redact events of its own server without the ``redact``
    power level: the sender's server, or in v1/v2 rooms (auth rule 11) the
    domain of the event id.
    """
    if event.room_version.redaction_auth_rule and ":" in event.event_id:
        return event.event_id.split(":", 1)[1]
    return event.sender_server


def waiting_redaction_applies(waiting: Iterable[WaitingRedaction], target: Event) -> bool:
    """Whether one of the redactions that waited for ``target`` may redact it."""
    origin = redaction_origin(target)
    return any(w.authorised or w.redactor_server == origin for w in waiting)


def redacted_copy(event: Event) -> tuple[Event, str]:
    """``event`` redacted, and its JSON as stored."""
    pdu = redact(event.pdu, event.room_version)
    return Event(pdu, event.room_version, event.event_id), encode_json(pdu).decode()


def group_ids_to_reserve(expected_events: int) -> int:
    """State group ids a batch of ``expected_events`` reserves when it opens."""
    return 2 * expected_events + 2


# Soft-failed or rejected events followed back when an event built on them
# supersedes forward extremities (RoomBatch._drop_extremities_behind).
MAX_SUPERSEDED_WALK = 1000

NOT_DIVULGING = "Your server isn't divulging details about prev_events referenced in this event."


def missing_dependencies(event: Event, known: Mapping[str, StoredEvent]) -> Outcome | None:
    """Why ``event`` cannot be checked yet (not stored), or None.

    The single place deciding what to do about unknown prev/auth events.
    Missing prevs are fetched before the batch (get_missing_events, by the
    backfill service); when they stay missing the caller may give the state
    before the event instead (``add_gap_fill`` / ``add_backfill``).
    """
    missing_prev = [p for p in event.prev_event_ids if p not in known]
    if missing_prev:
        return Outcome.refused(
            event.event_id,
            Reason.MISSING_PREV_EVENTS,
            f"missing prev_events {', '.join(missing_prev)}",
        )
    missing_auth = _missing_auth(event, known)
    if missing_auth is not None:
        return missing_auth
    stateless = [p for p in event.prev_event_ids if known[p].state_group_after is None]
    if stateless:
        return Outcome.refused(
            event.event_id,
            Reason.NO_STATE_AT_PREV_EVENTS,
            f"no state known at prev_events {', '.join(stateless)}",
        )
    return None


def _missing_auth(event: Event, known: Mapping[str, StoredEvent]) -> Outcome | None:
    missing = [a for a in event.auth_event_ids if a not in known]
    if not missing:
        return None
    return Outcome.refused(
        event.event_id, Reason.MISSING_AUTH_EVENTS, f"missing auth_events {', '.join(missing)}"
    )


def auth_order(pdus: Iterable[CheckedPdu]) -> list[CheckedPdu]:
    """``pdus`` with each after those of them it cites as auth events (ties: depth, then id).

    The order :meth:`RoomBatch.add_outlier` needs. Iterative: auth chains of
    big rooms are deeper than Python's recursion limit. A cycle (only a
    forged chain has one) is cut where it is met.
    """
    by_id = {p.event.event_id: p for p in pdus}
    ordered: list[CheckedPdu] = []
    entered: set[str] = set()
    for start in sorted(by_id, key=lambda e: (by_id[e].event.depth, e)):
        stack: list[tuple[str, bool]] = [(start, False)]
        while stack:
            event_id, expanded = stack.pop()
            if expanded:
                ordered.append(by_id[event_id])
                continue
            if event_id in entered:
                continue
            entered.add(event_id)
            stack.append((event_id, True))
            for auth_id in by_id[event_id].event.auth_event_ids:
                if auth_id in by_id and auth_id not in entered:
                    stack.append((auth_id, False))
    return ordered


@dataclass
class Rejudged:
    """What :meth:`RoomBatch.end_partial_state` judged differently on the full state."""

    rejected: int = 0  # accepted or soft-failed on the partial state, rejected now
    accepted: int = 0  # rejected on the partial state, accepted now
    soft_failed: int = 0  # rejected on the partial state, soft-failed now
    soft_failed_after_acceptance: int = 0  # accepted on the partial state, soft-failed now


class _StateBefore(enum.Enum):
    """Where the state before an event comes from."""

    PREV_EVENTS = enum.auto()  # resolved from its prev_events, which must be in the DAG
    PREV_EVENTS_ELSE_GIVEN = enum.auto()  # the caller's state when its prevs are missing
    GIVEN = enum.auto()  # always the caller's state


@dataclass
class AtCommit:
    """What a room transaction (:meth:`RoomBatch.transaction`, :meth:`RoomBatch.together`)
    writes with the positions it gives just before its commit: a /send's ``response``,
    set by the caller inside the block when every batch streams events; once committed,
    the response as ``stored`` (one stored before wins), or None if it was not (no batch
    streamed anything)."""

    response: storage.TransactionResponse | None = None
    stored: str | None = None


class PositionedBy(enum.Enum):
    """Who gave the stream positions of a write on kept heads (:meth:`RoomBatch.write`) or
    of a room transaction's streamed events."""

    # The write's own statement (migration 019), or the transaction just before its commit
    # (022), the stream lock being free.
    WRITE = "write"
    ROUND = "round"  # a round after its commit


class _Head(enum.Enum):
    """What an accepted event does to the room's forward extremities and current state."""

    ADVANCE = enum.auto()  # replaces its prev_events among the forward extremities
    ADVANCE_IF_LATEST = enum.auto()  # the same, unless a stored event builds on it already
    KEEP = enum.auto()  # history: never a forward extremity, never current state
    REPLACE = enum.auto()  # the only forward extremity; its state after is the current state


@dataclass(frozen=True)
class _Case:
    """One way into the DAG (see the module docstring's table)."""

    state_before: _StateBefore
    soft_fail: bool  # step 6: checked against the room's current state
    head: _Head
    streamed: bool
    stored_only_if_accepted: bool
    # Received events whose prev_events stay unknown get the spec's hint.
    hint_undivulged_prevs: bool


_LIVE = _Case(
    state_before=_StateBefore.PREV_EVENTS,
    soft_fail=True,
    head=_Head.ADVANCE,
    streamed=True,
    stored_only_if_accepted=False,
    hint_undivulged_prevs=True,
)
_GAP_FILL = dataclasses.replace(
    _LIVE, state_before=_StateBefore.PREV_EVENTS_ELSE_GIVEN, head=_Head.ADVANCE_IF_LATEST
)
_BACKFILL = _Case(
    state_before=_StateBefore.PREV_EVENTS_ELSE_GIVEN,
    soft_fail=False,
    head=_Head.KEEP,
    streamed=False,
    stored_only_if_accepted=False,
    hint_undivulged_prevs=False,
)
_LOCAL = dataclasses.replace(_LIVE, stored_only_if_accepted=True, hint_undivulged_prevs=False)
_JOIN = _Case(
    state_before=_StateBefore.GIVEN,
    soft_fail=False,
    head=_Head.REPLACE,
    streamed=True,
    stored_only_if_accepted=True,
    hint_undivulged_prevs=False,
)


@dataclass
class _Placement:
    """Where an event sits: the state before it and the events it cites."""

    before: StateGroup
    cited: dict[str, StoredEvent]
    # The state before is the caller's (its prevs are missing, or ours to replace).
    state_given: bool


class StaleHead(Exception):
    """The head a batch was opened on (:meth:`RoomBatch.transaction`'s ``known_head``) was
    not the room's head under its lock: nothing was written, the transaction rolls back."""


class RoomBatch:
    def __init__(self, core: RoomsCore, conn: asyncpg.Connection, room_id: str) -> None:
        self.core = core
        self.conn = conn
        self.room_id = room_id
        self.pending: dict[str, StoredEvent] = {}
        # Ids :meth:`prefetch` found nowhere: not looked up again one by one.
        self._absent: set[str] = set()
        self._writes: dict[str, EventWrite] = {}
        self._groups = PendingGroups()
        self._redactions: dict[str, str] = {}
        # Redactions of events not held yet: the room's (loaded at open), the
        # batch's new ones, and targets that arrived (their rows are dropped).
        self._waiting: dict[str, list[WaitingRedaction]] = {}
        self._new_waiting: list[WaitingRedaction] = []
        self._arrived_targets: set[str] = set()
        self._to_stream: list[str] = []
        self._stream_orders: list[int] = []  # places in the stream queue reserved at open
        # Opened on a head not read under the lock: the write checks it is current.
        self._expected: storage.ExpectedHead | None = None
        # Opened so outside any transaction: the write is one statement of its own.
        self._alone = False
        self.room: RoomRow
        self.version: RoomVersion
        self.extremities: dict[str, int] = {}
        self._initial_extremities: set[str] = set()
        self.current: StateGroup | None = None
        self._initial_current: StateGroup | None = None
        self.create_event: Event | None = None
        self.positions: dict[str, int] = {}
        # Local senders' transaction ids the opening looked up that were used before.
        self.sent_before: Mapping[tuple[str, str], tuple[str, int | None]] = {}
        # Partial state (a join with omit_members): the room's row, a new one
        # to write, the events placed on it here, and the end of it.
        self.partial: PartialStateRoom | None = None
        self._new_partial: PartialStateRoom | None = None
        self._partial_events: list[str] = []
        self._replacements: list[Replacement] = []
        self._ends_partial = False

    # ------------------------------------------------------------ lifecycle

    @classmethod
    @contextlib.asynccontextmanager
    async def transaction(
        cls,
        core: RoomsCore,
        pool: asyncpg.Pool,
        room_id: str,
        expected_events: int,
        *,
        stream_orders: int = 0,
        local_transactions: Sequence[tuple[str, str]] = (),
        events: Collection[Event] = (),
        stage: Stage = untimed,
        known_head: RoomHead | None = None,
        at_commit: AtCommit | None = None,
    ) -> AsyncIterator[tuple[RoomBatch, RoomHead] | None]:
        """A database transaction on the room (:func:`storage.room_transaction`: begun with
        its lock) and the batch opened on its head (:meth:`open_locked`), or None for an
        unknown room; committed when the block ends, rolled back when it raises.
        ``events``: those to be added, what they are or cite loaded (:meth:`prefetch`),
        which of them the event cache lacks told stored or not with the head. ``stage``
        times the opening as "room_open". The batch's streamed events get their positions
        just before the commit when the stream lock is free (:meth:`_position_at_commit`),
        with what ``at_commit`` holds.

        ``known_head``: a head this process had (:meth:`known_head`) to open on without
        reading it, for local events that need no new state group (neither state events
        nor redactions): the write checks it is still the room's head and raises
        :class:`StaleHead` if not. Transaction ids are then not looked up (the write
        checks none was used). No database transaction is begun then: the write is one
        statement that takes the room's lock and is its own transaction
        (:meth:`write`), and the block needs no commit."""
        if known_head is not None:
            # Its write flushes the WAL itself only when it gives the stream positions;
            # else the stream round the caller waits for does.
            assert stream_orders > 0
            async with pool.acquire() as conn:
                batch = cls(core, conn, room_id)
                async with stage("room_open"):
                    await batch._open_on_kept(known_head, alone=True)
                yield batch, known_head
            return
        async with pool.acquire() as conn, storage.room_transaction(conn, room_id):
            batch = cls(core, conn, room_id)
            uncached = batch.uncached(events)
            async with stage("room_open"):
                head = await batch.open_locked(
                    expected_events,
                    stream_orders=stream_orders,
                    local_transactions=local_transactions,
                    held_among=uncached,
                )
                if head is not None and events:
                    await batch.prefetch(events, uncached, head.held)
            yield None if head is None else (batch, head)
            positioned, stored = await cls._position_at_commit(conn, [batch], at_commit)
        cls._positioned(core, [batch], positioned, at_commit, stored)

    @classmethod
    @contextlib.asynccontextmanager
    async def together(
        cls,
        core: RoomsCore,
        pool: asyncpg.Pool,
        events_by_room: Mapping[str, Collection[Event]],
        *,
        streamed: bool,
        stage: Stage = untimed,
        local_sends: Mapping[str, Sequence[tuple[str, str]]] | None = None,
        known_heads: Mapping[str, RoomHead] | None = None,
        at_commit: AtCommit | None = None,
    ) -> AsyncIterator[dict[str, RoomBatch]]:
        """One database transaction for several rooms (those of a /send, or local sends
        into several rooms), begun with all their locks, the batches opened on their heads
        loaded in one round trip (unknown rooms left out) and what their ``events`` are or
        cite loaded. The rooms' batches run one after another on its connection;
        :meth:`write_together` writes them. Committed when the block ends (their streamed
        events positioned just before when the stream lock is free:
        :meth:`_position_at_commit`, with what ``at_commit`` holds); rolled back when it
        raises, nothing of any room stored then. ``streamed``: the batches take their
        places in the stream queue with their heads (the caller answers after the stream
        round, as for :func:`storage.room_head`). ``stage`` times the opening as
        "room_open". ``local_sends``: per room, the (sender, txn id) of each local send to
        be built in it, counted with its ``events``; the transaction ids used before are
        in the batch's :attr:`sent_before`.

        ``known_heads``: heads this process kept for some rooms (their ``local_sends``
        only, with no ``events``), opened on without reading them, as ``known_head`` of
        :meth:`transaction` for one room: :meth:`write_together` checks them all and
        raises :class:`StaleHead` if any moved; their transaction ids are not looked up.
        When every room is on a kept head no database transaction is begun: the write is
        one statement that takes the rooms' locks and is its own transaction.
        """
        local_sends = local_sends or {}
        known_heads = known_heads or {}
        if streamed and known_heads.keys() == events_by_room.keys():
            # Every room on a kept head: no transaction, the write is one statement.
            async with pool.acquire() as conn:
                batches = {room_id: cls(core, conn, room_id) for room_id in events_by_room}
                async with stage("room_open"):
                    for room_id, batch in batches.items():
                        assert not events_by_room[room_id]
                        await batch._open_on_kept(known_heads[room_id], alone=True)
                yield batches
            return
        async with (
            pool.acquire() as conn,
            storage.room_transaction(
                conn, *events_by_room, flushed_by_round=streamed and bool(known_heads)
            ),
        ):
            batches = {room_id: cls(core, conn, room_id) for room_id in events_by_room}
            to_read = [room_id for room_id in events_by_room if room_id not in known_heads]
            uncached = {
                room_id: batches[room_id].uncached(events_by_room[room_id]) for room_id in to_read
            }
            expected = {
                room_id: len(events_by_room[room_id]) + len(local_sends.get(room_id, ()))
                for room_id in to_read
            }
            async with stage("room_open"):
                heads = {}
                if to_read:
                    heads = await storage.room_heads(
                        conn,
                        [
                            (
                                room_id,
                                group_ids_to_reserve(count),
                                count if streamed else 0,
                                uncached[room_id],
                            )
                            for room_id, count in expected.items()
                        ],
                        {
                            room_id: [(sender, txn) for sender, txn in sends if txn]
                            for room_id, sends in local_sends.items()
                            if room_id not in known_heads
                        },
                    )
                opened = {}
                for room_id, batch in batches.items():
                    if room_id in known_heads:
                        assert not events_by_room[room_id]
                        await batch._open_on_kept(known_heads[room_id], alone=False)
                        opened[room_id] = batch
                        continue
                    head = heads.get(room_id)
                    if head is not None:
                        await batch._open_on(head)
                        await batch.prefetch(events_by_room[room_id], uncached[room_id], head.held)
                        opened[room_id] = batch
            yield opened
            positioned, stored = await cls._position_at_commit(
                conn, list(opened.values()), at_commit
            )
        cls._positioned(core, list(opened.values()), positioned, at_commit, stored)

    @staticmethod
    async def _position_at_commit(
        conn: asyncpg.Connection, batches: Sequence[RoomBatch], at_commit: AtCommit | None
    ) -> tuple[dict[str, int], str | None]:
        """Just before the commit of a transaction whose batches stream events: their
        positions, given in it when the stream lock is free (:func:`storage.position_if_free`:
        its commit is then flushed and no round is waited for after it), and the
        response ``at_commit`` holds as stored in the same statement."""
        if not any(batch._to_stream for batch in batches):
            return {}, None
        response = at_commit.response if at_commit is not None else None
        positioned, stored = await storage.position_if_free(conn, response)
        metrics.STREAMED_TRANSACTIONS.labels(
            PositionedBy.WRITE.value if positioned else PositionedBy.ROUND.value
        ).inc()
        return positioned, stored

    @staticmethod
    def _positioned(
        core: RoomsCore,
        batches: Sequence[RoomBatch],
        positioned: Mapping[str, int],
        at_commit: AtCommit | None = None,
        stored: str | None = None,
    ) -> None:
        """After the commit: the positions its transaction or write gave
        (:meth:`_position_at_commit`, :meth:`_write_alone`) are its batches'
        (:attr:`positions`, which :meth:`stream_committed` asks no round for) and, for rows
        of other callers it positioned, the next round's answer; the response stored with
        them is ``at_commit``'s."""
        if at_commit is not None:
            at_commit.stored = stored
        if not positioned:
            return
        core.stream_positions.given(positioned)
        for batch in batches:
            batch.positions.update((e, positioned[e]) for e in batch._to_stream if e in positioned)

    async def open(self, expected_events: int) -> bool:
        """Lock the room (in the caller's transaction) and open on its head; False if the
        room is unknown."""
        await storage.lock_room(self.conn, self.room_id)
        return await self.open_locked(expected_events) is not None

    async def open_locked(
        self,
        expected_events: int,
        *,
        stream_orders: int = 0,
        local_transactions: Sequence[tuple[str, str]] = (),
        held_among: Sequence[str] = (),
    ) -> RoomHead | None:
        """Open on the room's head, the caller's transaction holding the room's lock: the
        head loaded with what else the caller needs in one round trip
        (:func:`storage.room_head`); None if the room is unknown."""
        head = await storage.room_head(
            self.conn,
            self.room_id,
            group_ids_to_reserve(expected_events),
            stream_orders=stream_orders,
            local_transactions=local_transactions,
            held_among=held_among,
        )
        if head is not None:
            await self._open_on(head)
        return head

    async def _open_on_kept(self, head: RoomHead, *, alone: bool) -> None:
        """Open on a head this process kept (:meth:`known_head`), which the write checks;
        ``alone``: outside any transaction (:meth:`_write_alone`)."""
        await self._open_on(head)
        assert head.room.current_state_group is not None and len(head.extremities) == 1
        self._expected = storage.ExpectedHead(
            next(iter(head.extremities)), head.room.current_state_group
        )
        self._alone = alone

    async def _open_on(self, head: RoomHead) -> None:
        self._stream_orders = head.stream_orders
        self.sent_before = head.sent_before
        self.room = head.room
        self.version = room_version(self.room.room_version)
        self._groups.ids.extend(head.group_ids)
        if head.has_waiting_redactions:
            self._waiting = await storage.waiting_redactions(self.conn, self.room_id)
        if head.partial_state:
            self.partial = await storage.partial_state_room(self.conn, self.room_id)
        if self.partial is not None:
            self.core.partial_rooms.add(self.room_id)
        elif self.room_id in self.core.partial_rooms:
            # The room left partial state, maybe on another replica: the
            # window's events have new statuses and state groups there.
            self.core.partial_rooms.discard(self.room_id)
            self.core.event_cache.pop_where(lambda stored: stored.event.room_id == self.room_id)
        self.extremities = head.extremities
        self._initial_extremities = set(self.extremities)
        if self.room.current_state_group is not None:
            self.current = await self.core.state_store.get(self.conn, self.room.current_state_group)
            self._initial_current = self.current
        if self.room.create_event_id:
            create = (await self.events([self.room.create_event_id])).get(self.room.create_event_id)
            self.create_event = create.event if create else None

    async def prefetch(
        self, events: Iterable[Event], asked: Collection[str] = (), held: Collection[str] = ()
    ) -> None:
        """Load in one query what the batch's events cite or are.

        What is found nowhere is remembered as absent, so adding the events
        one by one asks the database nothing more about them (the room's
        lock keeps other replicas from storing events of this room meanwhile).
        ``asked``: ids already looked up under the lock (:meth:`uncached`, given
        to :func:`storage.room_head`), ``held`` those of them stored: the rest are
        absent without another query.
        """
        self._absent.update(set(asked) - set(held))
        ids: set[str] = set()
        for event in events:
            ids.add(event.event_id)
            ids.update(event.prev_event_ids)
            ids.update(event.auth_event_ids)
        found = await self.events(ids)
        self._absent.update(ids - found.keys())

    def uncached(self, events: Iterable[Event]) -> list[str]:
        """What ``events`` are or cite and the event cache lacks (:meth:`prefetch`)."""
        ids: set[str] = set()
        for event in events:
            ids.add(event.event_id)
            ids.update(event.prev_event_ids)
            ids.update(event.auth_event_ids)
        return sorted(i for i in ids if self.core.event_cache.get(i) is None)

    async def write(self, local_transactions: Sequence[tuple[str, str, str]] = ()) -> None:
        """Write everything the batch did (inside the caller's transaction), and the
        transaction ids of the local sends it holds: (sender, txn id, event id) rows."""
        await RoomBatch._write([(self, local_transactions)])

    @staticmethod
    async def write_together(
        batches: Sequence[RoomBatch],
        local_transactions: Mapping[str, Sequence[tuple[str, str, str]]] | None = None,
    ) -> None:
        """:meth:`write` for batches sharing a connection and transaction
        (:meth:`together`): their events and head changes in one statement when few;
        ``local_transactions`` per room as for :meth:`write`. No batches (every room of
        :meth:`together` unknown): nothing is written."""
        if not batches:
            return
        local_transactions = local_transactions or {}
        await RoomBatch._write(
            [(batch, local_transactions.get(batch.room_id, ())) for batch in batches]
        )

    @staticmethod
    async def _write(batches: Sequence[tuple[RoomBatch, Sequence[tuple[str, str, str]]]]) -> None:
        conn = batches[0][0].conn
        if batches[0][0]._alone:
            await RoomBatch._write_alone(batches)
            return
        groups = PendingGroups()
        for batch, _ in batches:
            groups.groups.extend(batch._groups.groups)
            groups.entries.extend(batch._groups.entries)
        await StateStore.write(conn, groups)
        # A checked insert (some batch opened on a kept head) places every streamed event.
        placed_by_insert = any(batch._expected is not None for batch, _ in batches)
        rooms = [await batch._room_writes(local, placed_by_insert) for batch, local in batches]
        if not await storage.insert_events(conn, rooms):
            raise StaleHead(batches[0][0].room_id)
        for (batch, _), room in zip(batches, rooms, strict=True):
            await batch._write_rest(room.stream_pending)

    @staticmethod
    async def _write_alone(
        batches: Sequence[tuple[RoomBatch, Sequence[tuple[str, str, str]]]],
    ) -> None:
        """The write of batches opened on kept heads outside any transaction: their events
        in one statement that takes the rooms' locks, checks the heads and is its own
        transaction. Anything else to write (a new state group, a changed current state,
        redactions: none of which a kept head's events should bring) raises
        :class:`StaleHead`, for the caller to go again on heads read in a transaction.
        When that statement found the stream lock free it gave the stream positions too
        (:attr:`positions`), so :meth:`stream_committed` waits for no round."""
        if not all(batch._writes_only_events() for batch, _ in batches):
            raise StaleHead(batches[0][0].room_id)
        rooms = [await batch._room_writes(local, True) for batch, local in batches]
        positions = await storage.insert_events_alone(batches[0][0].conn, rooms)
        if positions is None:
            raise StaleHead(batches[0][0].room_id)
        metrics.WRITES_ON_KEPT_HEADS.labels(
            PositionedBy.WRITE.value if positions else PositionedBy.ROUND.value
        ).inc()
        # When the statement took the stream lock it gave the positions (its commit
        # flushed): no round to wait for (:meth:`stream_committed`).
        RoomBatch._positioned(batches[0][0].core, [batch for batch, _ in batches], positions)

    def _writes_only_events(self) -> bool:
        """Whether the batch writes nothing but new events, their edges, the forward
        extremities' changes and transaction ids (:meth:`_write_rest` has nothing to do)."""
        initial = self._initial_current.id if self._initial_current else None
        current = self.current.id if self.current else None
        return (
            not self._groups.groups
            and not self._groups.entries
            and current == initial
            and not self._replacements
            and not self._redactions
            and not self._new_waiting
            and not self._arrived_targets
            and not self._ends_partial
            and self._new_partial is None
            and self.partial is None
            and all(event_id in self._writes for event_id in self._to_stream)
            and (self.create_event is None or bool(self.room.create_event_id))
            and len(self._writes) <= storage.INSERT_FEW_AT_MOST
            and not any(w.promote for w in self._writes.values())
        )

    async def _room_writes(
        self, local_transactions: Sequence[tuple[str, str, str]], placed_by_insert: bool
    ) -> storage.RoomWrites:
        stream_pending: dict[str, int] = {}
        if self._to_stream:
            if placed_by_insert:
                orders = [0] * len(self._to_stream)  # their places are taken by the insert
            elif len(self._to_stream) <= len(self._stream_orders):
                orders = self._stream_orders[: len(self._to_stream)]
            else:
                orders = await storage.reserve_stream_pending(self.conn, len(self._to_stream))
            stream_pending = dict(zip(self._to_stream, orders, strict=True))
        change = storage.HeadChange(
            list(self._initial_extremities - set(self.extremities)),
            list(set(self.extremities) - self._initial_extremities),
            local_transactions,
        )
        return storage.RoomWrites(
            self.room_id, list(self._writes.values()), stream_pending, change, self._expected
        )

    async def _write_rest(self, stream_pending: Mapping[str, int]) -> None:
        """What the batch writes after its events."""
        conn = self.conn
        await storage.replace_event_placements(conn, self.room_id, self._replacements)
        if self._ends_partial:
            await storage.delete_partial_state(conn, self.room_id)
        if self._new_partial is not None:
            await storage.insert_partial_state_room(conn, self._new_partial)
        if self.partial is not None:
            await storage.add_partial_state_events(conn, self.room_id, self._partial_events)
        for target, redacted_json in self._redactions.items():
            await storage.redact_event(conn, self.room_id, target, redacted_json)
        if self._new_waiting or self._arrived_targets:
            newly_waiting = [
                w for w in self._new_waiting if w.target_id not in self._arrived_targets
            ]
            await storage.update_waiting_redactions(
                conn, self.room_id, newly_waiting, self._arrived_targets
            )
        create_id = self.create_event.event_id if self.create_event else None
        if self.current is not None and self.current is not self._initial_current:
            await self._write_current_state()
            await storage.update_room_head(conn, self.room_id, self.current.id, create_id)
        elif create_id and not self.room.create_event_id:
            await storage.set_create_event(conn, self.room_id, create_id)
        # Events stored before and streamed now (revived by a resync).
        await storage.mark_stream_pending(
            conn, {e: o for e, o in stream_pending.items() if e not in self._writes}
        )

    def known_head(self) -> RoomHead | None:
        """After commit: the room's head as this batch left it, for a later batch to open
        on without reading it (``known_head`` of :meth:`transaction`); None for a room whose
        head that cannot stand for (several forward extremities, whose next local event
        may need a state group of its own; redactions waiting; a partial state)."""
        if (
            len(self.extremities) != 1
            or self.current is None
            or self.partial is not None
            or self._new_partial is not None
            or self._waiting
            or self._new_waiting
        ):
            return None
        create_id = self.create_event.event_id if self.create_event else self.room.create_event_id
        return RoomHead(
            RoomRow(self.room_id, self.room.room_version, create_id, self.current.id),
            dict(self.extremities),
            [],
            has_waiting_redactions=False,
            partial_state=False,
        )

    async def committed(self) -> None:
        """Call after commit, the connection given back: what was written may now be
        served from the cache, and the streamed events get their positions
        (:attr:`positions`) before this returns."""
        self.cache_committed()
        await self.stream_committed([self])

    @property
    def streams(self) -> bool:
        """Whether events of the batch get stream positions (:meth:`stream_committed`)."""
        return bool(self._to_stream)

    def cache_committed(self) -> None:
        """Call right after commit: what was written may now be served from the cache
        (then :meth:`stream_committed`)."""
        for event_id, stored in self.pending.items():
            self.core.event_cache.put(event_id, stored)
        for target in self._redactions:
            self.core.event_cache.pop(target)

    @staticmethod
    async def stream_committed(batches: Sequence[RoomBatch]) -> None:
        """The streamed events of ``batches`` (committed, of one replica) get their
        positions (:attr:`positions`) from one round: rooms of one /send share it rather
        than each start its own, each with its synchronous commit. Events whose write
        gave them their positions (:meth:`_write_alone`) need no round."""
        to_stream = [
            event_id
            for batch in batches
            for event_id in batch._to_stream
            if event_id not in batch.positions
        ]
        if to_stream:
            positions = await batches[0].core.stream_positions.assign(to_stream)
            for batch in batches:
                # Only the events asked for are answered: none of those already positioned.
                batch.positions.update(
                    (e, positions[e]) for e in batch._to_stream if e in positions
                )
        for batch in batches:
            for event_id, position in batch.positions.items():
                batch.pending[event_id].stream_position = position

    async def _write_current_state(self) -> None:
        assert self.current is not None
        old = self._initial_current.state if self._initial_current else {}
        new = self.current.state
        changed, removed = diff(old, new)
        changed_keys = list(changed)
        known = await self.events(new[key] for key in changed_keys)
        rows = []
        for key in changed_keys:
            stored = known.get(new[key])
            membership = stored.event.membership if stored is not None else None
            rows.append(storage.CurrentStateRow(key[0], key[1], new[key], membership))
        await storage.apply_current_state_delta(self.conn, self.room_id, removed, rows)

    # ------------------------------------------------------------ lookups

    async def events(self, event_ids: Iterable[str]) -> dict[str, StoredEvent]:
        found: dict[str, StoredEvent] = {}
        unknown: list[str] = []
        for event_id in event_ids:
            if event_id in found:
                continue
            stored = self.pending.get(event_id) or self.core.event_cache.get(event_id)
            if stored is not None:
                found[event_id] = stored
            elif event_id not in self._absent:
                unknown.append(event_id)
        if unknown:
            loaded = await storage.fetch_events(self.conn, unknown)
            for event_id, stored in loaded.items():
                self.core.event_cache.put(event_id, stored)
            found.update(loaded)
        return found

    async def state_events(
        self, state: Mapping[StateKey, str], keys: Iterable[StateKey]
    ) -> dict[StateKey, Event]:
        wanted = {key: state[key] for key in keys if key in state}
        loaded = await self.events(wanted.values())
        return {
            key: loaded[event_id].event for key, event_id in wanted.items() if event_id in loaded
        }

    # ------------------------------------------------------------ adding events

    async def add_live(self, checked: CheckedPdu, *, relayed_for: str | None = None) -> Outcome:
        """A live event from another server: /send, ``InputPdus`` NEW, send_join/leave/knock.

        Its prev_events must be in the DAG (gap filling runs before the batch).
        ``relayed_for``: the server whose send_join/leave/knock we accept it
        for; the sender service then delivers it to the room's other servers
        like one of ours.
        """
        return await self._add(checked, _LIVE, relayed_for=relayed_for)

    async def add_gap_fill(
        self, checked: CheckedPdu, state_before: Sequence[str] | None = None
    ) -> Outcome:
        """A live event pulled in to connect another one (get_missing_events).

        Checked like :meth:`add_live`; it becomes a forward extremity only if
        nothing stored builds on it yet. ``state_before``: ids of stored
        events making the state before it, used when its prev_events are
        missing from the DAG (they become backward extremities).
        """
        return await self._add(checked, _GAP_FILL, state_before)

    async def add_backfill(
        self, checked: CheckedPdu, state_before: Sequence[str] | None = None
    ) -> Outcome:
        """History older than what we hold (/backfill), added oldest first.

        Exempt from soft failure; never a forward extremity, never current
        state, never streamed. ``state_before`` as for :meth:`add_gap_fill`.
        """
        return await self._add(checked, _BACKFILL, state_before)

    async def add_local(
        self,
        event: Event,
        pdu: Mapping[str, Any],
        *,
        policy_signed_by: PolicyServer | None = None,
    ) -> Outcome:
        """An event built and signed here: stored only when accepted (else refused).

        In a room that uses a policy server it must carry its signature
        (:meth:`policy_server`; ``policy_signed_by``: already verified).
        """
        checked = CheckedPdu.built_here(event, dict(pdu))
        checked.policy_signed_by = policy_signed_by
        # Not looked up: built on the room's head under its lock, it cannot be stored
        # yet (an event id covers the prev_events, which any stored event moved on).
        self._absent.add(event.event_id)
        return await self._add(checked, _LOCAL)

    async def add_join(
        self,
        join: CheckedPdu,
        state_before: Sequence[str],
        *,
        partial: PartialStateRoom | None = None,
    ) -> Outcome:
        """Our join to a room another server hosts, with the state before it as that server gave it.

        ``state_before``: ids of stored events (the send_join answer's state,
        added with :meth:`add_outlier` earlier in this batch or stored
        before; rejected ones are left out) making the state before the join.
        The join is checked against its own auth events and that state (its
        prev_events are the resident's and need not be held). Accepted, it
        becomes the room's only forward extremity and the state after it
        the room's current state, whatever we held of the room before (a
        rejoin), and it is streamed; otherwise it is refused, not stored.
        The checks read only the state keys the auth rules name, so a state
        without most members can be given the same way: ``partial`` (the
        answer had ``members_omitted``) marks the room partial-state until
        :meth:`end_partial_state`. A full join ends a partial state.
        """
        if partial is not None:
            self._new_partial = partial
        elif self.partial is not None:
            self._ends_partial = True
        self.partial = partial
        return await self._add(join, _JOIN, state_before)

    async def _add(
        self,
        checked: CheckedPdu,
        case: _Case,
        state_before: Sequence[str] | None = None,
        *,
        relayed_for: str | None = None,
    ) -> Outcome:
        """Check ``checked`` against the room as ``case`` says, and queue it for writing.

        An event stored as an outlier is promoted to a DAG event.
        """
        event, redacted = checked.event, checked.redacted
        event_id = event.event_id
        if event_id in self.pending:
            return Outcome.duplicate(event_id)
        existing = await self._stored_as(event_id)
        if existing is not None and existing.status is not Status.OUTLIER:
            return Outcome.duplicate(event_id)
        promote = existing is not None
        if existing is not None:
            event, redacted = existing.event, existing.redacted
        placement = await self._place(event, case, state_before)
        if isinstance(placement, Outcome):
            return placement
        status, reason, error = await self._judge(event, placement, case, checked)
        if case.stored_only_if_accepted and status is not Status.ACCEPTED:
            assert reason is not None
            return Outcome.refused(event_id, reason, error)
        stored, after = await self._record(
            event, checked.pdu, redacted, status, error, placement.before, promote, relayed_for
        )
        if status is Status.ACCEPTED:
            await self._take_effect(event, placement.before, after, case)
        self._redact_on_arrival(stored)
        return Outcome(event_id, status, reason, error)

    async def _stored_as(self, event_id: str) -> StoredEvent | None:
        existing = (await self.events([event_id])).get(event_id)
        if existing is not None and existing.status is Status.OUTLIER:
            # Another replica may have promoted it since it was cached.
            existing = (await self._reload([event_id])).get(event_id)
        return existing

    async def _place(
        self, event: Event, case: _Case, state_before: Sequence[str] | None
    ) -> _Placement | Outcome:
        """The state before ``event`` and the events it cites, or why it cannot be checked yet."""
        cited = await self.events([*event.prev_event_ids, *event.auth_event_ids])
        stateless = [
            p for p in event.prev_event_ids if p in cited and cited[p].state_group_after is None
        ]
        if stateless:
            cited.update(await self._reload(stateless))
        missing_auth = _missing_auth(event, cited)
        if case.state_before is _StateBefore.GIVEN:
            assert state_before is not None
            return missing_auth or await self._given_placement(event, cited, state_before)
        problem = missing_dependencies(event, cited)
        if (
            problem is not None
            and missing_auth is None
            and state_before is not None
            and case.state_before is _StateBefore.PREV_EVENTS_ELSE_GIVEN
        ):
            return await self._given_placement(event, cited, state_before)
        if problem is not None:
            if case.hint_undivulged_prevs and problem.reason is Reason.MISSING_PREV_EVENTS:
                return dataclasses.replace(problem, error=f"{problem.error} ({NOT_DIVULGING})")
            return problem
        try:
            before = await self._state_before(event, [cited[p] for p in event.prev_event_ids])
        except MissingEventError as error:
            return Outcome.refused(
                event.event_id,
                Reason.STATE_RESOLUTION_INCOMPLETE,
                f"missing events for state resolution: {error}",
            )
        return _Placement(before, cited, state_given=False)

    async def _given_placement(
        self, event: Event, cited: dict[str, StoredEvent], state_ids: Sequence[str]
    ) -> _Placement | Outcome:
        try:
            before = await self._given_state(state_ids)
        except MissingEventError as error:
            return Outcome.refused(
                event.event_id, Reason.UNUSABLE_STATE_BEFORE, f"state before the event: {error}"
            )
        return _Placement(before, cited, state_given=True)

    async def _judge(
        self, event: Event, placement: _Placement, case: _Case, checked: CheckedPdu
    ) -> tuple[Status, Reason | None, str]:
        """Steps 4–7: accepted, rejected or soft-failed, and why."""
        auth_events = [placement.cited[a] for a in event.auth_event_ids]
        failure = self._check_own_auth_events(event, auth_events)
        if failure is not None:
            return Status.REJECTED, Reason.AUTH_EVENTS_DISALLOW, str(failure)
        state: Mapping[StateKey, str] = placement.before.state
        if self.partial is not None:
            state = await self._partial_auth_state(event, state, auth_events)
        failure = await self._check_against_state(event, state)
        if failure is not None:
            return Status.REJECTED, Reason.STATE_BEFORE_DISALLOWS, str(failure)
        if case.soft_fail and sender_blocked(event.sender):
            return (
                Status.SOFT_FAILED,
                Reason.SERVER_BLOCKED,
                "the sender's server is blocked on this server",
            )
        if case.soft_fail:
            # A partial current state cannot judge soft failure (MSC3902): skipped.
            failure = None
            if self.partial is None:
                failure = await self._soft_failure(event, placement.before, placement.state_given)
            if failure is not None:
                return (
                    Status.SOFT_FAILED,
                    Reason.CURRENT_STATE_DISALLOWS,
                    f"not allowed by the room's current state: {failure}",
                )
            unsigned = await self._policy_failure(checked)
            if unsigned is not None:
                return Status.SOFT_FAILED, unsigned[0], unsigned[1]
        return Status.ACCEPTED, None, ""

    async def policy_server(self) -> PolicyServer | None:
        """The policy server the room uses by its current state, if any.

        Spec: "Determining if a Policy Server is enabled in a room": a valid
        ``m.room.policy`` (empty state key) in the current state whose
        ``via`` server has a joined member there. NOTSPEC: one naming this
        server counts as none (we are not a policy server), as in Synapse.
        """
        if self.current is None:
            return None
        policy_id = self.current.state.get(POLICY_STATE_KEY)
        if policy_id is None:
            return None
        stored = (await self.events([policy_id])).get(policy_id)
        if stored is None:
            return None
        policy = policy_server_from_content(stored.event.content)
        if policy is None or policy.via == self.core.server_name:
            return None
        _, servers = await self.core.resolver.joined(self.conn, self.current, self)
        return policy if policy.via in servers else None

    async def _policy_failure(self, checked: CheckedPdu) -> tuple[Reason, str] | None:
        """Step 7: why the room's policy server has not recommended the event, or None."""
        event = checked.event
        if not needs_policy_signature(event.type, event.state_key):
            return None
        policy = await self.policy_server()
        if policy is None or checked.policy_signed_by == policy:
            return None
        if has_valid_policy_signature(event, policy):
            return None
        signatures = event.pdu.get("signatures")
        by_server = signatures.get(policy.via) if isinstance(signatures, Mapping) else None
        if isinstance(by_server, Mapping) and POLICY_SERVER_KEY_ID in by_server:
            return (
                Reason.POLICY_SIGNATURE_INVALID,
                f"the signature of the room's policy server {policy.via} does not verify",
            )
        return (
            Reason.POLICY_SIGNATURE_MISSING,
            f"not signed by the room's policy server {policy.via}",
        )

    async def _record(
        self,
        event: Event,
        pdu: Mapping[str, Any],
        redacted: bool,
        status: Status,
        error: str,
        before: StateGroup,
        promote: bool,
        relayed_for: str | None,
    ) -> tuple[StoredEvent, StateGroup]:
        """Queue the row of ``event`` with its state groups; the state after it."""
        event_id = event.event_id
        after = before
        # Counted first, so the group after a member event is counted from it.
        servers_before = await self._servers_at(before)
        if status is not Status.REJECTED and event.is_state:
            after = await self._state_after(before, event)
        if self.partial is not None:
            self._partial_events.append(event_id)
        stored = StoredEvent(
            event=event,
            status=status,
            rejection_reason=error if status is Status.REJECTED else "",
            redacted=redacted,
            state_group_before=before.id,
            state_group_after=after.id,
            servers_before=servers_before,
        )
        self.pending[event_id] = stored
        self._writes[event_id] = EventWrite(
            stored, encode_json(pdu).decode(), event.membership, promote, relayed_for
        )
        return stored, after

    async def _state_after(self, before: StateGroup, event: Event) -> StateGroup:
        """The group after a state event: ``before`` plus the event (a one-row delta)."""
        key = event.state_tuple
        after = self.core.state_store.derive(
            self.room_id, before, self._groups, delta={key: event.event_id}
        )
        if event.type == "m.room.member":
            replaced = before.state.get(key)
            previous = (await self.events([replaced])).get(replaced) if replaced else None
            membership = previous.event.membership if previous is not None else None
            self.core.resolver.derive_joined(after.id, before.id, event, membership)
        return after

    async def _servers_at(self, group: StateGroup) -> list[str]:
        """Servers to send an event to: joined ones, plus a partial-state room's known ones."""
        _, servers = await self.core.resolver.joined(self.conn, group, self)
        if self.partial is None:
            return list(servers)
        return sorted({*servers, self.partial.joined_via, *self.partial.servers})

    async def _partial_auth_state(
        self, event: Event, before: Mapping[StateKey, str], auth_events: Sequence[StoredEvent]
    ) -> Mapping[StateKey, str]:
        """What step 5 checks an event against while the room's state is partial.

        Our state before the event lacks members we were not told about, so
        (as MSC3902 and Synapse do) the state keys the auth rules read are
        resolved between that partial state and the event's own auth events:
        a member we never saw counts as its auth events say, while a ban or a
        demotion we hold still wins where state resolution says so. The
        resync checks the event again on the full state.
        """
        keys = auth_types_for_event(
            event.type, event.sender, event.state_key, event.content, self.version
        )
        keys.add((CREATE, ""))
        ours = {key: before[key] for key in keys if key in before}
        claimed = {
            a.event.state_tuple: a.event_id
            for a in auth_events
            if a.status is not Status.REJECTED and a.event.state_tuple in keys
        }
        if all(ours.get(key) == event_id for key, event_id in claimed.items()):
            return before
        create_id = self.create_event.event_id if self.create_event else None
        try:
            resolved = await self.core.resolver.resolve(
                self.conn, self.version, create_id, [ours, claimed], self
            )
        except MissingEventError:
            resolved = {**claimed, **ours}
        return {**before, **resolved}

    async def end_partial_state(self, state_before_join: Sequence[str]) -> Rejudged:
        """The full state at our join arrived: place every partial-state event again.

        ``state_before_join``: ids of stored events (the resync's ``/state_ids``
        answer, fetched and added as outliers first). Our join gets that state
        before it; each event placed since on the partial state (in depth
        order) gets the state resolved from its prev_events again and is
        judged again on it (steps 4 and 5), as Synapse re-checks the events of
        the partial-state window once it has the full state:

        - accepted or soft-failed: rejected now if the full state before it
          does not allow it (step 5; the room's view changes like a state
          reset).
        - rejected: allowed now if its own auth events (step 4, which does
          not depend on our state) and the full state before it (step 5)
          allow it.

        Then the window is replayed in the order its events arrived, on the
        full state: the forward extremities and the current state evolve as
        they would have on a server that had the full state all along, and
        step 6 (soft failure), skipped while the state was partial, is judged
        against the current state of the moment each event arrived. An event
        accepted on the partial state that it disallows becomes soft-failed:
        it was streamed already and stays so, but it is no longer a forward
        extremity and its state is not current state (Synapse leaves such
        events accepted). An event allowed again becomes soft-failed or
        accepted — a forward extremity unless something that arrived before
        it builds on it, and streamed, so local consumers see it. The
        replay's forward extremities and current state are the room's, and
        the room leaves partial state.
        """
        assert self.partial is not None
        join_id = self.partial.join_event_id
        ids = await storage.partial_state_event_ids(self.conn, self.room_id)
        if join_id not in ids:
            ids.insert(0, join_id)
        arrival = dict(await storage.partial_state_arrival_order(self.conn, self.room_id))
        stored = await self._reload(ids)
        self.partial = None
        self._ends_partial = True
        placed: dict[str, StateGroup] = {}
        given: set[str] = set()
        decided: dict[str, tuple[Status, str, StateGroup, StateGroup, list[str]]] = {}
        revived: set[str] = set()
        counts = Rejudged()
        for event_id in ids:
            old = stored.get(event_id)
            if old is None or old.state_group_before is None:
                continue
            event = old.event
            if event_id == join_id:
                before = await self._given_state(state_before_join)
            else:
                before, state_given = await self._replaced_state_before(event, old, placed)
                if state_given:
                    given.add(event_id)
            status, reason = old.status, old.rejection_reason
            if status in (Status.ACCEPTED, Status.SOFT_FAILED):
                failure = await self._check_against_state(event, before.state)
                if failure is not None:
                    status, reason = Status.REJECTED, str(failure)
                    counts.rejected += 1
            elif (
                status is Status.REJECTED
                and event_id != join_id
                and await self._allowed_again(event, before)
            ):
                # Accepted or soft-failed: judged in the replay below.
                status, reason = Status.SOFT_FAILED, ""
                revived.add(event_id)
            after = before
            servers = await self._servers_at(before)
            if status is not Status.REJECTED and event.is_state:
                after = await self._state_after(before, event)
            placed[event_id] = after
            decided[event_id] = (status, reason, before, after, servers)
            self._placed_again(stored[event_id], decided[event_id])
        assert join_id in decided, "our join has no state group"
        await self._replay_arrivals(join_id, arrival, stored, decided, given, revived, counts)
        for event_id, (status, reason, before, after, servers) in decided.items():
            self._replacements.append(
                Replacement(event_id, status, reason, before.id, after.id, servers)
            )
        return counts

    async def _replay_arrivals(
        self,
        join_id: str,
        arrival: Mapping[str, bool],
        stored: Mapping[str, StoredEvent],
        decided: dict[str, tuple[Status, str, StateGroup, StateGroup, list[str]]],
        given: set[str],
        revived: set[str],
        counts: Rejudged,
    ) -> None:
        """The window again in arrival order: forward extremities, current state, step 6.

        Our join replaced every forward extremity; each event accepted and
        streamed since (backfilled history never moves the head) advances the
        head as it did on arrival. Soft-failed and rejected events never do.
        Events that arrived before our join (an earlier join, left since) are
        not judged for soft failure: no current state of theirs is known.
        """
        if join_id not in arrival:
            arrival = {join_id: True, **arrival}
        self.extremities = {}
        self.current = None
        cited: set[str] = set()
        for event_id, streamed in arrival.items():
            if event_id not in decided:
                continue
            if event_id == join_id:
                join = stored[join_id].event
                self.extremities = {join_id: join.depth}
                self.current = decided[join_id][3]
                cited = set(join.prev_event_ids)
                continue
            event = stored[event_id].event
            status, reason, before, after, servers = decided[event_id]
            advances = streamed
            if event_id in revived:
                if await self._soft_fails_again(event, before, event_id in given):
                    counts.soft_failed += 1
                else:
                    status, reason, advances = Status.ACCEPTED, "", True
                    counts.accepted += 1
                    if event.type == REDACTION:
                        await self._apply_redaction(event, before)
                    self._to_stream.append(event_id)
            elif (
                status is Status.ACCEPTED
                and advances
                and await self._soft_failure(event, before, event_id in given) is not None
            ):
                status = Status.SOFT_FAILED
                counts.soft_failed_after_acceptance += 1
            decided[event_id] = (status, reason, before, after, servers)
            self._placed_again(stored[event_id], decided[event_id])
            if (
                status is Status.ACCEPTED
                and advances
                and event_id not in cited
                # Revived history (backfilled, say) that events build on stays behind.
                and not (event_id in revived and await self._has_successors(event_id))
            ):
                await self._advance_head(event, after)
            cited.update(event.prev_event_ids)

    def _placed_again(
        self, old: StoredEvent, decided: tuple[Status, str, StateGroup, StateGroup, list[str]]
    ) -> None:
        status, reason, before, after, servers = decided
        self.pending[old.event.event_id] = dataclasses.replace(
            old,
            status=status,
            rejection_reason=reason,
            state_group_before=before.id,
            state_group_after=after.id,
            servers_before=servers,
        )

    async def _allowed_again(self, event: Event, before: StateGroup) -> bool:
        """Whether an event rejected on the partial state passes steps 4 and 5 on the full state."""
        cited = await self.events(event.auth_event_ids)
        if any(a not in cited for a in event.auth_event_ids):
            return False
        own = self._check_own_auth_events(event, [cited[a] for a in event.auth_event_ids])
        if own is not None:
            return False
        return await self._check_against_state(event, before.state) is None

    async def _soft_fails_again(
        self, event: Event, before: StateGroup, prevs_missing: bool
    ) -> bool:
        """Step 6 (and the server blocks, step 7) for an event allowed again at the resync."""
        if sender_blocked(event.sender):
            return True
        if await self._soft_failure(event, before, prevs_missing) is not None:
            return True
        return await self._policy_failure(CheckedPdu(event, dict(event.pdu))) is not None

    async def _replaced_state_before(
        self, event: Event, old: StoredEvent, placed: Mapping[str, StateGroup]
    ) -> tuple[StateGroup, bool]:
        """The state before a window event on the full state, and whether it was given."""
        store = self.core.state_store
        groups: dict[int, StateGroup] = {}
        for prev in event.prev_event_ids:
            if prev in placed:
                groups[placed[prev].id] = placed[prev]
                continue
            known = (await self.events([prev])).get(prev)
            if known is not None and known.state_group_after is not None:
                group = await store.get(self.conn, known.state_group_after)
                groups[group.id] = group
        if not groups:
            # Its state was given (its prevs are missing): keep it.
            assert old.state_group_before is not None
            return await store.get(self.conn, old.state_group_before), True
        if len(groups) == 1:
            return next(iter(groups.values())), False
        try:
            return await self._resolve_groups(list(groups.values())), False
        except MissingEventError:
            assert old.state_group_before is not None
            return await store.get(self.conn, old.state_group_before), False

    async def _take_effect(
        self, event: Event, before: StateGroup, after: StateGroup, case: _Case
    ) -> None:
        """What an accepted event changes: the head, a redaction, the stream."""
        if case.head is _Head.ADVANCE or (
            case.head is _Head.ADVANCE_IF_LATEST and not await self._has_successors(event.event_id)
        ):
            await self._advance_head(event, after)
        elif case.head is _Head.REPLACE:
            self.extremities = {event.event_id: event.depth}
            self.current = after
        if event.type == REDACTION:
            await self._apply_redaction(event, before)
        if case.streamed:
            self._to_stream.append(event.event_id)
        if event.type == CREATE:
            self.create_event = event

    async def _soft_failure(
        self, event: Event, before: StateGroup, prevs_missing: bool
    ) -> AuthError | None:
        """Why the room's current state no longer allows ``event`` (soft failure), or None.

        Spec: server-server API, "Checks performed on receipt of a PDU" step
        6 and "Soft failure": the current state is the state resolved across
        the forward extremities (``self.current``). When the event's
        prev_events are not in our DAG (a gap that stayed open, its state
        given), what happened in the gap is unknown to that state, so it is
        first resolved together with the state before the event, as Synapse
        does: a change made on the event's side of the gap (a promotion, say)
        then counts, and state resolution still lets a ban or a demotion made
        on our side win. The same state as before the event: nothing new.
        """
        current = self.current
        if current is None or current.id == before.id:
            return None
        state: Mapping[StateKey, str] = current.state
        if prevs_missing and current.state != before.state:
            create_id = self.create_event.event_id if self.create_event else None
            try:
                state = await self.core.resolver.resolve(
                    self.conn, self.version, create_id, [current.state, before.state], self
                )
            except MissingEventError:
                # An auth chain we cannot complete: judge by our own current state.
                state = current.state
        return await self._check_against_state(event, state)

    async def _reload(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
        """``event_ids`` from the database, past the cache (outliers may have been promoted)."""
        loaded = await storage.fetch_events(self.conn, event_ids)
        for event_id, stored in loaded.items():
            self.core.event_cache.put(event_id, stored)
        return loaded

    async def _given_state(self, state_ids: Sequence[str]) -> StateGroup:
        """A state group from a caller's list of stored state events (rejected ones left out)."""
        loaded = await self.events(state_ids)
        unknown = [e for e in state_ids if e not in loaded]
        if unknown:
            raise MissingEventError(f"unknown state events {', '.join(unknown[:5])}")
        state: dict[StateKey, str] = {}
        for event_id in state_ids:
            stored = loaded[event_id]
            if stored.event.room_id != self.room_id and stored.event.type != CREATE:
                raise MissingEventError(f"state event {event_id} is of another room")
            if not stored.event.is_state or stored.status is Status.REJECTED:
                continue
            state[stored.event.state_tuple] = event_id
        return self.core.state_store.derive(self.room_id, None, self._groups, state=state)

    async def add_outlier(self, checked: CheckedPdu) -> Outcome:
        """Store an event without a place in the DAG (auth chains, a join's state).

        Only checked against its own auth events (step 4), which must be held:
        no state, no stream position, no effect on extremities or current state.
        """
        event = checked.event
        event_id = event.event_id
        if event_id in self.pending or event_id in await self.events([event_id]):
            return Outcome.duplicate(event_id)
        auth = await self.events(event.auth_event_ids)
        missing = _missing_auth(event, auth)
        if missing is not None:
            return missing
        if event.type == CREATE and self.create_event is None and self._is_own_create(event):
            self.create_event = event
        failure = self._check_own_auth_events(event, [auth[a] for a in event.auth_event_ids])
        if failure is None:
            status, reason, error = Status.OUTLIER, None, ""
        else:
            status, reason, error = Status.REJECTED, Reason.AUTH_EVENTS_DISALLOW, str(failure)
        stored = StoredEvent(event=event, status=status, rejection_reason=error)
        stored.redacted = checked.redacted
        self.pending[event_id] = stored
        self._writes[event_id] = EventWrite(
            stored, encode_json(checked.pdu).decode(), event.membership
        )
        self._redact_on_arrival(stored)
        return Outcome(event_id, status, reason, error)

    def _is_own_create(self, event: Event) -> bool:
        """Whether a create event can be this room's (from v12 the room id names it)."""
        if self.version.room_id_from_create_event:
            return self.room_id == "!" + event.event_id[1:]
        return event.room_id == self.room_id

    def _check_own_auth_events(
        self, event: Event, auth_events: list[StoredEvent]
    ) -> AuthError | None:
        """Step 4 (auth rule 3 and its 3.3 "rejected auth event" part included)."""
        try:
            check_auth_events_structure(event, [a.event for a in auth_events])
            for auth_event in auth_events:
                if auth_event.status is Status.REJECTED:
                    raise AuthError("3.3", f"auth event {auth_event.event_id} was rejected")
            auth_state = {a.event.state_tuple: a.event for a in auth_events}
            if event.type != CREATE and not self.version.create_event_in_auth_events:
                if self.create_event is None:
                    raise AuthError("2", "the room's create event is unknown")
                auth_state[(CREATE, "")] = self.create_event
            check_auth_rules(event, auth_state)
        except AuthError as error:
            return error
        return None

    async def _check_against_state(
        self, event: Event, state: Mapping[StateKey, str]
    ) -> AuthError | None:
        """Auth rules against a state map (steps 5 and 6)."""
        keys = auth_types_for_event(
            event.type, event.sender, event.state_key, event.content, self.version
        )
        keys.add((CREATE, ""))
        cited = {key: state[key] for key in keys if key in state}
        if event.type != CREATE and self._cites_exactly(event, cited):
            return None  # same auth state as its own auth events: already checked
        auth_state = await self.state_events(state, keys)
        try:
            check_auth_rules(event, auth_state)
        except AuthError as error:
            return error
        return None

    def _cites_exactly(self, event: Event, cited: Mapping[StateKey, str]) -> bool:
        own = set(event.auth_event_ids)
        if not self.version.create_event_in_auth_events and self.create_event is not None:
            own.add(self.create_event.event_id)
        return own == set(cited.values())

    async def _state_before(self, event: Event, prevs: list[StoredEvent]) -> StateGroup:
        store = self.core.state_store
        group_ids = list(
            dict.fromkeys(p.state_group_after for p in prevs if p.state_group_after is not None)
        )
        if not group_ids:
            return store.derive(self.room_id, None, self._groups, state={})
        if len(group_ids) == 1:
            return await store.get(self.conn, group_ids[0])
        groups = [await store.get(self.conn, group_id) for group_id in group_ids]
        return await self._resolve_groups(groups)

    async def _resolve_groups(self, groups: list[StateGroup]) -> StateGroup:
        create_id = self.create_event.event_id if self.create_event else None
        resolved = await self.core.resolver.resolve(
            self.conn, self.version, create_id, [g.state for g in groups], self
        )
        for group in groups:
            if group.state == resolved:
                return group
        base = max(groups, key=lambda g: len(g.state))
        return self.core.state_store.derive(self.room_id, base, self._groups, state=resolved)

    async def _has_successors(self, event_id: str) -> bool:
        if any(event_id in p.event.prev_event_ids for p in self.pending.values()):
            return True
        return await storage.has_successors(self.conn, event_id)

    async def _advance_head(self, event: Event, after: StateGroup) -> None:
        for prev in event.prev_event_ids:
            self.extremities.pop(prev, None)
        if self.extremities:
            await self._drop_extremities_behind(event.prev_event_ids)
        self.extremities[event.event_id] = event.depth
        if len(self.extremities) == 1:
            self.current = after
            return
        heads = await self.events(self.extremities)
        group_ids = list(
            dict.fromkeys(
                h.state_group_after for h in heads.values() if h.state_group_after is not None
            )
        )
        groups = [await self.core.state_store.get(self.conn, g) for g in group_ids]
        self.current = groups[0] if len(groups) == 1 else await self._resolve_groups(groups)

    async def _drop_extremities_behind(self, prev_ids: Sequence[str]) -> None:
        """Drop the forward extremities reached from ``prev_ids`` through events not accepted.

        Soft-failed and rejected events never become extremities, so an
        event built on them would otherwise leave their accepted ancestors as
        extremities that a descendant already supersedes (after a netsplit:
        the other side's first accepted event, then the soft-failed ones,
        then the event that connects them). The walk follows only events that
        are not accepted, at most :data:`MAX_SUPERSEDED_WALK` of them.
        """
        seen: set[str] = set()
        todo = list(prev_ids)
        while todo and len(seen) < MAX_SUPERSEDED_WALK:
            known = await self.events(e for e in todo if e not in seen)
            seen.update(todo)
            todo = []
            for stored in known.values():
                if stored.status in (Status.SOFT_FAILED, Status.REJECTED):
                    for prev in stored.event.prev_event_ids:
                        self.extremities.pop(prev, None)
                        todo.append(prev)

    async def _apply_redaction(self, redaction: Event, before: StateGroup) -> None:
        """An accepted redaction: redact its target, or wait for it.

        Spec: https://spec.matrix.org/v1.19/rooms/v3/#handling-redactions

        Applied when the redactor's power level in the state before the
        redaction reaches ``redact`` or the target comes from the redactor's
        server; a redaction failing both is kept but never applied. When the
        target is not held yet the decision waits for it
        (:meth:`_redact_on_arrival`); the power-level half is decided now.
        """
        target_id = redaction.redacts
        if target_id is None:
            return
        target = (await self.events([target_id])).get(target_id)
        if target is None:
            waiting = WaitingRedaction(
                target_id,
                redaction.event_id,
                await self._may_redact_any(redaction, before),
                redaction_origin(redaction),
            )
            self._waiting.setdefault(target_id, []).append(waiting)
            self._new_waiting.append(waiting)
            return
        if target.event.room_id != self.room_id or target.redacted:
            return
        if redaction_origin(target.event) != redaction_origin(
            redaction
        ) and not await self._may_redact_any(redaction, before):
            return
        self._redact(target)

    async def _may_redact_any(self, redaction: Event, before: StateGroup) -> bool:
        """The redactor's power level in ``before`` reaches the room's ``redact`` level."""
        if self.create_event is None:
            return False
        power = await self.state_events(before.state, [POWER_LEVELS])
        pl_event = power.get(POWER_LEVELS)
        level = user_power_level(redaction.sender, pl_event, self.create_event)
        return level >= named_power_level("redact", pl_event)

    def _redact_on_arrival(self, stored: StoredEvent) -> None:
        """``stored`` was just added: apply the redactions that waited for it."""
        waiting = self._waiting.pop(stored.event_id, None)
        if not waiting:
            return
        self._arrived_targets.add(stored.event_id)
        if stored.redacted or stored.event.room_id != self.room_id:
            return
        if waiting_redaction_applies(waiting, stored.event):
            self._redact(stored)

    def _redact(self, target: StoredEvent) -> None:
        """Store ``target`` redacted: its row in this batch, or an update of the stored one."""
        target_id = target.event_id
        redacted_event, redacted_json = redacted_copy(target.event)
        write = self._writes.get(target_id)
        if write is not None and not write.promote:
            write.pdu_json = redacted_json
            write.stored.redacted = True
            write.stored.event = redacted_event
        else:
            self._redactions[target_id] = redacted_json

    # ------------------------------------------------------------ local building

    def prev_events_for_new_event(self, limit: int = 10) -> tuple[list[str], int]:
        """Up to ``limit`` most recent forward extremities and the new event's depth."""
        heads = sorted(self.extremities.items(), key=lambda item: -item[1])[:limit]
        depth = max((d for _, d in heads), default=0) + 1
        return [event_id for event_id, _ in heads], depth

    def writes_for(self, event_id: str) -> EventWrite | None:
        return self._writes.get(event_id)
