"""We host the room: send_join / send_leave / send_knock, and invites we send.

Spec: https://spec.matrix.org/v1.19/server-server-api/#joining-rooms,
#knocking-rooms and #inviting-to-a-room (basic checks → 400 M_INVALID_PARAM; send_join response
with ``state`` before the join, ``auth_chain``, ``event`` when countersigned,
``members_omitted``/``servers_in_room``; send_knock's ``knock_room_state``;
v2/v1 invite); the resident sends accepted events on to the room's other
servers.

Received membership events go through the events service's normal path: a
:class:`RoomBatch` checks them against their auth events, the state before
them and the current state, exactly like a PDU from /send; anything that is
not accepted is refused (403) and not stored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from matrix_protocol.auth_rules import join_authorised_via_server
from matrix_protocol.canonical_json import decode_json, encode_json
from matrix_protocol.event_ids import compute_event_id
from matrix_protocol.events import Event, StateKey
from matrix_protocol.hashes import content_hash_matches
from matrix_protocol.membership import (
    INVITE_STATE_TYPES,
    JOIN_AUTHORISER,
    MembershipError,
    check_membership_event,
    forbidden,
    invalid,
)
from matrix_protocol.policy_servers import (
    PolicyServer,
    has_valid_policy_signature,
    needs_policy_signature,
)
from matrix_protocol.room_summary import Member, heroes, room_is_named
from matrix_protocol.room_versions import EventFormat
from matrix_protocol.server_names import is_valid_user_id, server_name_of
from matrix_protocol.signing import signatures_required_for_event
from mxfed.federation_client import (
    DestinationUnreachableError,
    FederationError,
    HttpResponseError,
    federation_path,
)
from mxfed.service_errors import ServiceError
from services.events import storage
from services.events.membership.common import (
    MEMBER,
    MembershipDeps,
    RoomHead,
    add_signature,
    json_list,
    pdu_json_of,
    room_head,
    with_our_signatures,
)
from services.events.membership.templates import (
    auth_check_against_state,
    check_acl,
    check_join_allowed,
    not_found,
    resident_room,
)
from services.events.pdu_checks import CheckedPdu, verify_signatures
from services.events.room_batch import RoomBatch
from services.events.storage import Status

log = logging.getLogger(__name__)

NAME: StateKey = ("m.room.name", "")
CANONICAL_ALIAS: StateKey = ("m.room.canonical_alias", "")


def _decode(raw: bytes) -> Any:
    try:
        return decode_json(raw)
    except ValueError:
        raise MembershipError(400, "M_NOT_JSON", "Content not JSON") from None


class Resident:
    def __init__(self, deps: MembershipDeps) -> None:
        self.deps = deps

    @property
    def server_name(self) -> str:
        return self.deps.server_name

    # ------------------------------------------------------------ send_*

    async def _accept(
        self, origin: str, room_id: str, event_id: str, raw: bytes, membership: str
    ) -> tuple[RoomHead, Event, bool]:
        """Check, countersign if ours to, and persist; (room, stored event, countersigned)."""
        deps = self.deps
        pdu = _decode(raw)
        async with deps.pool.acquire() as conn:
            head = await resident_room(conn, deps, room_id)
            await check_acl(conn, head, origin)
            version = head.version
            event = check_membership_event(
                pdu,
                version,
                origin=origin,
                room_id=room_id,
                event_id=event_id,
                membership=membership,
            )
            pdu = {key: value for key, value in pdu.items() if key != "unsigned"}
            event = Event(pdu, version, event_id)
            if not content_hash_matches(pdu):
                raise invalid("the event's content hash does not match")
            servers = signatures_required_for_event(event)
            countersign = False
            if membership == "join" and join_authorised_via_server(event) == self.server_name:
                authoriser = event.content.get(JOIN_AUTHORISER)
                # The joining user must still qualify (restricted rooms).
                extra = await check_join_allowed(conn, deps, head, event.state_key or "")
                if extra and not (isinstance(authoriser, str) and is_valid_user_id(authoriser)):
                    raise forbidden("invalid join_authorised_via_users_server")
                servers.discard(self.server_name)
                countersign = True
        errors = await verify_signatures(deps.keys, [(event, servers)])
        if errors[0] is not None:
            raise invalid(errors[0])
        if countersign:
            pdu = add_signature(pdu, version, deps.signing_key(), self.server_name)
            event = Event(pdu, version, event_id)
        event, pdu, policy = await self._policy_signature(room_id, event, pdu)
        await self._persist(room_id, event, pdu, origin, policy)
        return head, event, countersign

    async def _policy_signature(
        self, room_id: str, event: Event, pdu: dict[str, Any]
    ) -> tuple[Event, dict[str, Any], PolicyServer | None]:
        """The event with the room's policy server's signature, asked for if it lacks one.

        MSC4284 (https://github.com/matrix-org/matrix-spec-proposals/blob/main/proposals/4284-policy-servers.md):
        the policy server may decline to sign a membership event given to
        send_join/leave/knock, and the request then fails (its errcode, verbatim).
        """
        policy_servers = self.deps.local.policy
        if policy_servers is None or not needs_policy_signature(event.type, event.state_key):
            return event, pdu, None
        async with self.deps.pool.acquire() as conn:
            policy = await policy_servers.for_room(conn, room_id)
        if policy is None:
            return event, pdu, None
        if not has_valid_policy_signature(event, policy):
            event, pdu = await policy_servers.sign(policy, event, pdu)
        return event, pdu, policy

    async def _persist(
        self,
        room_id: str,
        event: Event,
        pdu: dict[str, Any],
        origin: str,
        policy: PolicyServer | None = None,
    ) -> bool:
        """Through the normal checks; False when it was stored already (a retry).

        The event is marked as relayed for ``origin``: the sender service then
        delivers it to the room's other servers like one of ours, durably.
        """
        async with self.deps.pool.acquire() as conn, conn.transaction():
            batch = RoomBatch(self.deps.core, conn, room_id)
            if not await batch.open(1):
                raise not_found()
            await batch.prefetch([event])
            checked = CheckedPdu(event, pdu, policy_signed_by=policy)
            outcome = await batch.add_live(checked, relayed_for=origin)
            if outcome.already_stored:
                return False
            if outcome.status is None:
                raise invalid(f"cannot accept the event: {outcome.error}")
            if outcome.status is not Status.ACCEPTED:
                # Raising rolls the batch back: nothing is stored.
                raise forbidden(f"the event is not allowed: {outcome.error or 'soft failed'}")
            await batch.write()
        await batch.committed()
        return True

    async def send_join(
        self, origin: str, room_id: str, event_id: str, raw: bytes, omit_members: bool
    ) -> bytes:
        head, event, countersigned = await self._accept(origin, room_id, event_id, raw, "join")
        async with self.deps.pool.acquire() as conn:
            before = await storage.join_state_before(conn, event_id)
            if before is None:
                raise not_found("the join is not part of the room")
            group, servers_before = before
            state = (await self.deps.core.state_store.get(conn, group)).state
            state_ids = list(state.values())
            omitted = False
            if omit_members:
                keep_members = await self._heroes(conn, state, event.state_key or "")
                state_ids = [
                    eid for (t, k), eid in state.items() if t != MEMBER or k in keep_members
                ]
                omitted = True
            chain = await storage.auth_chain_ids(conn, [event_id, *state_ids])
            if omitted:
                kept = set(state_ids)
                chain = [eid for eid in chain if eid not in kept]
            pdus = await pdu_json_of(conn, [*state_ids, *chain, event_id])
        parts = [
            '"state":' + json_list(pdus[e] for e in state_ids if e in pdus),
            '"auth_chain":' + json_list(pdus[e] for e in chain if e in pdus),
        ]
        if countersigned and event_id in pdus:
            parts.append('"event":' + pdus[event_id])
        if omitted:
            parts.append('"members_omitted":true')
            parts.append('"servers_in_room":' + encode_json(servers_before).decode())
        return ("{" + ",".join(parts) + "}").encode()

    @staticmethod
    async def _heroes(conn: Any, state: Mapping[StateKey, str], joiner: str) -> set[str]:
        """Members whose events an ``omit_members`` answer keeps: the heroes, if unnamed.

        Spec: https://spec.matrix.org/v1.19/server-server-api/#put_matrixfederationv2send_joinroomideventid
        (``omit_members``) and the client-server ``RoomSummary`` (``m.heroes``),
        computed for the joining user (:mod:`matrix_protocol.room_summary`).
        """
        named_ids = [state[k] for k in (NAME, CANONICAL_ALIAS) if k in state]
        named = {
            stored.event.type: stored.event.content
            for stored in (await storage.fetch_events(conn, named_ids)).values()
        }
        if room_is_named(named.get(NAME[0]), named.get(CANONICAL_ALIAS[0])):
            return set()
        rows = await storage.member_events(conn, [e for (t, _), e in state.items() if t == MEMBER])
        members = [
            Member(row["state_key"], row["membership"] or "", row["stream_position"])
            for row in rows
        ]
        return set(heroes(members, joiner))

    async def send_leave(self, origin: str, room_id: str, event_id: str, raw: bytes) -> bytes:
        await self._accept(origin, room_id, event_id, raw, "leave")
        return b"{}"

    async def send_knock(self, origin: str, room_id: str, event_id: str, raw: bytes) -> bytes:
        head, _, _ = await self._accept(origin, room_id, event_id, raw, "knock")
        async with self.deps.pool.acquire() as conn:
            state_json = await self.room_state_pdus(conn, room_id)
        return ('{"knock_room_state":' + json_list(state_json) + "}").encode()

    async def room_state_pdus(self, conn: Any, room_id: str) -> list[str]:
        """The invite/knock room state: full PDUs of the current state's summary events."""
        head = await room_head(conn, self.deps.core, room_id)
        if head is None:
            return []
        ids = [head.state[(t, "")] for t in INVITE_STATE_TYPES if (t, "") in head.state]
        pdus = await pdu_json_of(conn, ids)
        return [pdus[e] for e in ids if e in pdus]

    # ------------------------------------------------------------ invites we send

    async def perform_invite(self, room_id: str, sender: str, target: str, reason: str) -> str:
        deps = self.deps
        if not is_valid_user_id(target):
            raise invalid(f"invalid user id {target!r}")
        content: dict[str, Any] = {"membership": "invite"}
        if reason:
            content["reason"] = reason
        if server_name_of(target) == self.server_name:
            event_id, _ = await deps.local.send_event(room_id, sender, MEMBER, target, content)
            return event_id
        if not is_valid_user_id(sender) or server_name_of(sender) != self.server_name:
            raise forbidden(f"{sender!r} is not a user of this server")
        # 1. Build and check the invite on the room's head (nothing stored yet).
        async with deps.pool.acquire() as conn, conn.transaction():
            batch = RoomBatch(deps.core, conn, room_id)
            if not await batch.open(1):
                raise not_found()
            event, pdu = deps.local.build(batch, room_id, MEMBER, sender, target, content)
            head = await room_head(conn, deps.core, room_id)
            if head is None:
                raise not_found()
            await auth_check_against_state(conn, head, event)
            invite_state = await self.room_state_pdus(conn, room_id)
            policy = await deps.local.policy_server_for(batch, event)
        version = head.version
        # 2. The room's policy server signs first (a refused invite never leaves us),
        # then the invitee's server countersigns.
        if policy is not None:
            event, pdu = await deps.local.policy_sign(policy, event, pdu)
        returned = await self._send_invite(
            server_name_of(target), room_id, event, pdu, invite_state
        )
        # 3. Check its answer: the same event, with a valid signature of its server.
        if not isinstance(returned, dict):
            raise MembershipError(
                502, "M_UNKNOWN", "the invitee's server answered without an event"
            )
        try:
            same = compute_event_id(returned, version) == event.event_id
        except (ValueError, TypeError, KeyError):
            same = False
        ours = pdu["signatures"].get(self.server_name)
        theirs = returned.get("signatures")
        if not same or not isinstance(theirs, dict) or theirs.get(self.server_name) != ours:
            raise MembershipError(502, "M_UNKNOWN", "the invitee's server changed the invite")
        final = dict(pdu)
        final["signatures"] = with_our_signatures(theirs, pdu["signatures"])
        final_event = Event(final, version, event.event_id)
        errors = await verify_signatures(deps.keys, [(final_event, [server_name_of(target)])])
        if errors[0] is not None:
            raise MembershipError(502, "M_UNKNOWN", f"invitee's countersignature: {errors[0]}")
        # 4. Persist through the normal path; the sender service delivers it.
        async with deps.pool.acquire() as conn, conn.transaction():
            batch = RoomBatch(deps.core, conn, room_id)
            if not await batch.open(1):
                raise not_found()
            await batch.prefetch([final_event])
            outcome = await batch.add_local(final_event, final, policy_signed_by=policy)
            if outcome.status is not Status.ACCEPTED and not outcome.already_stored:
                raise forbidden(outcome.error or "the invite is not allowed")
            await batch.write()
        await batch.committed()
        return event.event_id

    async def _send_invite(
        self,
        destination: str,
        room_id: str,
        event: Event,
        pdu: dict[str, Any],
        invite_state: Sequence[str],
    ) -> Any:
        client = self.deps.client
        version = event.room_version
        states = [decode_json(s) for s in invite_state]
        body = {"room_version": version.identifier, "event": pdu, "invite_room_state": states}
        path = federation_path("_matrix", "federation", "v2", "invite", room_id, event.event_id)
        try:
            try:
                answer = await client.put_json(destination, path, body)
            except HttpResponseError as error:
                legacy = version.event_format is EventFormat.V1 and error.status in (400, 404, 405)
                if not legacy or error.errcode not in (None, "M_UNRECOGNIZED", "M_NOT_FOUND"):
                    raise
                v1_pdu = dict(pdu)
                v1_pdu["unsigned"] = {"invite_room_state": states}
                v1_path = federation_path(
                    "_matrix", "federation", "v1", "invite", room_id, event.event_id
                )
                answer = await client.put_json(destination, v1_path, v1_pdu)
                if isinstance(answer, list) and len(answer) == 2:
                    answer = answer[1]
        except HttpResponseError as error:
            errcode = error.errcode or "M_UNKNOWN"
            if error.status == 403 or errcode == "M_INCOMPATIBLE_ROOM_VERSION":
                extra = {}
                if isinstance(error.body, dict) and "room_version" in error.body:
                    extra["room_version"] = str(error.body["room_version"])
                raise MembershipError(
                    error.status, errcode, error.error or "the invitee's server refused", **extra
                ) from None
            raise MembershipError(
                502, "M_UNKNOWN", f"the invitee's server refused the invite: {error}"
            ) from None
        except DestinationUnreachableError as error:
            raise MembershipError(
                502, "M_UNKNOWN", f"cannot reach {destination}: {error}"
            ) from None
        except FederationError as error:
            raise MembershipError(
                502, "M_UNKNOWN", f"invite to {destination} failed: {error}"
            ) from None
        event_json = answer.get("event") if isinstance(answer, dict) else None
        return event_json


__all__ = ["ServiceError", "Resident"]
