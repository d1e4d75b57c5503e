"""Delivering the queues: one worker per active destination, one transaction in flight.

``PUT /_matrix/federation/v1/send/{txnId}``
(spec: https://spec.matrix.org/v1.19/server-server-api/#transactions).
A :class:`DestinationWorker` runs for each destination whose lease this
replica holds and which has something queued (or is waiting out its
backoff). It takes the next transaction from storage — recorded there before
it is sent (or, for one ingest gave it, by the time its answer is handled), so
a retry, after a failure or a restart on any replica, resends the same txn id
with the same contents — sends it, and on 200 deletes what was delivered.
Workers share a semaphore that bounds concurrent requests, and each waits for
its own destination only, so a dead destination never holds up the others.
The :class:`DeliveryManager` starts workers when destinations get work (NOTIFY
from ingest or EDU queueing, or a periodic scan), claims their leases, and
stops workers whose destination moved to another replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from matrix_protocol.canonical_json import decode_json
from matrix_protocol.transactions import MAX_EDUS, MAX_PDUS
from mxfed import tracing
from mxfed.clock import now_ms
from mxfed.federation_client import DestinationBlockedError, FederationClient, federation_path
from mxfed.held_connection import log_failure
from mxfed.waits import event_set_within
from services.sender import metrics
from services.sender.backoff import BackoffPolicy, refuses_the_transaction, retry_after_ms
from services.sender.leases import Membership
from services.sender.storage import (
    Backoff,
    LeaseLost,
    SenderStorage,
    Taken,
    Transaction,
)

log = logging.getLogger(__name__)


@dataclass
class DeliveryOptions:
    max_pdus: int = MAX_PDUS  # per transaction (spec limit)
    max_edus: int = MAX_EDUS  # per transaction (spec limit)
    max_concurrent_requests: int = 200
    # Database bookkeeping of many workers is batched: at most this many
    # destinations per call, at most batch_calls calls at a time.
    max_batch: int = 1000
    batch_calls: int = 2
    # A worker with an empty queue waits this long for more before giving up its lease.
    # Waiting costs a task and a lease renewal per heartbeat; coming back costs an
    # event the claim and its own take (two more round trips and commits, ~3 ms
    # more from stream to wire than ingest taking for a waiting worker), so the
    # workers of rooms where someone writes every minute or so stay.
    idle_linger: float = 60.0
    # A 200 waits this long to be recorded together with the destination's next
    # transaction (taken by ingest with the events that make it), before it is
    # recorded alone: one round trip and one commit per transaction, not two.
    completion_linger: float = 0.5
    # Look for destinations with work this often even without notifications.
    scan_interval: float = 5.0
    maintenance_interval: float = 30.0
    full_gc_every: int = 10  # maintenance runs
    # Catch-up: a backed-off destination with more unsent PDUs than this, or
    # backed off for at least long_outage_ms, keeps only the newest
    # catch_up_per_room PDUs of each room and no volatile EDUs.
    catch_up_backlog: int = 500
    catch_up_per_room: int = 10
    long_outage_ms: int = 3600 * 1000
    typing_max_age_ms: int = 60 * 1000


class Transport(Protocol):
    async def send(self, txn: Transaction) -> Any: ...

    async def close(self) -> None: ...


def transaction_body(
    origin: str, txn: Transaction, decoded: dict[bytes, Any] | None = None
) -> dict[str, Any]:
    """The /send body; ``decoded`` caches parsed PDUs shared by many transactions."""
    if decoded is None:
        pdus = [decode_json(pdu) for pdu in txn.pdus]
    else:
        pdus = []
        for pdu in txn.pdus:
            value = decoded.get(pdu)
            if value is None:
                value = decoded[pdu] = decode_json(pdu)
            pdus.append(value)
    body: dict[str, Any] = {
        "origin": origin,
        "origin_server_ts": txn.origin_server_ts,
        "pdus": pdus,
    }
    if txn.edus:
        body["edus"] = [
            {"edu_type": edu_type, "content": decode_json(content)}
            for edu_type, content in txn.edus
        ]
    return body


class FederationTransport:
    """Sends transactions with the shared outbound federation client."""

    def __init__(self, server_name: str, client: FederationClient) -> None:
        self.server_name = server_name
        self.client = client
        # One event goes to many destinations: parse its JSON once. The parsed
        # values are only read (encoded into each request), never changed.
        self._decoded: dict[bytes, Any] = {}

    async def send(self, txn: Transaction) -> Any:
        path = federation_path("_matrix", "federation", "v1", "send", txn.txn_id)
        if len(self._decoded) > 2000:
            self._decoded.clear()
        body = transaction_body(self.server_name, txn, self._decoded)
        return await self.client.put_json(txn.destination, path, body, idempotent=True)

    async def close(self) -> None:
        await self.client.close()


@dataclass
class _Request:
    destination: str
    completed: str | None  # txn id answered with 200, to record first
    want_next: bool
    future: asyncio.Future[Taken]


class TransactionBatcher:
    """Gathers the workers' database bookkeeping into few round trips.

    Each worker, after its transaction got a 200, needs that recorded and its
    next transaction taken; with a thousand destinations that was thousands
    of round trips per round. Here requests wait while a call is running (at
    most ``calls`` at a time) and then go together in one
    :meth:`SenderStorage.next_transactions` call, which does per destination
    exactly what the one-destination call did (lease checked under the row
    lock, pending transaction unchanged, new one recorded before it is
    returned). A lone request is not delayed: with no call running it goes at
    once.
    """

    def __init__(
        self,
        storage: SenderStorage,
        instance_id: str,
        *,
        max_pdus: int,
        max_edus: int,
        max_batch: int = 1000,
        calls: int = 2,
    ) -> None:
        self.storage = storage
        self.instance_id = instance_id
        self.max_pdus = max_pdus
        self.max_edus = max_edus
        self.max_batch = max_batch
        self.calls = calls
        self._queue: list[_Request] = []
        self._running = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def next(
        self, destination: str, completed: str | None = None
    ) -> Transaction | Backoff | None:
        """Record ``completed`` (if any), then the destination's next transaction."""
        result = await self._submit(destination, completed, want_next=True)
        if isinstance(result, LeaseLost):
            raise result
        return result

    async def complete(self, destination: str, txn_id: str) -> None:
        await self._submit(destination, txn_id, want_next=False)

    def _submit(
        self, destination: str, completed: str | None, *, want_next: bool
    ) -> asyncio.Future[Taken]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Taken] = loop.create_future()
        self._queue.append(_Request(destination, completed, want_next, future))
        if not self._scheduled:
            # After the callbacks already due (other workers woken together).
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        while self._queue and self._running < self.calls:
            batch: list[_Request] = []
            rest: list[_Request] = []
            seen: set[str] = set()
            for request in self._queue:
                # One request per destination per call (a completion must
                # land before that destination's next transaction is taken).
                if request.destination in seen or len(batch) >= self.max_batch:
                    rest.append(request)
                else:
                    seen.add(request.destination)
                    batch.append(request)
            self._queue = rest
            self._running += 1
            task = asyncio.create_task(self._call(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, batch: list[_Request]) -> None:
        try:
            with metrics.NEXT_TRANSACTIONS_SECONDS.time():
                results = await self.storage.next_transactions(
                    [r.destination for r in batch if r.want_next],
                    [(r.destination, r.completed) for r in batch if r.completed is not None],
                    self.instance_id,
                    max_pdus=self.max_pdus,
                    max_edus=self.max_edus,
                )
        except BaseException as exc:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(
                        exc if isinstance(exc, Exception) else asyncio.CancelledError()
                    )
            if not isinstance(exc, Exception):
                raise
        else:
            for request in batch:
                if not request.future.done():
                    request.future.set_result(
                        results.get(request.destination) if request.want_next else None
                    )
        finally:
            self._running -= 1
            if self._queue and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class GivenOutcome(Enum):
    """What became of a transaction ingest gave an idle worker (:meth:`Reservation.give`)."""

    RECORDED = "recorded"  # the destination's pending transaction, as if taken
    NOT_RECORDED = "not_recorded"  # lease gone or something pending: its events stay queued
    STATEMENT_FAILED = "statement_failed"  # nothing stored: ingest stores the events again


class Reservation:
    """An idle worker's next transaction, to be taken by ingest with the events that
    woke it (:meth:`DeliveryManager.reserve_idle`); the worker waits for it instead
    of taking it itself, so its destination still has one transaction in flight.
    When the batch's events for the destination fit in one transaction, ingest makes
    it (:func:`~services.sender.ingest.given_transactions`) and the worker sends it at
    once, while ingest's statement records it: the worker waits for that statement
    only before it records anything about the transaction."""

    def __init__(self, destination: str, completed: str | None) -> None:
        self.destination = destination
        self.completed = completed  # the txn id answered with 200, to record first
        # (taken, what was taken); not taken: the worker takes its next itself.
        self.future: asyncio.Future[tuple[bool, Taken]] = asyncio.get_running_loop().create_future()
        # Or made by ingest (:meth:`give`): sent at once, recorded by ingest's statement.
        self.given: Transaction | None = None
        self.given_outcome: asyncio.Future[GivenOutcome] = (
            asyncio.get_running_loop().create_future()
        )

    def give(self, txn: Transaction) -> None:
        self.given = txn

    def taken(self, result: Taken) -> None:
        if not self.future.done():
            self.future.set_result((True, result))

    def recorded(self, recorded: bool) -> None:
        if not self.given_outcome.done():
            outcome = GivenOutcome.RECORDED if recorded else GivenOutcome.NOT_RECORDED
            self.given_outcome.set_result(outcome)

    def not_taken(self) -> None:
        if not self.future.done():
            self.future.set_result((False, None))
        if not self.given_outcome.done():
            self.given_outcome.set_result(GivenOutcome.STATEMENT_FAILED)


class DestinationWorker:
    """Delivers one destination's queue, one transaction at a time, in queue order."""

    def __init__(self, manager: DeliveryManager, destination: str) -> None:
        self.manager = manager
        self.destination = destination
        self.woken = False
        self.stopping = False
        self.lease_lost = False
        self.idle = False  # waiting, nothing in flight, nothing known to be queued
        self._reservation: Reservation | None = None
        self._given: Reservation | None = None  # whose given transaction is being sent
        self._completed: str | None = None  # answered with 200, not yet recorded
        self._event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self.woken = True
        self._event.set()

    def reserve(self) -> Reservation | None:
        """While idle: its next transaction is taken by ingest, not by itself."""
        if not self.idle or self.stopping or self._reservation is not None:
            return None
        self._reservation = Reservation(self.destination, self._completed)
        # Ends the wait without counting as a wake: one that comes before the worker
        # runs is for events queued after the reservation's (not in a transaction given
        # to it), and must send it for them after that transaction.
        self._event.set()
        return self._reservation

    async def _next(self) -> Transaction | Backoff | None:
        """The next transaction, the 200 not yet recorded recorded first (also when the
        lease turns out lost: :class:`LeaseLost`)."""
        reservation, self._reservation = self._reservation, None
        completed, self._completed = self._completed, None
        if reservation is not None:
            if reservation.given is not None:
                self._given = reservation
                return reservation.given
            taken, result = await reservation.future
            if taken:
                if isinstance(result, LeaseLost):
                    raise result
                return result
        try:
            return await self.manager.batcher.next(self.destination, completed)
        except LeaseLost:
            raise
        except Exception:
            self._completed = completed  # recording a completion twice is harmless
            raise

    async def _given_outcome(self) -> GivenOutcome | None:
        """For a transaction ingest gave: what its statement did, once done (None for a
        transaction taken from the database, recorded before it went)."""
        reservation, self._given = self._given, None
        if reservation is None:
            return None
        outcome = await reservation.given_outcome
        metrics.GIVEN_TRANSACTIONS.labels(outcome.value).inc()
        if outcome is GivenOutcome.STATEMENT_FAILED:
            self._completed = reservation.completed  # not recorded either
        elif outcome is GivenOutcome.NOT_RECORDED:
            log.info(
                "a transaction sent while ingest stored its events could not be recorded;"
                " its events go again",
                extra={"destination": self.destination},
            )
        return outcome

    def stop(self, *, lease_lost: bool = False) -> None:
        """Stop before the next transaction (the one in flight finishes)."""
        self.stopping = True
        self.lease_lost = self.lease_lost or lease_lost
        self._event.set()

    async def _idle(self, seconds: float) -> None:
        """Wait, open to a :meth:`reserve` (which passes the 200 not yet recorded on to
        ingest)."""
        self.idle = True
        try:
            await self._wait(seconds)
        finally:
            self.idle = False

    async def _wait(self, seconds: float) -> None:
        if seconds > 0 and not self._event.is_set():
            await event_set_within(self._event, seconds)

    async def run(self) -> None:
        m = self.manager
        try:
            while not self.stopping:
                if self._reservation is None:  # what woke it so far is in its own take
                    self.woken = False
                self._event.clear()
                try:
                    txn = await self._next()
                except LeaseLost:
                    self.lease_lost = True
                    metrics.TRANSACTIONS.labels("lease_lost").inc()
                    log.info("lease lost", extra={"destination": self.destination})
                    return
                except Exception as exc:
                    # The database call failed (for the whole batch): try again
                    # shortly; recording a completion twice is harmless.
                    log_failure(
                        log, "taking the next transaction failed", exc, destination=self.destination
                    )
                    await asyncio.sleep(1)
                    continue
                if isinstance(txn, Backoff):
                    await self._wait((txn.retry_until_ts - now_ms()) / 1000)
                elif txn is None:
                    if not self.woken:
                        await self._idle(m.options.idle_linger)
                        if not self.woken and self._reservation is None:
                            return
                elif await self._send(txn):
                    self._completed = txn.txn_id
                    full = (
                        len(txn.pdus) >= m.options.max_pdus or len(txn.edus) >= m.options.max_edus
                    )
                    if not self.woken and not full:
                        # Nothing more known to be queued: the 200 goes with the next
                        # transaction ingest takes, if one comes soon.
                        await self._idle(m.options.completion_linger)
        finally:
            if self._completed is not None:
                try:
                    await m.batcher.complete(self.destination, self._completed)
                except Exception as exc:
                    # The same txn id is resent later and deduplicated by the receiver.
                    log_failure(
                        log,
                        "recording a delivered transaction failed",
                        exc,
                        destination=self.destination,
                    )
            if not self.lease_lost:
                try:
                    await m.membership.release(self.destination)
                except Exception as exc:
                    log_failure(log, "lease release failed", exc, destination=self.destination)
            m.worker_done(self)

    async def _send(self, txn: Transaction) -> bool:
        """Send ``txn``; True when it got a 200 (recorded with the next batch call)."""
        m = self.manager
        error: Exception | None = None
        async with m.semaphore:
            started = time.monotonic()
            try:
                with tracing.delivery_span("send transaction", txn.positions):
                    await m.transport.send(txn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
            metrics.TRANSACTION_SECONDS.observe(time.monotonic() - started)
        if await self._given_outcome() not in (None, GivenOutcome.RECORDED):
            # Not the destination's pending transaction: nothing of it to record or drop.
            # Its events go again in a later one (the receiver ignores PDUs it has).
            if error is not None:
                await self._failed(txn, error)
            return False
        if error is None:
            metrics.TRANSACTIONS.labels("sent").inc()
            metrics.PDUS_SENT.inc(len(txn.pdus))
            metrics.EDUS_SENT.inc(len(txn.edus))
            log.debug(
                "transaction sent",
                extra={
                    "destination": self.destination,
                    "txn_id": txn.txn_id,
                    "pdus": len(txn.pdus),
                    "edus": len(txn.edus),
                },
            )
            return True
        if isinstance(error, DestinationBlockedError):
            # mxfed servers block: nothing is sent to it; what was queued is dropped.
            log.warning(
                "destination is blocked; dropping its queued transaction",
                extra={
                    "destination": self.destination,
                    "txn_id": txn.txn_id,
                    "pdus": len(txn.pdus),
                    "edus": len(txn.edus),
                },
            )
            await m.storage.drop_transaction(self.destination, txn.txn_id, str(error))
            metrics.TRANSACTIONS.labels("blocked").inc()
            metrics.PDUS_DROPPED.labels("blocked").inc(len(txn.pdus))
            metrics.EDUS_DROPPED.labels("blocked").inc(len(txn.edus))
        elif not refuses_the_transaction(error):
            await self._failed(txn, error)
        else:
            # The remote refused this transaction itself (malformed, too
            # large): resending the same txn id would be refused forever and
            # block the queue, so its contents are dropped after logging.
            log.warning(
                "destination refused a transaction; dropping its contents",
                extra={
                    "destination": self.destination,
                    "txn_id": txn.txn_id,
                    "pdus": len(txn.pdus),
                    "edus": len(txn.edus),
                    "error": str(error),
                },
            )
            await m.storage.drop_transaction(self.destination, txn.txn_id, str(error))
            metrics.TRANSACTIONS.labels("refused").inc()
            metrics.PDUS_DROPPED.labels("refused").inc(len(txn.pdus))
            metrics.EDUS_DROPPED.labels("refused").inc(len(txn.edus))
        return False

    async def _failed(self, txn: Transaction, error: Exception) -> None:
        m = self.manager
        # When the remote said when (429), honour it (within our bounds) and
        # do not escalate the interval for a server that is up but busy.
        wait, interval, backlog = await m.storage.record_transaction_failure(
            self.destination,
            min_interval_ms=m.policy.min_interval_ms,
            max_interval_ms=m.policy.max_interval_ms,
            growth=m.policy.growth(),
            asked_wait_ms=retry_after_ms(error),
            error=str(error),
            backlog_cap=m.options.catch_up_backlog,
        )
        metrics.TRANSACTIONS.labels("failed").inc()
        log.info(
            "transaction failed; backing off",
            extra={
                "destination": self.destination,
                "txn_id": txn.txn_id,
                "retry_in_ms": wait,
                "error": f"{type(error).__name__}: {error}",
            },
        )
        if interval >= m.options.long_outage_ms or backlog > m.options.catch_up_backlog:
            await m.catch_up_prune(self.destination)


class DeliveryManager:
    def __init__(
        self,
        storage: SenderStorage,
        membership: Membership,
        transport: Transport,
        policy: BackoffPolicy,
        options: DeliveryOptions | None = None,
    ) -> None:
        self.storage = storage
        self.membership = membership
        self.transport = transport
        self.policy = policy
        self.options = options or DeliveryOptions()
        self.semaphore = asyncio.Semaphore(self.options.max_concurrent_requests)
        self.batcher = TransactionBatcher(
            storage,
            membership.instance_id,
            max_pdus=self.options.max_pdus,
            max_edus=self.options.max_edus,
            max_batch=self.options.max_batch,
            calls=self.options.batch_calls,
        )
        self.workers: dict[str, DestinationWorker] = {}
        self._to_claim: set[str] = set()
        self._rescan = True
        self._claim_event = asyncio.Event()
        self._replicas: list[str] = []
        self._maintenance_runs = 0

    # -- waking ---------------------------------------------------------------

    def wake(self, destinations: Iterable[str] | None = None) -> None:
        """Something was queued for ``destinations`` (``None``: look at all)."""
        if destinations is None:
            self._rescan = True
            self._claim_event.set()
            return
        for destination in destinations:
            worker = self.workers.get(destination)
            if worker is not None and not worker.stopping:
                worker.wake()
            elif self.membership.is_mine(destination):
                self._to_claim.add(destination)
                self._claim_event.set()

    def reserve_idle(self, destinations: Iterable[str]) -> list[Reservation]:
        """The next transactions of those ``destinations`` whose workers wait idle here,
        for ingest to take with the events it stores for them (see :class:`Reservation`);
        each must be settled (taken or not)."""
        reservations = []
        for destination in destinations:
            worker = self.workers.get(destination)
            reservation = worker.reserve() if worker is not None else None
            if reservation is not None:
                reservations.append(reservation)
        return reservations

    def worker_done(self, worker: DestinationWorker) -> None:
        if self.workers.get(worker.destination) is worker:
            del self.workers[worker.destination]
        metrics.ACTIVE_DESTINATIONS.set(len(self.workers))
        if worker.woken and not worker.lease_lost:
            # Woken while giving up its lease: look again.
            self.wake([worker.destination])

    # -- main loops -----------------------------------------------------------

    async def run(self) -> None:
        """Claim and start workers for destinations that have work."""
        while True:
            if not await event_set_within(self._claim_event, self.options.scan_interval):
                self._rescan = True
            self._claim_event.clear()
            try:
                await self._claim_and_start()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_failure(log, "claiming destinations failed", exc)
                await asyncio.sleep(1)

    async def _claim_and_start(self) -> None:
        wanted = set(self._to_claim)
        self._to_claim.clear()
        if self._rescan:
            self._rescan = False
            wanted.update(await self.storage.destinations_with_work())
        wanted = {d for d in wanted if d not in self.workers and self.membership.is_mine(d)}
        if not wanted:
            return
        for destination in await self.membership.claim(sorted(wanted)):
            if destination not in self.workers:
                self._start(destination)

    def _start(self, destination: str) -> None:
        worker = DestinationWorker(self, destination)
        self.workers[destination] = worker
        worker.task = asyncio.create_task(worker.run(), name=f"sender:{destination}")
        metrics.ACTIVE_DESTINATIONS.set(len(self.workers))

    async def on_heartbeat(self) -> None:
        """After each heartbeat: stop workers that lost their lease or moved away."""
        held = self.membership.held
        for destination, worker in list(self.workers.items()):
            if destination not in held:
                worker.stop(lease_lost=True)
            elif not self.membership.is_mine(destination):
                worker.stop()
        if self.membership.replicas != self._replicas:
            self._replicas = list(self.membership.replicas)
            self.wake(None)

    async def maintenance(self) -> None:
        """Periodic: catch-up pruning of long outages, stale typing, unused events."""
        while True:
            await asyncio.sleep(self.options.maintenance_interval)
            try:
                await self.maintain_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_failure(log, "sender maintenance failed", exc)

    async def maintain_once(self) -> None:
        for destination in await self.storage.backed_off_over(
            self.options.catch_up_backlog, self.options.long_outage_ms
        ):
            await self.catch_up_prune(destination)
        expired = await self.storage.expire_typing(self.options.typing_max_age_ms)
        metrics.EDUS_DROPPED.labels("expired").inc(expired)
        # Unneeded stored events: the cheap range delete every time, the full
        # check (a probe per stored event) every full_gc_every-th time.
        self._maintenance_runs += 1
        await self.storage.collect_garbage(
            full=self._maintenance_runs % self.options.full_gc_every == 1
        )

    async def catch_up_prune(self, destination: str) -> None:
        pdus, edus = await self.storage.prune_for_catch_up(
            destination, self.options.catch_up_per_room
        )
        if pdus or edus:
            metrics.PDUS_DROPPED.labels("catch_up").inc(pdus)
            metrics.EDUS_DROPPED.labels("catch_up").inc(edus)
            log.info(
                "long outage: kept only the newest events per room",
                extra={"destination": destination, "pdus_dropped": pdus, "edus_dropped": edus},
            )

    async def close(self) -> None:
        workers = list(self.workers.values())
        for worker in workers:
            worker.stop()
            if worker.task is not None:
                worker.task.cancel()
        await asyncio.gather(*(w.task for w in workers if w.task), return_exceptions=True)
        await self.batcher.close()
