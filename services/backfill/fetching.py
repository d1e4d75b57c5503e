"""Fetching history and missing events from other servers.

Spec: https://spec.matrix.org/v1.19/server-server-api/#backfilling-and-retrieving-missing-events
(gap filling with get_missing_events, state at missing prevs via /state_ids
then /state or /event, missing auth events via /event_auth; backfill from the
servers most likely to have the history, oldest members first, limit 100).
Fetched PDUs are checked and stored by the events service (``InputPdus``:
format, signatures in one batch, hashes, auth), one call per response, oldest
first so each event's prevs come before it. The
events of a response whose prev_events are neither held nor in the response
(its oldest ones) get the state before them from the same server
(``/state_ids``, then ``/state`` or ``/event``), stored as outliers first and
passed as ``state_before``; their missing prevs become backward extremities.
Backfilled events are input as BACKFILL (no stream position, no effect on
the room's head, exempt from soft failure). Missing events are input as
GAP_FILL: they connect a live event, so they are live too and soft-failed
when the room's current state no longer allows them (spec: server-server
API, "Soft failure"; only backfilled events and outliers are exempt).

Operations on one room run one at a time (an asyncio lock per room);
different rooms never wait for each other. Every operation is bounded in
time. A backward extremity no server would fill is remembered per (room,
event) with exponential backoff; a server that fails is skipped for a while.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from matrix_protocol.canonical_json import decode_json, encode_json
from matrix_protocol.events import Event
from matrix_protocol.room_versions import RoomVersion, room_version
from mxfed.federation_client import FederationClient
from mxfed.federation_client.client import federation_path
from mxfed.federation_client.errors import FederationError, HttpResponseError
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc, history_pb2, history_pb2_grpc
from services.backfill import metrics
from services.backfill.storage import BackfillStore

log = logging.getLogger(__name__)

RPC_TIMEOUT = 120.0
V1 = ("_matrix", "federation", "v1")


class RoomNotFound(Exception):
    pass


@dataclass
class Settings:
    backfill_limit: int = 100  # per request, the most servers serve (Synapse caps at 100)
    max_extremities: int = 5
    max_servers: int = 5  # servers tried per backfill
    max_client_errors: int = 5  # 4xx answers before giving up
    missing_events_limit: int = 10
    missing_events_timeout: float = 60.0
    backfill_timeout: float = 120.0
    request_timeout: float = 30.0
    # /state when at least this share of the state + auth chain is missing.
    state_fetch_fraction: float = 0.1
    parallel_event_fetches: int = 10
    # Events of one response whose state before them is fetched (its oldest edges).
    max_state_fetches: int = 5


@dataclass
class InputCount:
    stored: int = 0
    refused: int = 0
    known: int = 0
    stored_ids: list[str] = field(default_factory=list)

    def add(self, other: InputCount) -> None:
        self.stored += other.stored
        self.refused += other.refused
        self.known += other.known
        self.stored_ids.extend(other.stored_ids)


@dataclass
class BackfillResult:
    events_fetched: int = 0
    server: str = ""
    servers_failed: list[str] = field(default_factory=list)
    events_refused: int = 0


@dataclass
class MissingEventsResult:
    events_fetched: int = 0
    outliers_fetched: int = 0
    still_missing: list[str] = field(default_factory=list)
    state_after: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class FetchEventsResult:
    events_fetched: int = 0
    still_missing: list[str] = field(default_factory=list)


def _depth_of(pdu: dict[str, Any]) -> int:
    depth = pdu.get("depth")
    return depth if isinstance(depth, int) and not isinstance(depth, bool) else 0


def _oldest_first(pdus: Iterable[Any], room_id: str) -> list[bytes]:
    """The PDUs of ``room_id`` as JSON, shallowest first, duplicates dropped."""
    kept: dict[bytes, tuple[int, int]] = {}
    for pdu in pdus:
        if not isinstance(pdu, dict):
            continue
        # Room v12 create events carry no room_id; the room id is their hash.
        if pdu.get("room_id", room_id) != room_id:
            continue
        try:
            encoded = encode_json(pdu)
        except (TypeError, ValueError):
            continue
        ts = pdu.get("origin_server_ts")
        kept.setdefault(encoded, (_depth_of(pdu), ts if isinstance(ts, int) else 0))
    return [encoded for encoded, _ in sorted(kept.items(), key=lambda item: item[1])]


class Fetcher:
    def __init__(
        self,
        server_name: str,
        client: FederationClient,
        events: events_pb2_grpc.EventsStub,
        history: history_pb2_grpc.HistoryStub,
        store: BackfillStore,
        settings: Settings | None = None,
    ) -> None:
        self.server_name = server_name
        self.client = client
        self.events = events
        self.history = history
        self.store = store
        self.settings = settings or Settings()
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}

    @asynccontextmanager
    async def _room(self, room_id: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(room_id, asyncio.Lock())
        self._lock_users[room_id] = self._lock_users.get(room_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._lock_users[room_id] -= 1
            if not self._lock_users[room_id]:
                del self._lock_users[room_id]
                self._locks.pop(room_id, None)

    # ------------------------------------------------------------ shared steps

    async def _room_info(self, room_id: str) -> events_pb2.QueryRoomInfoResponse:
        info = await self.events.QueryRoomInfo(
            events_pb2.QueryRoomInfoRequest(room_id=room_id), timeout=RPC_TIMEOUT
        )
        if not info.exists:
            raise RoomNotFound(room_id)
        return info

    async def _stored(self, event_ids: Iterable[str]) -> dict[str, int]:
        """Event id → status, for the ones the events service holds."""
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return {}
        reply = await self.events.QueryEvents(
            events_pb2.QueryEventsRequest(event_ids=ids), timeout=RPC_TIMEOUT
        )
        return {record.event_id: record.status for record in reply.events}

    async def _input(
        self,
        room_id: str,
        version: str,
        origin: str,
        pdus: Sequence[bytes],
        kind: int,
        operation: str,
        state_before: Mapping[str, Sequence[str]] | None = None,
    ) -> InputCount:
        """One InputPdus call for ``pdus`` (encoded, already ordered)."""
        count = InputCount()
        if not pdus:
            return count
        reply = await self.events.InputPdus(
            events_pb2.InputPdusRequest(
                room_id=room_id,
                room_version=version,
                origin=origin,
                # protoc's .pyi leaves int out of enum fields; protobuf accepts the number
                kind=kind,  # type: ignore[arg-type]
                pdus=list(pdus),
                state_before=[
                    events_pb2.StateBefore(event_id=event_id, state_event_ids=list(ids))
                    for event_id, ids in (state_before or {}).items()
                ],
            ),
            timeout=RPC_TIMEOUT,
        )
        for result in reply.results:
            if result.status != events_pb2.EVENT_STATUS_UNSPECIFIED:
                count.stored += 1
                count.stored_ids.append(result.event_id)
            elif result.error:
                count.refused += 1
                log.info(
                    "fetched event not stored",
                    extra={"event_id": result.event_id, "error": result.error, "origin": origin},
                )
            else:
                count.known += 1
        # PDUs that never made it to a result (not JSON objects...) count as refused.
        count.refused += max(0, len(pdus) - len(reply.results))
        for outcome in ("stored", "refused", "known"):
            metrics.FETCHED_EVENTS.labels(operation, outcome).inc(getattr(count, outcome))
        return count

    async def _input_with_state(
        self,
        room_id: str,
        version: RoomVersion,
        origin: str,
        pdus: Sequence[bytes],
        kind: int,
        operation: str,
    ) -> tuple[InputCount, int]:
        """Input ``pdus`` (oldest first) as ``kind``, with the state before their edges.

        Edges are the events whose prev_events are neither in the DAG nor
        among ``pdus`` (normally the oldest one or few). For each, the state
        before it is fetched from ``origin`` (``/state_ids``,
        then ``/state`` when at least 10 % is unknown, else ``/event`` each),
        its events are stored as outliers in one call, and the edge is input
        with that state (its missing prevs become backward extremities).
        Returns the count of the input and the number of outliers stored.
        """
        events: list[Event] = []
        for raw in pdus:
            try:
                events.append(Event.from_pdu(decode_json(raw), version))
            except (ValueError, TypeError, KeyError, AttributeError):
                continue  # the pipeline refuses it
        ids = {event.event_id for event in events}
        outside = {p for event in events for p in event.prev_event_ids if p not in ids}
        in_dag = await self._dag_events(sorted(outside))
        edges = [
            event
            for event in events
            if any(p not in ids and p not in in_dag for p in event.prev_event_ids)
        ]
        state_before: dict[str, list[str]] = {}
        outlier_pdus: list[dict[str, Any]] = []
        fetched_ids: set[str] = set()
        for edge in edges[: self.settings.max_state_fetches]:
            try:
                state_ids, fetched = await self._state_before(
                    room_id, version, origin, edge.event_id, fetched_ids
                )
            except (FederationError, ValueError, TimeoutError) as error:
                metrics.FETCH_FAILURES.labels("state").inc()
                log.info(
                    "fetching the state before an event failed",
                    extra={"origin": origin, "event_id": edge.event_id, "error": str(error)},
                )
                continue
            state_before[edge.event_id] = state_ids
            outlier_pdus.extend(fetched)
        outliers = await self._input(
            room_id,
            version.identifier,
            origin,
            _oldest_first(outlier_pdus, room_id),
            events_pb2.INPUT_KIND_OUTLIER,
            "state",
        )
        count = await self._input(
            room_id, version.identifier, origin, pdus, kind, operation, state_before
        )
        return count, outliers.stored

    async def _state_before(
        self,
        room_id: str,
        version: RoomVersion,
        origin: str,
        event_id: str,
        fetched_ids: set[str],
    ) -> tuple[list[str], list[dict[str, Any]]]:
        """The state before ``event_id`` per ``origin`` (ids) and the PDUs of it we lack."""
        body = await self._get(
            origin, federation_path(*V1, "state_ids", room_id), {"event_id": event_id}
        )
        if not isinstance(body, dict):
            raise ValueError("state_ids: not an object")
        state_ids, chain_ids = body.get("pdu_ids"), body.get("auth_chain_ids")
        if not (_str_list(state_ids) and _str_list(chain_ids)):
            raise ValueError("state_ids: pdu_ids and auth_chain_ids must be lists of ids")
        wanted = list(dict.fromkeys([*chain_ids, *state_ids]))
        held = await self._stored(wanted)
        missing = [e for e in wanted if e not in held and e not in fetched_ids]
        fetched: list[dict[str, Any]] = []
        if missing and len(missing) >= self.settings.state_fetch_fraction * len(wanted):
            state = await self._get(
                origin, federation_path(*V1, "state", room_id), {"event_id": event_id}
            )
            if not isinstance(state, dict):
                raise ValueError("state: not an object")
            for key in ("auth_chain", "pdus"):
                if isinstance(state.get(key), list):
                    fetched.extend(p for p in state[key] if isinstance(p, dict))
        elif missing:
            fetched = await self._fetch_pdus(origin, missing)
        fetched_ids.update(missing)
        return list(state_ids), fetched

    async def _get(self, destination: str, path: str, query: Any = None) -> Any:
        return await self.client.get_json(
            destination, path, query=query, timeout=self.settings.request_timeout
        )

    # ------------------------------------------------------------ backfill

    async def backfill(
        self, room_id: str, limit: int = 0, preferred_servers: Sequence[str] = ()
    ) -> BackfillResult:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.backfill_timeout), self._room(room_id):
                return await self._backfill(room_id, limit, preferred_servers)
        except TimeoutError:
            log.warning("backfill timed out", extra={"room_id": room_id})
            return BackfillResult()
        finally:
            metrics.FETCH_SECONDS.labels("backfill").observe(time.perf_counter() - started)

    async def _backfill(
        self, room_id: str, limit: int, preferred_servers: Sequence[str]
    ) -> BackfillResult:
        info = await self._room_info(room_id)
        limit = (
            min(limit, self.settings.backfill_limit) if limit > 0 else self.settings.backfill_limit
        )
        reply = await self.history.QueryBackwardExtremities(
            history_pb2.QueryBackwardExtremitiesRequest(room_id=room_id), timeout=RPC_TIMEOUT
        )
        extremities = list(reply.extremities)
        if not extremities:
            return BackfillResult()
        blocked = await self.store.events_backing_off(room_id, [e.event_id for e in extremities])
        chosen = [e for e in extremities if e.event_id not in blocked][
            : self.settings.max_extremities
        ]
        if not chosen:
            return BackfillResult()
        chosen_ids = [e.event_id for e in chosen]
        servers = await self._history_servers(room_id, chosen, preferred_servers)
        result = BackfillResult()
        client_errors = 0
        path = federation_path(*V1, "backfill", room_id)
        query = [*(("v", event_id) for event_id in chosen_ids), ("limit", limit)]
        for server in servers[: self.settings.max_servers]:
            try:
                body = await self._get(server, path, query)
                pdus = body.get("pdus") if isinstance(body, dict) else None
                if not isinstance(pdus, list):
                    raise ValueError("the response has no pdus list")
            except (FederationError, ValueError, TimeoutError) as error:
                metrics.FETCH_FAILURES.labels("backfill").inc()
                result.servers_failed.append(server)
                log.info("backfill request failed", extra={"server": server, "error": str(error)})
                if isinstance(error, HttpResponseError) and 400 <= error.status < 500:
                    client_errors += 1
                    if client_errors >= self.settings.max_client_errors:
                        break
                else:
                    await self.store.record_server_failure(server, str(error))
                continue
            await self.store.clear_server_failures(server)
            count, _ = await self._input_with_state(
                room_id,
                room_version(info.room_version),
                server,
                _oldest_first(pdus, room_id)[: limit * 2],
                events_pb2.INPUT_KIND_BACKFILL,
                "backfill",
            )
            result.events_refused += count.refused
            if count.stored:
                result.events_fetched = count.stored
                result.server = server
                filled = await self._stored(chosen_ids)
                await self.store.clear_pull_failures(
                    room_id, [e for e in chosen_ids if e in filled]
                )
                return result
            result.servers_failed.append(server)
        await self.store.record_pull_failures(room_id, chosen_ids, "no server had the history")
        return result

    async def _history_servers(
        self,
        room_id: str,
        extremities: Sequence[history_pb2.BackwardExtremity],
        preferred: Sequence[str],
    ) -> list[str]:
        """Who likely has the history: preferred ones, then members at that point, oldest first."""
        by_age = await self.history.QueryServersByJoinAge(
            history_pb2.QueryServersByJoinAgeRequest(room_id=room_id), timeout=RPC_TIMEOUT
        )
        at_point: list[str] = []
        senders: list[str] = []
        children = [c for e in extremities for c in e.referenced_by][:10]
        for child in children[:1]:
            reply = await self.events.QueryServersInRoom(
                events_pb2.QueryServersInRoomRequest(room_id=room_id, at_event_id=child),
                timeout=RPC_TIMEOUT,
            )
            at_point.extend(reply.servers)
        stored = await self.events.QueryEvents(
            events_pb2.QueryEventsRequest(event_ids=children), timeout=RPC_TIMEOUT
        )
        for record in stored.events:
            sender = decode_json(bytes(record.pdu_json)).get("sender", "")
            if isinstance(sender, str) and ":" in sender:
                senders.append(sender.split(":", 1)[1])
        age_rank = {server: i for i, server in enumerate(by_age.servers)}
        at_point.sort(key=lambda s: age_rank.get(s, len(age_rank)))
        ordered = list(dict.fromkeys([*preferred, *at_point, *by_age.servers, *senders]))
        ordered = [s for s in ordered if s and s != self.server_name]
        blocked = await self.store.servers_backing_off(ordered)
        return [s for s in ordered if s not in blocked or s in preferred]

    # ------------------------------------------------------------ missing events

    async def fetch_missing_events(
        self, room_id: str, origin: str, event_json: bytes, deadline: float = 0.0
    ) -> MissingEventsResult:
        started = time.perf_counter()
        result = MissingEventsResult()
        try:
            async with asyncio.timeout(deadline or self.settings.missing_events_timeout):
                async with self._room(room_id):
                    await self._fetch_missing_events(room_id, origin, event_json, result)
        except TimeoutError:
            log.warning("fetching missing events timed out", extra={"room_id": room_id})
        finally:
            metrics.FETCH_SECONDS.labels("missing_events").observe(time.perf_counter() - started)
        return result

    async def _fetch_missing_events(
        self, room_id: str, origin: str, event_json: bytes, result: MissingEventsResult
    ) -> None:
        info = await self._room_info(room_id)
        version = room_version(info.room_version)
        event = Event.from_pdu(decode_json(event_json), version)
        prevs = event.prev_event_ids
        known = await self._dag_events(prevs)
        missing = [p for p in prevs if p not in known]
        if not missing:
            return
        if event.depth > info.min_depth:
            try:
                body = await self.client.post_json(
                    origin,
                    federation_path(*V1, "get_missing_events", room_id),
                    {
                        "earliest_events": sorted(
                            {*info.forward_extremities, *(p for p in prevs if p in known)}
                        ),
                        "latest_events": [event.event_id],
                        "limit": self.settings.missing_events_limit,
                        "min_depth": info.min_depth,
                    },
                    idempotent=True,
                    timeout=self.settings.request_timeout,
                )
                pdus = body.get("events") if isinstance(body, dict) else None
                if not isinstance(pdus, list):
                    raise ValueError("the response has no events list")
                count, outliers = await self._input_with_state(
                    room_id,
                    version,
                    origin,
                    _oldest_first(pdus, room_id)[: self.settings.missing_events_limit * 2],
                    events_pb2.INPUT_KIND_GAP_FILL,
                    "missing_events",
                )
                result.events_fetched = count.stored
                result.outliers_fetched += outliers
            except (FederationError, ValueError) as error:
                metrics.FETCH_FAILURES.labels("missing_events").inc()
                log.info("get_missing_events failed", extra={"origin": origin, "error": str(error)})
            known = await self._dag_events(prevs)
            missing = [p for p in prevs if p not in known]
        for prev in missing:
            try:
                state = await self._state_after(room_id, version, origin, prev, result)
            except (FederationError, ValueError) as error:
                metrics.FETCH_FAILURES.labels("state").inc()
                log.info("fetching state failed", extra={"origin": origin, "error": str(error)})
                continue
            if state is not None:
                result.state_after[prev] = state
        result.still_missing = missing

    async def _dag_events(self, event_ids: Sequence[str]) -> set[str]:
        """The ones we hold as part of the DAG (not outliers)."""
        stored = await self._stored(event_ids)
        return {e for e, status in stored.items() if status != events_pb2.EVENT_STATUS_OUTLIER}

    async def _state_after(
        self,
        room_id: str,
        version: RoomVersion,
        origin: str,
        prev_id: str,
        result: MissingEventsResult,
    ) -> list[str] | None:
        """The state after ``prev_id`` per ``origin``, its events stored (as outliers)."""
        body = await self._get(
            origin, federation_path(*V1, "state_ids", room_id), {"event_id": prev_id}
        )
        if not isinstance(body, dict):
            raise ValueError("state_ids: not an object")
        state_ids, chain_ids = body.get("pdu_ids"), body.get("auth_chain_ids")
        if not (_str_list(state_ids) and _str_list(chain_ids)):
            raise ValueError("state_ids: pdu_ids and auth_chain_ids must be lists of ids")
        wanted = list(dict.fromkeys([*chain_ids, *state_ids, prev_id]))
        held = await self._stored(wanted)
        missing = [e for e in wanted if e not in held]
        fetched: list[dict[str, Any]] = []
        if missing and len(missing) >= self.settings.state_fetch_fraction * len(wanted):
            state = await self._get(
                origin, federation_path(*V1, "state", room_id), {"event_id": prev_id}
            )
            if not isinstance(state, dict):
                raise ValueError("state: not an object")
            for key in ("auth_chain", "pdus"):
                if isinstance(state.get(key), list):
                    fetched.extend(state[key])
            if prev_id in missing:
                fetched.extend(await self._fetch_pdus(origin, [prev_id]))
        elif missing:
            fetched = await self._fetch_pdus(origin, missing)
        if fetched:
            count = await self._input(
                room_id,
                version.identifier,
                origin,
                _oldest_first(fetched, room_id),
                events_pb2.INPUT_KIND_OUTLIER,
                "state",
            )
            result.outliers_fetched += count.stored
        # The state after the prev: before it, plus the prev itself when it is state.
        prev = await self._pdu_of(prev_id)
        state_after = list(state_ids)
        if prev is not None and "state_key" in prev:
            event = Event.from_pdu(prev, version)
            replaced = await self._state_keys(state_after, version)
            state_after = [e for e in state_after if replaced.get(e) != event.state_tuple]
            state_after.append(prev_id)
        return state_after

    async def _pdu_of(self, event_id: str) -> dict[str, Any] | None:
        reply = await self.events.QueryEvents(
            events_pb2.QueryEventsRequest(event_ids=[event_id]), timeout=RPC_TIMEOUT
        )
        for record in reply.events:
            return decode_json(bytes(record.pdu_json))
        return None

    async def _state_keys(
        self, event_ids: Sequence[str], version: RoomVersion
    ) -> dict[str, tuple[str, str]]:
        reply = await self.events.QueryEvents(
            events_pb2.QueryEventsRequest(event_ids=list(event_ids)), timeout=RPC_TIMEOUT
        )
        keys = {}
        for record in reply.events:
            pdu = decode_json(bytes(record.pdu_json))
            if isinstance(pdu.get("state_key"), str):
                keys[record.event_id] = (pdu.get("type", ""), pdu["state_key"])
        return keys

    async def _fetch_pdus(self, origin: str, event_ids: Sequence[str]) -> list[dict[str, Any]]:
        """``/event/{id}`` for each (a few at a time); the ones that fail are left out."""
        gate = asyncio.Semaphore(self.settings.parallel_event_fetches)

        async def one(event_id: str) -> list[dict[str, Any]]:
            async with gate:
                try:
                    body = await self._get(origin, federation_path(*V1, "event", event_id))
                except FederationError as error:
                    metrics.FETCH_FAILURES.labels("event").inc()
                    log.info("fetching an event failed", extra={"error": str(error)})
                    return []
            pdus = body.get("pdus") if isinstance(body, dict) else None
            return [p for p in pdus if isinstance(p, dict)][:1] if isinstance(pdus, list) else []

        found = await asyncio.gather(*(one(event_id) for event_id in event_ids))
        return [pdu for pdus in found for pdu in pdus]

    # ------------------------------------------------------------ events by id

    async def fetch_events(
        self, room_id: str, origin: str, event_ids: Sequence[str], with_auth_chain: bool
    ) -> FetchEventsResult:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.missing_events_timeout):
                info = await self._room_info(room_id)
                held = await self._stored(event_ids)
                wanted = [e for e in dict.fromkeys(event_ids) if e not in held]
                pdus = await self._fetch_pdus(origin, wanted)
                if with_auth_chain:
                    for event_id in wanted:
                        try:
                            body = await self._get(
                                origin, federation_path(*V1, "event_auth", room_id, event_id)
                            )
                        except FederationError:
                            metrics.FETCH_FAILURES.labels("event_auth").inc()
                            continue
                        chain = body.get("auth_chain") if isinstance(body, dict) else None
                        if isinstance(chain, list):
                            pdus.extend(chain)
                count = await self._input(
                    room_id,
                    info.room_version,
                    origin,
                    _oldest_first(pdus, room_id),
                    events_pb2.INPUT_KIND_OUTLIER,
                    "events",
                )
                held = await self._stored(event_ids)
                return FetchEventsResult(
                    count.stored, [e for e in dict.fromkeys(event_ids) if e not in held]
                )
        except TimeoutError:
            return FetchEventsResult(0, list(event_ids))
        finally:
            metrics.FETCH_SECONDS.labels("events").observe(time.perf_counter() - started)


def _str_list(value: Any) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)
