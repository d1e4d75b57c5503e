"""Local users and rooms other servers host: join, leave, knock; invites we receive.

Spec: behaviours.md §4 (remote join flow: candidates, make_join with every
supported version, template validation, send_join v2 with v1 fallback,
processing the response; leaving/rejecting/retracting via make_leave and
send_leave; knocking) and §5 (receiving invites); endpoints.md §4.

The join's ``state`` and ``auth_chain`` are checked here (format, signatures
in one ``VerifyJsonSignatures`` call, hashes → redact, auth in topological
order) and written with the events service's storage functions: the state
and auth chain as outliers, the state before the join as a state group, the
join as the room's only forward extremity with the room's current state
after it. From then on the resident's /send transactions extend the DAG
through the normal receive pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from matrix_protocol.auth_events import auth_types_for_event
from matrix_protocol.auth_rules import AuthError, check_auth_events_structure, check_auth_rules
from matrix_protocol.canonical_json import decode_json, encode_json
from matrix_protocol.event_ids import compute_event_id
from matrix_protocol.events import Event, StateKey
from matrix_protocol.hashes import content_hash_matches
from matrix_protocol.membership import (
    MembershipError,
    build_event_from_template,
    check_membership_event,
    check_room_state_pdus,
    forbidden,
    incompatible_room_version,
    invalid,
    stripped_state,
    validate_template,
)
from matrix_protocol.pdu_format import PduFormatError, check_pdu_format
from matrix_protocol.redaction import redact
from matrix_protocol.room_versions import (
    KNOWN_ROOM_VERSIONS,
    RoomVersion,
    UnsupportedRoomVersion,
    room_version,
)
from matrix_protocol.server_acl import server_allowed
from matrix_protocol.server_names import is_valid_user_id, server_name_of
from matrix_protocol.signing import signatures_required_for_event
from mxfed.federation_client import (
    FederationError,
    HttpResponseError,
    federation_path,
)
from services.events import storage
from services.events.membership import storage as oob_storage
from services.events.membership.common import (
    MEMBER,
    MembershipDeps,
    add_signature,
    now_ms,
    room_head,
    state_events,
    verify_event_signatures,
)
from services.events.room_batch import redacted_copy, waiting_redaction_applies
from services.events.state_storage import PendingGroups, StateStore
from services.events.storage import CurrentStateRow, EventWrite, Status, StoredEvent

log = logging.getLogger(__name__)

CREATE: StateKey = ("m.room.create", "")
ALL_VERSIONS = list(KNOWN_ROOM_VERSIONS)
KNOCK_VERSIONS = [v for v, rules in KNOWN_ROOM_VERSIONS.items() if rules.knock_join_rule]
# make_* errors after which another resident may do better ([Synapse]).
# Auth events missing from a send_join answer: how many we fetch at most,
# how many requests at once, and how many /event_auth fallbacks per round.
MAX_FETCHED_AUTH_EVENTS = 500
FETCH_CONCURRENCY = 10
AUTH_CHAIN_FETCHES = 5
_TRY_NEXT_ERRCODES = frozenset(
    {"M_NOT_FOUND", "M_UNABLE_TO_AUTHORISE_JOIN", "M_UNABLE_TO_GRANT_JOIN"}
)


class TryNext(Exception):
    """This candidate server cannot help; ``error`` is what to report if none can."""

    def __init__(self, error: MembershipError) -> None:
        super().__init__(error.message)
        self.error = error


def _unavailable(message: str) -> MembershipError:
    return MembershipError(502, "M_UNKNOWN", message)


@dataclass
class Checked:
    event: Event
    pdu: Mapping[str, Any]
    redacted: bool = False
    status: Status = Status.OUTLIER
    reason: str = ""


def topological_order(events: Mapping[str, Checked]) -> list[str]:
    """Auth events before the events citing them (ties: depth, then ID)."""
    order: list[str] = []
    done: set[str] = set()
    for start in sorted(events, key=lambda e: (events[e].event.depth, e)):
        stack: list[tuple[str, bool]] = [(start, False)]
        while stack:
            event_id, expanded = stack.pop()
            if event_id in done:
                continue
            if expanded:
                done.add(event_id)
                order.append(event_id)
                continue
            stack.append((event_id, True))
            for auth_id in events[event_id].event.auth_event_ids:
                if auth_id in events and auth_id not in done:
                    stack.append((auth_id, False))
    return order


def check_auth_chain(events: dict[str, Checked], create: Event) -> None:
    """Auth-check every event against its own auth events; failures become REJECTED."""
    for event_id in topological_order(events):
        checked = events[event_id]
        event = checked.event
        if event.type == "m.room.create":
            try:
                check_auth_rules(event, {})
            except AuthError as error:
                checked.status, checked.reason = Status.REJECTED, str(error)
            continue
        auth = [events.get(a) for a in event.auth_event_ids]
        if any(a is None for a in auth):
            checked.status, checked.reason = Status.REJECTED, "missing auth events"
            continue
        present = [a for a in auth if a is not None]
        if any(a.status is Status.REJECTED for a in present):
            checked.status, checked.reason = Status.REJECTED, "an auth event was rejected"
            continue
        try:
            check_auth_events_structure(event, [a.event for a in present])
            auth_state = {a.event.state_tuple: a.event for a in present}
            auth_state.setdefault(CREATE, create)
            check_auth_rules(event, auth_state)
        except AuthError as error:
            checked.status, checked.reason = Status.REJECTED, str(error)


class Joining:
    def __init__(self, deps: MembershipDeps) -> None:
        self.deps = deps

    @property
    def server_name(self) -> str:
        return self.deps.server_name

    def _require_local_user(self, user_id: str) -> None:
        if not is_valid_user_id(user_id) or server_name_of(user_id) != self.server_name:
            raise forbidden(f"{user_id!r} is not a user of this server")

    # ------------------------------------------------------------ candidates

    async def resolve_room(self, room_id_or_alias: str) -> tuple[str, list[str]]:
        """A room ID and the servers likely to be in it."""
        if room_id_or_alias.startswith("!"):
            return room_id_or_alias, []
        if not room_id_or_alias.startswith("#") or ":" not in room_id_or_alias:
            raise invalid(f"{room_id_or_alias!r} is neither a room ID nor an alias")
        alias = room_id_or_alias
        alias_server = server_name_of(alias)
        if alias_server == self.server_name:
            async with self.deps.pool.acquire() as conn:
                row = await storage.get_alias(conn, alias)
            if row is None:
                raise MembershipError(404, "M_NOT_FOUND", f"Room alias {alias} not found")
            return row["room_id"], list(row["servers"])
        path = federation_path("_matrix", "federation", "v1", "query", "directory")
        try:
            answer = await self.deps.client.get_json(
                alias_server, path, query={"room_alias": alias}
            )
        except HttpResponseError as error:
            if error.status == 404:
                raise MembershipError(404, "M_NOT_FOUND", f"Room alias {alias} not found") from None
            raise _unavailable(f"alias lookup on {alias_server} failed: {error}") from None
        except FederationError as error:
            raise _unavailable(f"alias lookup on {alias_server} failed: {error}") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("room_id"), str):
            raise _unavailable(f"{alias_server} gave a malformed directory answer")
        servers = [s for s in answer.get("servers") or [] if isinstance(s, str)]
        return answer["room_id"], servers

    def _candidates(self, room_id: str, *groups: Iterable[str]) -> list[str]:
        found: list[str] = []
        for group in groups:
            found.extend(s for s in group if s)
        if ":" in room_id:
            found.append(server_name_of(room_id))
        return [s for s in dict.fromkeys(found) if s != self.server_name]

    # ------------------------------------------------------------ make_* / send_*

    async def _make(
        self, server: str, room_id: str, user_id: str, membership: str, versions: Sequence[str]
    ) -> tuple[RoomVersion, dict[str, Any]]:
        path = federation_path(
            "_matrix", "federation", "v1", f"make_{membership}", room_id, user_id
        )
        query = {"ver": list(versions)} if versions else None
        try:
            answer = await self.deps.client.get_json(server, path, query=query)
        except HttpResponseError as error:
            errcode = error.errcode or "M_UNKNOWN"
            if error.status >= 500 or errcode in _TRY_NEXT_ERRCODES or error.status == 404:
                raise TryNext(
                    MembershipError(
                        404 if errcode == "M_NOT_FOUND" else 502,
                        errcode if error.status < 500 else "M_UNKNOWN",
                        error.error or str(error),
                    )
                ) from None
            extra = {}
            if isinstance(error.body, dict) and isinstance(error.body.get("room_version"), str):
                extra["room_version"] = error.body["room_version"]
            raise MembershipError(
                error.status, errcode, error.error or str(error), **extra
            ) from None
        except FederationError as error:
            raise TryNext(_unavailable(f"{server}: {error}")) from None
        if not isinstance(answer, dict):
            raise TryNext(_unavailable(f"{server} gave a malformed make_{membership} answer"))
        version_id = answer.get("room_version", "1")
        try:
            version = room_version(version_id)
        except UnsupportedRoomVersion:
            raise TryNext(
                MembershipError(400, "M_UNSUPPORTED_ROOM_VERSION", f"room version {version_id!r}")
            ) from None
        try:
            template = validate_template(
                answer.get("event"), room_id=room_id, user_id=user_id, membership=membership
            )
        except MembershipError as error:
            raise TryNext(error) from None
        return version, template

    def _sign(
        self, template: dict[str, Any], version: RoomVersion, extra: Mapping[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        key = self.deps.signing_key()
        return build_event_from_template(
            template,
            version,
            origin=self.server_name,
            origin_server_ts=now_ms(),
            signing_key=key.signing_key,
            key_id=key.key_id,
            extra_content=extra,
            event_id_localpart=secrets.token_urlsafe(18),
        )

    async def _send(
        self, server: str, kind: str, room_id: str, event_id: str, pdu: dict[str, Any]
    ) -> Any:
        """PUT send_{kind} (v2 for join/leave, with the v1 fallback; v1 for knock)."""
        client = self.deps.client
        v1 = federation_path("_matrix", "federation", "v1", f"send_{kind}", room_id, event_id)
        try:
            if kind == "knock":
                return await client.put_json(server, v1, pdu)
            v2 = federation_path("_matrix", "federation", "v2", f"send_{kind}", room_id, event_id)
            try:
                return await client.put_json(server, v2, pdu)
            except HttpResponseError as error:
                if error.status not in (404, 405) or error.errcode not in (None, "M_UNRECOGNIZED"):
                    raise
            answer = await client.put_json(server, v1, pdu)
            if isinstance(answer, list) and len(answer) == 2:
                return answer[1]
            return answer
        except HttpResponseError as error:
            errcode = error.errcode or "M_UNKNOWN"
            if error.status >= 500:
                raise TryNext(_unavailable(f"{server}: {error}")) from None
            if errcode in ("M_INVALID_PARAM", "M_MISSING_PARAM"):
                # endpoints.md §4: a 5xx for the local actor, not a pass-through.
                raise _unavailable(f"{server} refused our {kind}: {error}") from None
            raise MembershipError(error.status, errcode, error.error or str(error)) from None
        except FederationError as error:
            raise TryNext(_unavailable(f"{server}: {error}")) from None

    # ------------------------------------------------------------ join

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
        last: MembershipError = _unavailable("no server could be reached")
        for server in candidates:
            try:
                version, template = await self._make(server, room_id, user_id, "join", ALL_VERSIONS)
                event_id, pdu = self._sign(template, version, extra)
                answer = await self._send(server, "join", room_id, event_id, pdu)
                await self._complete_join(room_id, version, event_id, pdu, answer, server)
            except TryNext as failure:
                log.info(
                    "join attempt failed; trying the next server",
                    extra={"server": server, "room_id": room_id, "error": failure.error.message},
                )
                last = failure.error
                continue
            await self._forget_out_of_band(user_id, room_id)
            return room_id, event_id, True
        raise last

    async def _forget_out_of_band(self, user_id: str, room_id: str) -> None:
        async with self.deps.pool.acquire() as conn:
            await oob_storage.delete(conn, user_id, room_id)

    async def _check_pdus(
        self, raw: Iterable[Any], version: RoomVersion, room_id: str
    ) -> dict[str, Checked]:
        """Format, signatures (one batch) and hashes of fetched PDUs; bad ones are dropped."""
        parsed: dict[str, Checked] = {}
        for pdu in raw:
            if not isinstance(pdu, dict):
                continue
            pdu = {k: v for k, v in pdu.items() if k != "unsigned"}
            try:
                check_pdu_format(pdu, version)
                event = Event.from_pdu(pdu, version)
                if event.room_id != room_id:
                    continue
                signatures_required_for_event(event)
            except (PduFormatError, ValueError, TypeError, KeyError):
                continue
            parsed.setdefault(event.event_id, Checked(event, pdu))
        checks = [(c.event, signatures_required_for_event(c.event)) for c in parsed.values()]
        errors = await verify_event_signatures(self.deps.keys, checks)
        for (event, _), error in zip(checks, errors, strict=True):
            if error is not None:
                log.info(
                    "dropping join state event", extra={"event_id": event.event_id, "error": error}
                )
                parsed.pop(event.event_id, None)
        for checked in parsed.values():
            if not content_hash_matches(checked.pdu):
                checked.pdu = redact(checked.pdu, version)
                checked.event = Event(checked.pdu, version, checked.event.event_id)
                checked.redacted = True
        return parsed

    async def _fetch_missing_auth_events(
        self,
        server: str,
        room_id: str,
        version: RoomVersion,
        checked: dict[str, Checked],
        join: Event,
    ) -> None:
        """Auth events cited in the send_join answer but missing from it, fetched
        from the resident (behaviours.md §4 step 6) and checked like the rest.

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
            for entry in [*checked.values(), Checked(join, join.pdu)]:
                for auth_id in entry.event.auth_event_ids:
                    if auth_id not in checked and auth_id not in tried:
                        citing.setdefault(auth_id, entry.event.event_id)
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
    ) -> None:
        if not isinstance(answer, dict):
            raise TryNext(_unavailable("malformed send_join answer"))
        state_raw, chain_raw = answer.get("state"), answer.get("auth_chain")
        if not isinstance(state_raw, list) or not isinstance(chain_raw, list):
            raise TryNext(_unavailable("send_join answer lacks state or auth_chain"))
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
        if other:
            errors = await verify_event_signatures(self.deps.keys, [(join, other)])
            if errors[0] is not None:
                raise TryNext(_unavailable(f"the resident's countersignature: {errors[0]}"))
        checked = await self._check_pdus([*state_raw, *chain_raw], version, room_id)
        if server:
            await self._fetch_missing_auth_events(server, room_id, version, checked, join)
        state_ids = set()
        for pdu in state_raw:
            if isinstance(pdu, dict):
                try:
                    state_ids.add(compute_event_id(pdu, version))
                except (ValueError, TypeError, KeyError):
                    continue
        create = next(
            (
                c.event
                for c in checked.values()
                if c.event.type == "m.room.create" and c.event.state_key == ""
            ),
            None,
        )
        if create is None or create.event_id not in state_ids:
            raise TryNext(_unavailable("send_join state has no m.room.create event"))
        if str(create.content.get("room_version", "1")) != version.identifier:
            raise TryNext(_unavailable("the create event's room version differs from make_join's"))
        if version.room_id_from_create_event and room_id != "!" + create.event_id[1:]:
            raise TryNext(_unavailable("the create event is not this room's"))
        check_auth_chain(checked, create)
        state: dict[StateKey, str] = {}
        for event_id_ in state_ids:
            entry = checked.get(event_id_)
            if entry is not None and entry.event.is_state and entry.status is not Status.REJECTED:
                state[entry.event.state_tuple] = event_id_
        # The join itself against the state the resident gave us.
        keys = auth_types_for_event(join.type, join.sender, join.state_key, join.content, version)
        auth_state = {k: checked[state[k]].event for k in keys | {CREATE} if k in state}
        try:
            check_auth_rules(join, auth_state)
        except AuthError as error:
            raise TryNext(
                _unavailable(f"our join does not pass the room's state: {error}")
            ) from None
        await self._write_join(room_id, version, checked, state, join, join_pdu, create)

    async def _write_join(
        self,
        room_id: str,
        version: RoomVersion,
        checked: dict[str, Checked],
        state: dict[StateKey, str],
        join: Event,
        join_pdu: dict[str, Any],
        create: Event,
    ) -> None:
        core = self.deps.core
        memberships = {
            eid: checked[eid].event.membership for (t, _), eid in state.items() if t == MEMBER
        }
        servers_before = sorted(
            {
                server_name_of(k)
                for (t, k), eid in state.items()
                if t == MEMBER and memberships.get(eid) == "join"
            }
        )
        async with self.deps.pool.acquire() as conn, conn.transaction():
            await storage.insert_room(conn, room_id, version.identifier)
            await storage.lock_room(conn, room_id)
            room = (await storage.get_rooms(conn, [room_id]))[room_id]
            if room.room_version != version.identifier:
                raise _unavailable("we know this room with another room version")
            existing = await storage.fetch_events(conn, [*checked, join.event_id])
            if join.event_id in existing:
                return
            old_state: dict[StateKey, str] = {}
            if room.current_state_group is not None:
                old_state = dict((await core.state_store.get(conn, room.current_state_group)).state)
            pending = PendingGroups()
            await StateStore.reserve_ids(conn, pending, 2)
            before = core.state_store.derive(room_id, None, state, pending)
            after_state = dict(state)
            after_state[join.state_tuple] = join.event_id
            after = core.state_store.derive(
                room_id, before, after_state, pending, delta={join.state_tuple: join.event_id}
            )
            writes = [
                EventWrite(
                    StoredEvent(
                        event=c.event,
                        status=c.status,
                        rejection_reason=c.reason,
                        redacted=c.redacted,
                    ),
                    encode_json(c.pdu).decode(),
                    c.event.membership,
                )
                for eid, c in checked.items()
                if eid not in existing
            ]
            join_stored = StoredEvent(
                event=join,
                status=Status.ACCEPTED,
                state_group_before=before.id,
                state_group_after=after.id,
                servers_before=servers_before,
            )
            writes.append(EventWrite(join_stored, encode_json(join_pdu).decode(), "join"))
            await _redact_waiting_targets(conn, room_id, writes)
            await StateStore.write(conn, pending)
            await storage.insert_events(conn, room_id, writes)
            extremities = await storage.forward_extremities(conn, room_id)
            await storage.replace_forward_extremities(
                conn, room_id, list(extremities), [join.event_id]
            )
            membership_of = dict(memberships)
            membership_of[join.event_id] = "join"
            for eid in after_state.values():
                if eid not in membership_of and eid in existing:
                    membership_of[eid] = existing[eid].event.membership
            removed = [k for k in old_state if k not in after_state]
            changed = [
                CurrentStateRow(k[0], k[1], eid, membership_of.get(eid) if k[0] == MEMBER else None)
                for k, eid in after_state.items()
                if old_state.get(k) != eid
            ]
            await storage.apply_current_state_delta(conn, room_id, removed, changed)
            await storage.update_room_head(conn, room_id, after.id, create.event_id)
            positions = await storage.assign_stream_positions(conn, [join.event_id])
            join_stored.stream_position = positions.get(join.event_id)
        for write in writes:
            core.event_cache.put(write.stored.event_id, write.stored)

    # ------------------------------------------------------------ leave

    async def perform_leave(self, room_id: str, user_id: str, reason: str) -> str:
        self._require_local_user(user_id)
        content: dict[str, Any] = {"membership": "leave"}
        if reason:
            content["reason"] = reason
        async with self.deps.pool.acquire() as conn:
            head = await room_head(conn, self.deps.core, room_id)
            in_room = head is not None and await storage.server_has_joined_member(
                conn, room_id, self.server_name
            )
            current = None
            if head is not None:
                member = (await state_events(conn, head.state, [(MEMBER, user_id)])).get(
                    (MEMBER, user_id)
                )
                current = member.membership if member is not None else None
            oob = await oob_storage.get(conn, user_id, room_id)
        if in_room and current in ("join", "invite", "knock"):
            event_id, _ = await self.deps.local.send_event(
                room_id, user_id, MEMBER, user_id, content
            )
            await self._forget_out_of_band(user_id, room_id)
            return event_id
        if oob is None or oob.membership not in ("invite", "knock"):
            raise forbidden("You are not in, invited to or knocking on this room")
        last: MembershipError | None = None
        for server in self._candidates(room_id, [oob.via_server]):
            try:
                version, template = await self._make(server, room_id, user_id, "leave", [])
                event_id, pdu = self._sign(template, version, {"reason": reason} if reason else {})
                await self._send(server, "leave", room_id, event_id, pdu)
            except TryNext as failure:
                last = failure.error
                continue
            except MembershipError as error:
                last = error
                continue
            await self._record(user_id, room_id, "leave", event_id, version, pdu, server, "[]")
            return event_id
        # [Synapse]: the user must not stay stuck with the invite: leave out-of-band locally.
        log.info(
            "could not leave through any server; recording a local leave",
            extra={"room_id": room_id, "error": last.message if last else ""},
        )
        await self._record(
            user_id, room_id, "leave", "", room_version(oob.room_version), {}, oob.via_server, "[]"
        )
        return ""

    async def _record(
        self,
        user_id: str,
        room_id: str,
        membership: str,
        event_id: str,
        version: RoomVersion,
        pdu: Mapping[str, Any],
        via: str,
        stripped_json: str,
    ) -> None:
        async with self.deps.pool.acquire() as conn:
            await oob_storage.upsert(
                conn,
                oob_storage.OutOfBand(
                    user_id=user_id,
                    room_id=room_id,
                    membership=membership,
                    event_id=event_id,
                    room_version=version.identifier,
                    sender=str(pdu.get("sender", user_id)),
                    via_server=via,
                    event_json=encode_json(dict(pdu)).decode(),
                    stripped_state_json=stripped_json,
                    received_ts=now_ms(),
                ),
            )

    # ------------------------------------------------------------ knock

    async def perform_knock(
        self, room_id_or_alias: str, user_id: str, servers: Sequence[str], reason: str
    ) -> tuple[str, str, list[dict[str, Any]]]:
        self._require_local_user(user_id)
        room_id, alias_servers = await self.resolve_room(room_id_or_alias)
        candidates = self._candidates(room_id, servers, alias_servers)
        if not candidates:
            raise MembershipError(404, "M_NOT_FOUND", "No known servers to knock through")
        last: MembershipError = _unavailable("no server could be reached")
        for server in candidates:
            try:
                version, template = await self._make(
                    server, room_id, user_id, "knock", KNOCK_VERSIONS
                )
                event_id, pdu = self._sign(template, version, {"reason": reason} if reason else {})
                answer = await self._send(server, "knock", room_id, event_id, pdu)
            except TryNext as failure:
                last = failure.error
                continue
            raw_state = answer.get("knock_room_state") if isinstance(answer, dict) else None
            stripped = await self._stripped_room_state(raw_state, version, room_id, strict=False)
            stripped.append(stripped_state([pdu])[0])
            await self._record(
                user_id,
                room_id,
                "knock",
                event_id,
                version,
                pdu,
                server,
                encode_json(stripped).decode(),
            )
            return room_id, event_id, stripped
        raise last

    async def _stripped_room_state(
        self, raw: Any, version: RoomVersion, room_id: str, *, strict: bool
    ) -> list[dict[str, Any]]:
        """invite/knock room state → stripped state; entries that fail checks are dropped.

        ``strict`` (room v12+ invites): a missing create event or a malformed
        entry refuses the whole thing (endpoints.md §4).
        """
        try:
            events = check_room_state_pdus(raw, version, room_id)
        except MembershipError:
            if strict:
                raise
            if not isinstance(raw, list):
                return []
            events = []
            for pdu in raw:
                try:
                    events.extend(check_room_state_pdus([pdu], version, room_id))
                except MembershipError:
                    if isinstance(pdu, dict) and pdu.get("type") == "m.room.create":
                        continue
                    try:
                        check_pdu_format(pdu, version)
                        events.append(Event.from_pdu(pdu, version))
                    except (PduFormatError, ValueError, TypeError, KeyError):
                        continue
            events = [e for e in events if e.is_state and e.pdu.get("room_id", room_id) == room_id]
        checks = []
        for event in events:
            try:
                checks.append((event, signatures_required_for_event(event)))
            except ValueError:
                continue
        errors = await verify_event_signatures(self.deps.keys, checks)
        good = [event for (event, _), error in zip(checks, errors, strict=True) if error is None]
        if strict and not any(e.type == "m.room.create" for e in good):
            raise invalid("invite_room_state: the m.room.create event does not verify")
        return stripped_state(good)

    # ------------------------------------------------------------ invites we receive

    async def receive_invite(
        self,
        origin: str,
        room_id: str,
        event_id: str,
        version_id: str,
        raw_pdu: bytes,
        raw_state: bytes,
    ) -> bytes:
        try:
            pdu = decode_json(raw_pdu)
            state = decode_json(raw_state) if raw_state else []
        except ValueError:
            raise MembershipError(400, "M_NOT_JSON", "Content not JSON") from None
        async with self.deps.pool.acquire() as conn:
            head = await room_head(conn, self.deps.core, room_id)
            if not version_id:
                version_id = head.version.identifier if head else "1"
            try:
                version = room_version(version_id)
            except UnsupportedRoomVersion:
                raise incompatible_room_version(str(version_id)) from None
            if head is not None:
                acl = (await state_events(conn, head.state, [("m.room.server_acl", "")])).get(
                    ("m.room.server_acl", "")
                )
                if acl is not None and not server_allowed(origin, acl.content):
                    raise forbidden("Server is banned from this room by its server ACL")
        if not isinstance(pdu, dict):
            raise MembershipError(400, "M_BAD_JSON", "the event must be a JSON object")
        pdu = {k: v for k, v in pdu.items() if k != "unsigned"}
        event = check_membership_event(
            pdu,
            version,
            origin=origin,
            room_id=room_id,
            event_id=event_id,
            membership="invite",
            local_server=self.server_name,
        )
        if not content_hash_matches(pdu):
            raise invalid("the invite's content hash does not match")
        errors = await verify_event_signatures(
            self.deps.keys, [(event, signatures_required_for_event(event))]
        )
        if errors[0] is not None:
            raise invalid(errors[0])
        stripped = await self._stripped_room_state(
            state, version, room_id, strict=version.room_id_from_create_event
        )
        stripped.append(stripped_state([event])[0])
        signed = add_signature(pdu, version, self.deps.signing_key(), self.server_name)
        await self._record(
            event.state_key or "",
            room_id,
            "invite",
            event_id,
            version,
            signed,
            origin,
            encode_json(stripped).decode(),
        )
        return encode_json(signed)

    async def query_invites(self, user_id: str) -> list[oob_storage.OutOfBand]:
        async with self.deps.pool.acquire() as conn:
            return await oob_storage.list_for(conn, user_id)


async def _redact_waiting_targets(
    conn: asyncpg.Connection, room_id: str, writes: Sequence[EventWrite]
) -> None:
    """Events of a rejoin that redactions stored earlier waited for (signing.md §6).

    The join's state and auth chain are written here rather than through a
    room batch, so the waiting redactions are applied here too.
    """
    waiting = await storage.waiting_redactions(conn, room_id)
    arrived = [w for w in writes if w.stored.event_id in waiting]
    for write in arrived:
        stored = write.stored
        applies = waiting_redaction_applies(waiting[stored.event_id], stored.event)
        if applies and not stored.redacted:
            stored.event, write.pdu_json = redacted_copy(stored.event)
            stored.redacted = True
    if arrived:
        await storage.update_waiting_redactions(
            conn, room_id, [], [w.stored.event_id for w in arrived]
        )
