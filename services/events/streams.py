"""StreamEvents: replay from a durable position, then follow live writes of every replica.

Rows are committed without a position; right after, a short statement of its
own gives every committed pending row, whichever room or replica wrote it, a
position under the stream lock held to its commit (:class:`StreamPositions`,
migration 012). So rows become visible in position order and "everything after
N" is a plain range read, while rooms commit in parallel. A write that is
its own transaction (a lone local send on a kept head) gives the positions in
its own statement when the stream lock is free (migration 019), as a round
would, the lock held to its commit as well. Each replica
runs one :class:`StreamHub`: it LISTENs on a dedicated connection, reads the
new rows once per wake-up (or once a second, in case a notification was
missed) and fans them out to its subscribers' bounded queues. A subscriber
whose queue is full is marked lagging and stops receiving; it drains what it
has, then goes back to reading the database from its own position before
re-attaching — so it falls behind but never loses an item.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from mxfed.held_connection import (
    CONNECTION_ERRORS,
    Backoff,
    DatabaseUnavailable,
    HeldConnection,
    is_connection_error,
    log_failure,
)
from mxfed.waits import event_set_within
from services.events import metrics, storage
from services.events.reads import EventView

log = logging.getLogger(__name__)

PAGE = 500
# Entries in one StreamEventBatches message at most.
MAX_BATCH = 100
QUEUE_SIZE = 2000


@dataclass
class StreamEntry:
    position: int
    event: EventView | None = None
    servers_before: list[str] = field(default_factory=list)
    sender: str = ""
    event_type: str = ""
    ephemeral: dict[str, Any] | None = None
    relayed_for: str = ""

    @property
    def room_id(self) -> str:
        if self.event is not None:
            return self.event.room_id
        assert self.ephemeral is not None
        return self.ephemeral["room_id"]


@dataclass
class StreamFilter:
    room_id: str = ""
    local_senders_only: bool = False
    include_ephemeral: bool = False
    # Only events of these types (empty: all): a follower of joins is not sent every
    # message, which cost the events service its encoding and the follower its decoding.
    event_types: frozenset[str] = frozenset()

    def matches(self, entry: StreamEntry, server_name: str) -> bool:
        if self.room_id and entry.room_id != self.room_id:
            return False
        if entry.ephemeral is not None:
            if not self.include_ephemeral:
                return False
            sender = entry.ephemeral["user_id"]
        else:
            if self.event_types and entry.event_type not in self.event_types:
                return False
            sender = entry.sender
            if entry.relayed_for:
                return True  # ours to deliver, though its sender is remote
        return not self.local_senders_only or sender.split(":", 1)[-1] == server_name


class Subscription:
    def __init__(self, stream_filter: StreamFilter) -> None:
        self.filter = stream_filter
        self.queue: asyncio.Queue[StreamEntry] = asyncio.Queue(QUEUE_SIZE)
        self.lagging = False

    def offer(self, entry: StreamEntry) -> None:
        if self.lagging:
            return
        try:
            self.queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.lagging = True
            metrics.STREAM_SUBSCRIBERS_LAGGING.inc()

    def attach(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.lagging = False


class StreamPositions:
    """This replica's way to give committed rows their stream positions: group commit.

    A caller whose rows are committed (its connection given back) waits for a
    round that starts after it asked (whose synchronous commit also makes the
    caller's own commit durable); callers that ask while a round runs share
    the next one. A round gives every pending row its position, so a replica
    that died between its commit and its round loses nothing: the next round
    of any replica, or :meth:`run_sweeper`, covers its rows.

    Given ``database_url``, rounds run on a connection of their own: taken
    from the pool, a round queued behind the room batches waiting for one (a
    /send over 20 rooms), and every room that had committed waited for them.
    """

    # Seconds a round waits for its connection before failing (the database is away).
    CONNECT_WAIT = 2.0

    def __init__(self, pool: asyncpg.Pool, database_url: str | None = None) -> None:
        self.pool = pool
        self._held = (
            None
            if database_url is None
            else HeldConnection.from_url(database_url, "events.stream_positions")
        )
        self._next: asyncio.Future[dict[str, int]] | None = None
        self._rounds: asyncio.Task[None] | None = None
        # What the last round positioned: a caller that asked while it ran waits for the
        # next round, but its rows, committed before that round's statement, may be there.
        self._last_round: dict[str, int] = {}
        # What the last write that took the stream lock itself positioned (:meth:`given`).
        self._last_given: dict[str, int] = {}

    async def assign(self, event_ids: Sequence[str] = ()) -> dict[str, int]:
        """After a round that began after this call: the positions of ``event_ids``."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        round_done = self._next
        if self._rounds is None:
            self._rounds = asyncio.create_task(self._run_rounds(), name="events-stream-positions")
        assigned = await asyncio.shield(round_done)
        positions = {e: assigned[e] for e in event_ids if e in assigned}
        missing = [e for e in event_ids if e not in assigned]
        if missing:  # given by another replica's round
            async with self.pool.acquire() as conn:
                positions.update(await storage.stream_positions_of(conn, missing))
        return positions

    def given(self, positions: Mapping[str, int]) -> None:
        """Positions a write gave itself, the stream lock taken in its own statement
        (migration 019): the rows of other callers it positioned are answered to them by
        the next round (which finds them positioned) without a look-up."""
        self._last_given = dict(positions)

    async def _run_rounds(self) -> None:
        try:
            while self._next is not None:
                round_done, self._next = self._next, None
                try:
                    await self._round(round_done)
                except Exception as exc:  # every waiter of this round gets it
                    if not round_done.done():
                        round_done.set_exception(exc)
                        round_done.exception()  # retrieved: no "never retrieved" warning
                finally:
                    if not round_done.done():  # cancelled (shutdown): waiters must not hang
                        round_done.cancel()
        finally:
            self._rounds = None

    async def _round(self, round_done: asyncio.Future[dict[str, int]]) -> None:
        if self._held is None:
            async with self.pool.acquire() as conn:
                with metrics.STREAM_ROUND_SECONDS.time():
                    assigned = await storage.assign_stream_positions(conn)
                self._done(round_done, assigned)  # not after the release
                return
        try:
            async with asyncio.timeout(self.CONNECT_WAIT):
                await self._held.connection()
        except TimeoutError:
            raise DatabaseUnavailable("no connection for stream positions") from None
        with metrics.STREAM_ROUND_SECONDS.time():
            self._done(round_done, await self._held.run(storage.assign_stream_positions))

    def _done(self, round_done: asyncio.Future[dict[str, int]], assigned: dict[str, int]) -> None:
        round_done.set_result({**self._last_round, **self._last_given, **assigned})
        self._last_round = assigned

    async def close(self) -> None:
        """Close the rounds' own connection (at shutdown: rounds after this fail)."""
        if self._held is not None:
            await self._held.close()

    async def run_sweeper(self, interval: float = 5.0) -> None:
        """Give rows left pending (a replica died after its commit) their positions."""
        while True:
            try:
                await self.assign()
            except (asyncpg.PostgresError, *CONNECTION_ERRORS) as exc:
                log_failure(log, "stream position sweep failed", exc)
            await asyncio.sleep(interval)


def _event_entry(row: asyncpg.Record) -> StreamEntry:
    view = EventView.from_row(row)
    return StreamEntry(
        row["stream_position"],
        view,
        list(row["servers_before"]),
        sender=row["sender"],
        event_type=row["type"],
        relayed_for=row["relayed_for"] or "",
    )


async def read_entries(
    conn: asyncpg.Connection, after: int, room_id: str, include_ephemeral: bool, limit: int = PAGE
) -> tuple[list[StreamEntry], bool]:
    """Entries after ``after`` in position order; True when there may be more."""
    if not include_ephemeral:
        rows = await storage.stream_events_after(conn, after, limit, room_id or None)
        return [_event_entry(row) for row in rows], len(rows) == limit
    rows = await storage.stream_after_with_ephemeral(conn, after, limit, room_id or None)
    entries = [
        StreamEntry(row["stream_position"], ephemeral=_ephemeral(row))
        if row["ephemeral"]
        else _event_entry(row)
        for row in rows
    ]
    # A full page of one kind: the other's entries past its last are left for the next read.
    events_read = [e.position for e in entries if e.ephemeral is None]
    ephemeral_read = [e.position for e in entries if e.ephemeral is not None]
    full = [read[-1] for read in (events_read, ephemeral_read) if len(read) == limit]
    if full:
        cut = min(full)
        entries = [entry for entry in entries if entry.position <= cut]
    return entries, bool(full)


def _ephemeral(row: asyncpg.Record) -> dict[str, Any]:
    return {
        key: row[key]
        for key in ("room_id", "kind", "user_id", "typing", "receipt_type", "event_id", "data_json")
    }


class StreamHub:
    """This replica's follower of the stream: one LISTEN connection, fan-out to subscribers.

    The LISTEN connection is a :class:`~mxfed.held_connection.HeldConnection`:
    when it is lost the hub polls until it is back, and every new connection
    wakes the hub to read from its own position, so notifications missed
    meanwhile lose nothing. The position survives a restart of :meth:`run`.
    """

    def __init__(self, pool: asyncpg.Pool, server_name: str, poll_interval: float = 1.0) -> None:
        self.pool = pool
        self.server_name = server_name
        self.poll_interval = poll_interval
        self.position = 0
        self._started = False
        self._subscribers: set[Subscription] = set()
        self._wake = asyncio.Event()
        self._listen = HeldConnection.from_pool(
            pool, "events.stream_hub", on_open=self._listen_on, on_lost=self._wake.set
        )
        self._backoff = Backoff()

    async def run(self) -> None:
        """Follow the stream until cancelled (restartable: the position is kept)."""
        try:
            while True:
                try:
                    if not self._started:
                        async with self.pool.acquire() as conn:
                            self.position = await storage.max_stream_position(conn)
                        self._started = True
                    await self._ensure_listening()
                    await event_set_within(self._wake, self.poll_interval)
                    self._wake.clear()
                    await self._deliver_new()
                    self._backoff.reset()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not (is_connection_error(exc) or isinstance(exc, asyncpg.PostgresError)):
                        raise
                    log.warning(
                        "stream hub read failed; retrying", extra={"error": str(exc) or repr(exc)}
                    )
                    await self._backoff.wait()
        finally:
            await self._listen.close()
            self._listen = HeldConnection.from_pool(
                self.pool, "events.stream_hub", on_open=self._listen_on, on_lost=self._wake.set
            )

    async def _listen_on(self, connection: asyncpg.Connection) -> None:
        await connection.add_listener(storage.NOTIFY_CHANNEL, self._notified)
        self._wake.set()  # whatever was committed while we were not listening

    async def _ensure_listening(self) -> None:
        if self._listen.alive:
            return
        try:
            async with asyncio.timeout(self.poll_interval):
                await self._listen.connection()
        except TimeoutError:
            log.warning("stream hub cannot LISTEN; polling")

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _deliver_new(self) -> None:
        if not self._subscribers:
            async with self.pool.acquire() as conn:
                latest = await storage.max_stream_position(conn)
            if not self._subscribers:
                self.position = latest
                return
            # Someone subscribed while we looked: its replay may have ended before entries
            # up to ``latest`` were committed, so deliver them rather than skip past them.
        more = True
        while more:
            async with self.pool.acquire() as conn:
                entries, more = await read_entries(conn, self.position, "", True)
            for entry in entries:
                for subscription in list(self._subscribers):
                    if subscription.filter.matches(entry, self.server_name):
                        subscription.offer(entry)
                self.position = entry.position

    async def subscribe(
        self, stream_filter: StreamFilter, after_position: int
    ) -> AsyncIterator[StreamEntry]:
        async for batch in self.subscribe_batches(stream_filter, after_position):
            for entry in batch:
                yield entry

    async def subscribe_batches(
        self, stream_filter: StreamFilter, after_position: int, most: int = MAX_BATCH
    ) -> AsyncIterator[list[StreamEntry]]:
        """:meth:`subscribe`'s entries, those ready together (up to ``most``) in one list."""
        subscription = Subscription(stream_filter)
        self._subscribers.add(subscription)
        try:
            position = after_position
            if position < 0:
                async with self.pool.acquire() as conn:
                    position = await storage.max_stream_position(conn)
            attached = False
            while True:
                if not attached:
                    subscription.attach()
                    attached = True
                    async for page in self._replay(stream_filter, position):
                        position = page[-1].position
                        yield page
                if subscription.lagging and subscription.queue.empty():
                    attached = False
                    continue
                batch = [await subscription.queue.get()]
                while len(batch) < most and not subscription.queue.empty():
                    batch.append(subscription.queue.get_nowait())
                batch = [entry for entry in batch if entry.position > position]
                if batch:
                    position = batch[-1].position
                    yield batch
        finally:
            self._subscribers.discard(subscription)

    async def _replay(
        self, stream_filter: StreamFilter, after: int
    ) -> AsyncIterator[list[StreamEntry]]:
        """The stored entries after ``after`` that match, a page (non-empty) at a time."""
        more = True
        while more:
            async with self.pool.acquire() as conn:
                entries, more = await read_entries(
                    conn, after, stream_filter.room_id, stream_filter.include_ephemeral
                )
            if entries:
                after = entries[-1].position
            page = [e for e in entries if stream_filter.matches(e, self.server_name)]
            if page:
                yield page
