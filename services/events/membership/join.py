"""Local users joining rooms other servers host.

Spec: https://spec.matrix.org/v1.19/server-server-api/#joining-rooms (remote
join flow: candidates, make_join with every supported version, template
validation, send_join, processing the response).

The send_join answer's ``state`` and ``auth_chain`` go through the checks
every input path uses (:mod:`services.events.pdu_checks`: format, signatures
verified by the keys service chunk by chunk, hashes → redact); auth events
they cite but leave out are fetched from the resident. Then one
:class:`RoomBatch` stores them as outliers (in auth order, each checked
against its own auth events) and adds the join with the resident's state as
the state before it (:meth:`RoomBatch.add_join`): the join becomes the room's
only forward extremity, the state after it the room's current state. From
then on the resident's /send transactions extend the DAG through the normal
receive pipeline.

A big answer's signatures take longer to verify than its storage takes to
prepare, so when the answer lacks nothing the batch is built and written
while the keys service still verifies, in a transaction committed only once
every signature has verified. When one has not, the transaction is rolled
back and the answer stored again without what was refused, exactly as when
the signatures are checked first (that path also serves answers that lack
auth events).

Partial-state joins: send_join v2 is asked with ``omit_members=true``
(https://spec.matrix.org/v1.19/server-server-api/#put_matrixfederationv2send_joinroomideventid).
When the answer says ``members_omitted``, the state it gives (all but most
member events) is checked and stored the same way, the room is marked
partial-state with the answer's ``servers_in_room`` (events we send go to
them and to the servers of the members we learn of since), and the join
returns at once; :mod:`.resync` fetches the full state in the background.
A resident that does not omit members gives a full join as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from matrix_protocol.event_ids import compute_event_id
from matrix_protocol.events import Event
from matrix_protocol.membership import MembershipError
from matrix_protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from matrix_protocol.signing import signatures_required_for_event
from mxfed.bulk_work import cyclic_gc_paused
from mxfed.clock import now_ms
from mxfed.federation_client import FederationError, federation_path
from services.events import metrics, storage
from services.events.admin.blocks import BLOCKED_ROOMS
from services.events.membership import storage as oob_storage
from services.events.membership.common import MEMBER, MembershipDeps, room_head
from services.events.membership.remote_rooms import RemoteRooms, TryNext, unavailable
from services.events.membership.resync import PartialStateResync
from services.events.outcomes import Reason
from services.events.pdu_checks import (
    CheckedBatch,
    CheckedPdu,
    PendingChecks,
    check_fetched,
    start_checks,
    verify_signatures,
)
from services.events.room_batch import RoomBatch, auth_order
from services.events.storage import PartialStateRoom
from services.events.stored_while_verifying import store_while_verifying

log = logging.getLogger(__name__)

ALL_VERSIONS = list(KNOWN_ROOM_VERSIONS)
# Auth events missing from a send_join answer: how many we fetch at most,
# how many requests at once, and how many /event_auth fallbacks per round.
MAX_FETCHED_AUTH_EVENTS = 500
FETCH_CONCURRENCY = 10
AUTH_CHAIN_FETCHES = 5


class Join(RemoteRooms):
    def __init__(self, deps: MembershipDeps, resync: PartialStateResync | None = None) -> None:
        super().__init__(deps)
        self.resync = resync or PartialStateResync(deps)

    async def perform_join(
        self,
        room_id_or_alias: str,
        user_id: str,
        servers: Sequence[str],
        reason: str,
        content: Mapping[str, Any],
    ) -> tuple[str, str, bool]:
        self._require_local_user(user_id)
        room_id, alias_servers = await self.resolve_room(room_id_or_alias)
        BLOCKED_ROOMS.check(room_id)
        extra = dict(content)
        if reason:
            extra["reason"] = reason
        async with self.deps.pool.acquire() as conn:
            head = await room_head(conn, self.deps.core, room_id)
            in_room = head is not None and await storage.server_has_joined_member(
                conn, room_id, self.server_name
            )
            invite = await oob_storage.get(conn, user_id, room_id)
        if in_room:
            body = {**extra, "membership": "join"}
            event_id, _ = await self.deps.local.send_event(room_id, user_id, MEMBER, user_id, body)
            await self._forget_out_of_band(user_id, room_id)
            return room_id, event_id, False
        invited_via = [invite.via_server] if invite and invite.membership == "invite" else []
        candidates = self._candidates(room_id, invited_via, servers, alias_servers)
        if not candidates:
            raise MembershipError(404, "M_NOT_FOUND", "No known servers to join the room through")
        async with self._joining(room_id):
            event_id, partial = await self._join_through_one_of(candidates, room_id, user_id, extra)
        await self._forget_out_of_band(user_id, room_id)
        if partial:
            self.resync.start(room_id)
        return room_id, event_id, True

    @asynccontextmanager
    async def _joining(self, room_id: str) -> AsyncIterator[None]:
        """The join of ``room_id`` is marked in progress while it runs: the room's
        PDUs a resident sends meanwhile wait for it instead of being dropped."""
        async with self.deps.pool.acquire() as conn:
            await storage.join_started(conn, room_id, now_ms())
        try:
            yield
        finally:
            async with self.deps.pool.acquire() as conn:
                await storage.join_ended(conn, room_id)

    async def _join_through_one_of(
        self, candidates: Sequence[str], room_id: str, user_id: str, extra: Mapping[str, Any]
    ) -> tuple[str, bool]:
        last: MembershipError = unavailable("no server could be reached")
        for server in candidates:
            try:
                with cyclic_gc_paused():
                    return await self._join_through(server, room_id, user_id, extra)
            except TryNext as failure:
                log.info(
                    "join attempt failed; trying the next server",
                    extra={"server": server, "room_id": room_id, "error": failure.error.message},
                )
                last = failure.error
        raise last

    async def _join_through(
        self, server: str, room_id: str, user_id: str, extra: Mapping[str, Any]
    ) -> tuple[str, bool]:
        """make_join, send_join, and the answer checked and stored: our join's id, and
        whether the state is partial."""
        with metrics.JOIN_SECONDS.labels("make_join").time():
            version, template = await self._make(server, room_id, user_id, "join", ALL_VERSIONS)
        event_id, pdu = self._sign(template, version, extra)
        with metrics.JOIN_SECONDS.labels("send_join").time():
            answer = await self._send(server, "join", room_id, event_id, pdu, omit_members=True)
        partial = await self._complete_join(room_id, version, event_id, pdu, answer, server)
        return event_id, partial

    async def _check_pdus(
        self, raw: Iterable[Any], version: RoomVersion, room_id: str
    ) -> dict[str, CheckedPdu]:
        """Steps 1–3 for fetched PDUs of the room; the ones that fail are dropped."""
        return (await self._check_pdus_with_ids(raw, version, room_id))[0]

    async def _check_pdus_with_ids(
        self, raw: Iterable[Any], version: RoomVersion, room_id: str
    ) -> tuple[dict[str, CheckedPdu], list[str]]:
        """:meth:`_check_pdus`, and the event id of each PDU given ("" if none), in order."""
        checked = await check_fetched(self.deps.keys, raw, version, room_id)
        for outcome in checked.settled:
            if outcome.reason is not None:
                log.info(
                    "dropping join state event",
                    extra={"event_id": outcome.event_id, "error": outcome.error},
                )
        return {c.event.event_id: c for c in checked.valid}, checked.event_ids

    async def _fetch_missing_auth_events(
        self,
        server: str,
        room_id: str,
        version: RoomVersion,
        checked: dict[str, CheckedPdu],
        join: Event,
    ) -> None:
        """Auth events cited in the send_join answer but missing from it, fetched
        from the resident and checked like the rest.

        Each missing event is asked for with ``GET /event/{eventId}``; for those
        the resident will not give that way, the auth chain of an event citing
        them (``GET /event_auth/{roomId}/{eventId}``). Rounds repeat while the
        fetched events cite more missing ones, up to MAX_FETCHED_AUTH_EVENTS.
        Whatever stays missing leaves its dependants rejected, as before.
        """
        tried: set[str] = set()
        limit = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def one_event(event_id: str) -> Any:
            path = federation_path("_matrix", "federation", "v1", "event", event_id)
            async with limit:
                try:
                    answer = await self.deps.client.get_json(server, path)
                except FederationError as error:
                    log.info(
                        "could not fetch a missing auth event",
                        extra={"event_id": event_id, "server": server, "error": str(error)},
                    )
                    return None
            pdus = answer.get("pdus") if isinstance(answer, dict) else None
            return pdus[0] if isinstance(pdus, list) and len(pdus) == 1 else None

        async def auth_chain_of(event_id: str) -> list[Any]:
            path = federation_path("_matrix", "federation", "v1", "event_auth", room_id, event_id)
            async with limit:
                try:
                    answer = await self.deps.client.get_json(server, path)
                except FederationError:
                    return []
            chain = answer.get("auth_chain") if isinstance(answer, dict) else None
            return chain if isinstance(chain, list) else []

        while len(tried) < MAX_FETCHED_AUTH_EVENTS:
            citing: dict[str, str] = {}
            for event in [*(c.event for c in checked.values()), join]:
                for auth_id in event.auth_event_ids:
                    if auth_id not in checked and auth_id not in tried:
                        citing.setdefault(auth_id, event.event_id)
            if not citing:
                return
            missing = sorted(citing)[: MAX_FETCHED_AUTH_EVENTS - len(tried)]
            tried.update(missing)
            log.info(
                "fetching auth events missing from a send_join answer",
                extra={"room_id": room_id, "server": server, "count": len(missing)},
            )
            raw = await asyncio.gather(*(one_event(e) for e in missing))
            fetched = await self._check_pdus([p for p in raw if p is not None], version, room_id)
            found = {e: c for e, c in fetched.items() if e in citing}
            still = [e for e in missing if e not in found]
            if still:
                # The chains of (a few of) the events citing what /event would not give.
                sources = sorted({citing[e] for e in still})[:AUTH_CHAIN_FETCHES]
                chains = await asyncio.gather(*(auth_chain_of(e) for e in sources))
                more = await self._check_pdus(
                    [p for chain in chains for p in chain], version, room_id
                )
                found.update({e: c for e, c in more.items() if e not in checked})
            if not found:
                return
            for event_id, entry in found.items():
                checked.setdefault(event_id, entry)

    async def _complete_join(
        self,
        room_id: str,
        version: RoomVersion,
        event_id: str,
        our_pdu: dict[str, Any],
        answer: Any,
        server: str = "",
    ) -> bool:
        """Check and store a send_join answer; True when it gave a partial state."""
        if not isinstance(answer, dict):
            raise TryNext(unavailable("malformed send_join answer"))
        state_raw, chain_raw = answer.get("state"), answer.get("auth_chain")
        if not isinstance(state_raw, list) or not isinstance(chain_raw, list):
            raise TryNext(unavailable("send_join answer lacks state or auth_chain"))
        join_pdu = our_pdu
        returned = answer.get("event")
        if isinstance(returned, dict):
            returned = {k: v for k, v in returned.items() if k != "unsigned"}
            try:
                if compute_event_id(returned, version) == event_id:
                    join_pdu = returned
            except (ValueError, TypeError, KeyError):
                pass
        join = Event(join_pdu, version, event_id)
        other = signatures_required_for_event(join) - {self.server_name}
        with metrics.JOIN_SECONDS.labels("checks").time():
            if other:
                errors = await verify_signatures(self.deps.keys, [(join, other)])
                if errors[0] is not None:
                    raise TryNext(unavailable(f"the resident's countersignature: {errors[0]}"))
            pending = await start_checks(self.deps.keys, [*state_raw, *chain_raw], version, room_id)
        try:
            return await self._store_answer(
                room_id, version, answer, server, len(state_raw), join, join_pdu, pending
            )
        finally:
            pending.cancel()  # nobody waits for the signatures any more

    async def _store_answer(
        self,
        room_id: str,
        version: RoomVersion,
        answer: Mapping[str, Any],
        server: str,
        state_count: int,
        join: Event,
        join_pdu: dict[str, Any],
        pending: PendingChecks,
    ) -> bool:
        """The checked send_join answer stored (see :meth:`_complete_join`)."""
        # The state's event ids, as the checks computed them (once).
        state_ids = list(dict.fromkeys(e for e in pending.event_ids[:state_count] if e))
        partial = self._partial_state(answer, room_id, join.event_id, server)
        # The usual case: every signature verifies and nothing is missing. The
        # answer is then stored while the keys service verifies, in a
        # transaction committed only once every signature has verified.
        unverified = {c.event.event_id: c for c in pending.unverified}
        if (
            not _missing_auth_ids(unverified, join)
            and _create_problem(unverified, state_ids, version, room_id) is None
        ):

            async def write(conn: asyncpg.Connection) -> tuple[RoomBatch, None]:
                batch = await self._join_batch(
                    conn, room_id, version, unverified, state_ids, join, join_pdu, partial
                )
                return batch, None

            with metrics.JOIN_SECONDS.labels("store").time():
                stored, _ = await store_while_verifying(
                    self.deps.pool,
                    pending,
                    unverified.values(),
                    write,
                    what="send_join answer",
                    room_id=room_id,
                )
            if stored:
                return partial is not None
        with metrics.JOIN_SECONDS.labels("checks").time():
            checked = self._dropping_refused(await pending.verified())
        if server:
            with metrics.JOIN_SECONDS.labels("auth_fetch").time():
                await self._fetch_missing_auth_events(server, room_id, version, checked, join)
        problem = _create_problem(checked, state_ids, version, room_id)
        if problem is not None:
            raise TryNext(unavailable(problem))
        with metrics.JOIN_SECONDS.labels("store").time():
            await self._store_join(
                room_id, version, checked, state_ids, join, join_pdu, partial=partial
            )
        return partial is not None

    def _partial_state(
        self, answer: Mapping[str, Any], room_id: str, event_id: str, server: str
    ) -> PartialStateRoom | None:
        """The partial-state room a send_join answer with ``members_omitted`` makes."""
        if answer.get("members_omitted") is not True:
            return None
        in_room = answer.get("servers_in_room")
        servers = [s for s in in_room if isinstance(s, str)] if isinstance(in_room, list) else []
        return PartialStateRoom(
            room_id=room_id,
            join_event_id=event_id,
            joined_via=server,
            servers=sorted(set(servers) - {self.server_name}),
            joined_ts=now_ms(),
        )

    def _dropping_refused(self, checked: CheckedBatch) -> dict[str, CheckedPdu]:
        for outcome in checked.settled:
            if outcome.reason is not None:
                log.info(
                    "dropping join state event",
                    extra={"event_id": outcome.event_id, "error": outcome.error},
                )
        return {c.event.event_id: c for c in checked.valid}

    async def _store_join(
        self,
        room_id: str,
        version: RoomVersion,
        checked: Mapping[str, CheckedPdu],
        state_ids: Sequence[str],
        join: Event,
        join_pdu: dict[str, Any],
        *,
        partial: PartialStateRoom | None = None,
    ) -> None:
        """The state and auth chain as outliers, then the join on that state, in one batch.

        ``partial``: the state lacks members; the room becomes partial-state.

        A join the resident's state does not allow is not stored (TryNext).
        """
        async with self.deps.pool.acquire() as conn, conn.transaction():
            batch = await self._join_batch(
                conn, room_id, version, checked, state_ids, join, join_pdu, partial
            )
        await batch.committed()

    async def _join_batch(
        self,
        conn: asyncpg.Connection,
        room_id: str,
        version: RoomVersion,
        checked: Mapping[str, CheckedPdu],
        state_ids: Sequence[str],
        join: Event,
        join_pdu: dict[str, Any],
        partial: PartialStateRoom | None,
    ) -> RoomBatch:
        """:meth:`_store_join`'s batch, written inside the caller's transaction."""
        await storage.insert_room(conn, room_id, version.identifier)
        batch = RoomBatch(self.deps.core, conn, room_id)
        await batch.open(1)
        if batch.version.identifier != version.identifier:
            raise unavailable("we know this room with another room version")
        await batch.prefetch([*(c.event for c in checked.values()), join])
        held: set[str] = set()
        for entry in auth_order(checked.values()):
            outcome = await batch.add_outlier(entry)
            if outcome.status is not None or outcome.already_stored:
                held.add(outcome.event_id)
        outcome = await batch.add_join(
            CheckedPdu(join, join_pdu), [e for e in state_ids if e in held], partial=partial
        )
        if outcome.status is None and not outcome.already_stored:
            if outcome.reason in (Reason.AUTH_EVENTS_DISALLOW, Reason.STATE_BEFORE_DISALLOWS):
                problem = f"our join does not pass the room's state: {outcome.error}"
            else:
                problem = f"our join cannot be checked: {outcome.error}"
            # Raising rolls the batch back: nothing of this answer is stored.
            raise TryNext(unavailable(problem))
        await batch.write()
        return batch


def _missing_auth_ids(checked: Mapping[str, CheckedPdu], join: Event) -> set[str]:
    """Auth events the answer's events and our join cite but the answer lacks."""
    return {
        auth_id
        for event in [*(c.event for c in checked.values()), join]
        for auth_id in event.auth_event_ids
        if auth_id not in checked
    }


def _create_problem(
    checked: Mapping[str, CheckedPdu], state_ids: Sequence[str], version: RoomVersion, room_id: str
) -> str | None:
    """Why the answer's state has no usable create event of this room, or None."""
    create = next(
        (
            checked[e].event
            for e in state_ids
            if e in checked
            and checked[e].event.type == "m.room.create"
            and checked[e].event.state_key == ""
        ),
        None,
    )
    if create is None:
        return "send_join state has no m.room.create event"
    if str(create.content.get("room_version", "1")) != version.identifier:
        return "the create event's room version differs from make_join's"
    if version.room_id_from_create_event and room_id != "!" + create.event_id[1:]:
        return "the create event is not this room's"
    return None
