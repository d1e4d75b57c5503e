"""Third-party invites: the inviting side, 3pid/onbind and exchange_third_party_invite.

Spec: https://spec.matrix.org/v1.19/server-server-api/#third-party-invites
(``PUT /v1/exchange_third_party_invite/{roomId}``, ``PUT /v1/3pid/onbind``,
#verifying-the-invite) and https://spec.matrix.org/v1.19/rooms/v12/#authorisation-rules
(the ``third_party_invite`` case of ``m.room.member``).

* :meth:`ThirdParty.perform_invite` — a local user invites a 3PID: the
  identity server stores the invite (see :mod:`.identity`), then the
  ``m.room.third_party_invite`` state event (state_key = the token) goes
  through the events service like any local event.
* :meth:`ThirdParty.on_bind` — the identity server says the 3PID is now one
  of our users. For each invite: when the inviter is one of ours and we are in
  the room, the ``m.room.member`` invite with ``content.third_party_invite``
  is built, signed and accepted here; otherwise the inviter's server is asked
  to do it with ``exchange_third_party_invite`` (its server first, then the
  room ID's domain for v1–v11 room ids) and its v2 invite reaches us as usual.
* :meth:`ThirdParty.exchange` — another server's user bound the 3PID: the
  partial event is checked against the room's ``m.room.third_party_invite``
  (token known, same sender, signature by one of its keys, key still valid),
  built and signed on the room's head as our user, countersigned by the
  invitee's server (v2 invite, as any invite we send), then accepted through
  the room's normal path — the auth rules run again there — and sent to the
  room by the sender service. A refusal at any step stores nothing.

A token is consumed once. The auth rules do not forbid a second invite
carrying the same ``signed`` block (after the first invitee left, say); this
service refuses it: a token that an accepted ``m.room.member`` invite of the
room already carries cannot authorise another (403 M_FORBIDDEN), checked under
the room's lock together with accepting the new invite. For onbind retries
the same invitee's earlier invite counts as done, not as an error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from matrix_protocol.canonical_json import decode_json
from matrix_protocol.event_ids import compute_event_id
from matrix_protocol.events import Event
from matrix_protocol.membership import MembershipError, forbidden, invalid
from matrix_protocol.policy_servers import PolicyServer
from matrix_protocol.server_names import is_valid_user_id, server_name_of
from matrix_protocol.third_party_invites import verify_third_party_invite_signed
from mxfed.federation_client import (
    DestinationUnreachableError,
    FederationError,
    HttpResponseError,
    federation_path,
)
from mxfed.service_errors import ServiceError
from mxfed_api.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from services.events import storage
from services.events.membership.common import (
    MEMBER,
    MembershipDeps,
    room_head,
    state_events,
    with_our_signatures,
)
from services.events.membership.resident import Resident
from services.events.membership.templates import (
    auth_check_against_state,
    check_acl,
    not_found,
    resident_room,
)
from services.events.pdu_checks import verify_signatures
from services.events.room_batch import RoomBatch
from services.events.storage import Status
from services.events.third_party.identity import IdentityClient, KeyCheckFailed

log = logging.getLogger(__name__)

THIRD_PARTY_INVITE = "m.room.third_party_invite"


def invite_keys(content: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(public key, key validity URL or "") pairs of an m.room.third_party_invite, in the
    order to try them: the top-level key (its URL written by the inviting server) first,
    then each of ``public_keys``; repeats left out."""
    pairs: list[tuple[str, str]] = []
    entries = content.get("public_keys")
    for entry in [content, *(entries if isinstance(entries, list) else [])]:
        if isinstance(entry, Mapping) and isinstance(entry.get("public_key"), str):
            url = entry.get("key_validity_url")
            pairs.append((entry["public_key"], url if isinstance(url, str) else ""))
    return list(dict.fromkeys(pairs))


async def check_invite_keys(
    identity: IdentityClient, signed: Mapping[str, Any], content: Mapping[str, Any]
) -> None:
    """Pass when one key of the invite verifies ``signed`` and is confirmed valid.

    Each key is tried in turn (:func:`invite_keys`); for one that verifies
    the signature and has a ``key_validity_url``, the identity server must
    answer ``valid: true`` there. A check that fails (the key revoked, the
    URL gone — a 404 of a retired API —, the server unreachable) is logged
    with its cause and the next key is tried. None confirmed: 403 when an
    identity server answered, 502 when none could be reached (worth a retry).
    """
    failures: list[KeyCheckFailed] = []
    for public_key, url in invite_keys(content):
        if not verify_third_party_invite_signed(signed, _KeyOnly(public_key)):  # type: ignore[arg-type]
            continue
        if not url:
            return
        try:
            await identity.check_key(url, public_key)
        except KeyCheckFailed as failure:
            log.info(
                "third-party invite key not confirmed; trying the next",
                extra={"public_key": public_key, "error": str(failure)},
            )
            failures.append(failure)
            continue
        return
    if not failures:
        raise forbidden("no signature in signed verifies with the third-party invite's keys")
    causes = "; ".join(str(f) for f in failures)
    if any(f.answered for f in failures):
        raise forbidden(f"the identity server did not confirm the invite's key: {causes}")
    raise MembershipError(502, "M_UNKNOWN", f"cannot check the invite's key: {causes}")


@dataclass
class OnBindOutcome:
    room_id: str
    token: str
    result: str  # invited | exchanged | already_done | refused | failed
    event_id: str = ""
    error: str = ""


class _KeyOnly:
    """Stands in for an m.room.third_party_invite event offering one key."""

    def __init__(self, public_key: str) -> None:
        self.content = {"public_key": public_key}


def _missing(name: str) -> MembershipError:
    return MembershipError(400, "M_MISSING_PARAM", f"missing or invalid {name!r}")


def parse_signed(third_party_invite: Any) -> tuple[dict[str, Any], str, str]:
    """(signed, mxid, token) of a ``third_party_invite`` object, or 400."""
    if not isinstance(third_party_invite, Mapping):
        raise _missing("content.third_party_invite")
    signed = third_party_invite.get("signed")
    if not isinstance(signed, Mapping):
        raise _missing("content.third_party_invite.signed")
    mxid, token = signed.get("mxid"), signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str) or not token:
        raise _missing("signed.mxid and signed.token")
    if not isinstance(signed.get("signatures"), Mapping):
        raise _missing("signed.signatures")
    return dict(signed), mxid, token


def invite_content(display_name: str | None, signed: Mapping[str, Any]) -> dict[str, Any]:
    third_party_invite: dict[str, Any] = {"signed": dict(signed)}
    if display_name is not None:
        third_party_invite["display_name"] = display_name
    return {"membership": "invite", "third_party_invite": third_party_invite}


class ThirdParty:
    def __init__(
        self,
        deps: MembershipDeps,
        accounts: accounts_pb2_grpc.AccountsStub,
        identity: IdentityClient,
    ) -> None:
        self.deps = deps
        self.accounts = accounts
        self.identity = identity
        self.resident = Resident(deps)

    @property
    def server_name(self) -> str:
        return self.deps.server_name

    def _ours(self, user_id: str) -> bool:
        return is_valid_user_id(user_id) and server_name_of(user_id) == self.server_name

    # ------------------------------------------------------------ inviting a 3PID

    async def perform_invite(
        self,
        room_id: str,
        sender: str,
        id_server: str,
        medium: str,
        address: str,
        id_access_token: str = "",
    ) -> tuple[str, str, str]:
        """(event id, token, display name) of the new ``m.room.third_party_invite``."""
        deps = self.deps
        if not self._ours(sender):
            raise forbidden(f"{sender!r} is not a user of this server")
        if not medium or not address:
            raise MembershipError(400, "M_MISSING_PARAM", "medium and address are required")
        # Before bothering the identity server: may the sender invite at all?
        async with deps.pool.acquire() as conn, conn.transaction():
            batch = RoomBatch(deps.core, conn, room_id)
            if not await batch.open(1):
                raise not_found()
            head = await room_head(conn, deps.core, room_id)
            if head is None:
                raise not_found()
            probe, _ = deps.local.build(batch, room_id, THIRD_PARTY_INVITE, sender, "probe", {})
            await auth_check_against_state(conn, head, probe)
            request = await self._store_invite_request(conn, head.state, room_id, sender)
        request.update(medium=medium, address=address)
        access_token = id_access_token or await self._register(id_server, sender)
        stored = await self.identity.store_invite(id_server, access_token, request)
        event_id, _ = await deps.local.send_event(
            room_id, sender, THIRD_PARTY_INVITE, stored.token, stored.event_content()
        )
        return event_id, stored.token, stored.display_name

    async def _register(self, id_server: str, sender: str) -> str:
        minted = await self.accounts.PerformMintOpenIdToken(
            accounts_pb2.PerformMintOpenIdTokenRequest(user_id=sender), timeout=10
        )
        openid = {
            "access_token": minted.access_token,
            "token_type": "Bearer",
            "matrix_server_name": self.server_name,
            "expires_in": max(1, minted.expires_in_ms // 1000),
        }
        return await self.identity.register(id_server, openid)

    async def _store_invite_request(
        self, conn: asyncpg.Connection, state: Mapping[Any, str], room_id: str, sender: str
    ) -> dict[str, Any]:
        keys = [
            ("m.room.name", ""),
            ("m.room.canonical_alias", ""),
            ("m.room.avatar", ""),
            ("m.room.join_rules", ""),
            ("m.room.create", ""),
            (MEMBER, sender),
        ]
        events = await state_events(conn, state, keys)
        request: dict[str, Any] = {"room_id": room_id, "sender": sender}
        optional = [
            ("room_name", "m.room.name", "", "name"),
            ("room_alias", "m.room.canonical_alias", "", "alias"),
            ("room_avatar_url", "m.room.avatar", "", "url"),
            ("room_join_rules", "m.room.join_rules", "", "join_rule"),
            ("room_type", "m.room.create", "", "type"),
            ("sender_display_name", MEMBER, sender, "displayname"),
            ("sender_avatar_url", MEMBER, sender, "avatar_url"),
        ]
        for field, event_type, state_key, key in optional:
            event = events.get((event_type, state_key))
            value = event.content.get(key) if event is not None else None
            if isinstance(value, str) and value:
                request[field] = value
        return request

    # ------------------------------------------------------------ 3pid/onbind

    async def on_bind(self, body: Mapping[str, Any]) -> list[OnBindOutcome]:
        mxid = body.get("mxid")
        outcomes: list[OnBindOutcome] = []
        for invite in body.get("invites") or []:
            room_id = str(invite.get("room_id", ""))
            signed = invite.get("signed")
            token = str(signed.get("token", "")) if isinstance(signed, Mapping) else ""
            try:
                outcome = await self._bind_one(mxid, invite)
            except MembershipError as error:
                result = "failed" if error.status >= 500 else "refused"
                outcome = OnBindOutcome(
                    room_id, token, result, error=f"{error.errcode}: {error.message}"
                )
            except ServiceError as error:
                outcome = OnBindOutcome(
                    room_id, token, "refused", error=f"{error.errcode}: {error.message}"
                )
            if outcome.result in ("refused", "failed"):
                log.warning(
                    "third-party invite not completed",
                    extra={"room_id": room_id, "mxid": mxid, "error": outcome.error},
                )
            outcomes.append(outcome)
        return outcomes

    async def _bind_one(self, mxid: Any, invite: Mapping[str, Any]) -> OnBindOutcome:
        room_id, sender = invite.get("room_id"), invite.get("sender")
        if not isinstance(room_id, str) or not isinstance(sender, str):
            raise _missing("room_id and sender")
        signed, signed_mxid, token = parse_signed({"signed": invite.get("signed")})
        if signed_mxid != mxid or invite.get("mxid", mxid) != mxid:
            raise invalid("the invite's mxid does not match the bound mxid")
        if not isinstance(mxid, str) or not self._ours(mxid):
            raise invalid(f"{mxid!r} is not a user of this server")
        if not is_valid_user_id(sender):
            raise invalid(f"invalid sender {sender!r}")
        if self._ours(sender):
            async with self.deps.pool.acquire() as conn:
                # 404 unless we hold the room and a local user is still joined to it.
                head = await resident_room(conn, self.deps, room_id)
                invite_event = await self._third_party_invite(conn, head.state, sender, token)
            await self._check_key_validity(signed, invite_event)
            event_id = await self._invite_locally(room_id, sender, mxid, signed, token)
            if not event_id:
                return OnBindOutcome(room_id, token, "already_done")
            return OnBindOutcome(room_id, token, "invited", event_id=event_id)
        display_name = invite.get("display_name")
        content = invite_content(display_name if isinstance(display_name, str) else None, signed)
        partial = {
            "type": MEMBER,
            "room_id": room_id,
            "sender": sender,
            "state_key": mxid,
            "content": content,
        }
        await self._exchange_remotely(room_id, sender, partial)
        return OnBindOutcome(room_id, token, "exchanged")

    async def _invite_locally(
        self, room_id: str, sender: str, mxid: str, signed: Mapping[str, Any], token: str
    ) -> str:
        """Build and accept the invite in a room we are in; "" when already done."""
        deps = self.deps
        # In a room that uses a policy server: built, then signed by it outside
        # the room's lock, then stored in a second transaction.
        signed_by_policy: tuple[Event, dict[str, Any], PolicyServer] | None = None
        while True:
            to_sign: tuple[Event, dict[str, Any], PolicyServer] | None = None
            async with deps.pool.acquire() as conn, conn.transaction():
                batch = RoomBatch(deps.core, conn, room_id)
                if not await batch.open(1):
                    raise not_found()
                used_by = await storage.token_consumed_by(conn, room_id, token)
                if used_by == mxid:
                    return ""
                if used_by is not None:
                    raise forbidden("the third-party invite token was already used")
                current = batch.current.state if batch.current else {}
                invite_event = await self._third_party_invite(conn, current, sender, token)
                policy: PolicyServer | None
                if signed_by_policy is None:
                    display_name = invite_event.content.get("display_name")
                    name = display_name if isinstance(display_name, str) else ""
                    content = invite_content(name, signed)
                    event, pdu = deps.local.build(batch, room_id, MEMBER, sender, mxid, content)
                    policy = await deps.local.policy_server_for(batch, event)
                    if policy is not None:
                        to_sign = (event, pdu, policy)
                else:
                    event, pdu, policy = signed_by_policy
                if to_sign is None:
                    outcome = await batch.add_local(event, pdu, policy_signed_by=policy)
                    if outcome.status is not Status.ACCEPTED:
                        raise forbidden(
                            f"the invite is not allowed: {outcome.error or 'soft failed'}"
                        )
                    await batch.write()
            if to_sign is None:
                await batch.committed()
                return event.event_id
            event, pdu, policy = to_sign
            event, pdu = await deps.local.policy_sign(policy, event, pdu)
            signed_by_policy = (event, pdu, policy)

    async def _exchange_remotely(
        self, room_id: str, sender: str, partial: Mapping[str, Any]
    ) -> None:
        destinations = [server_name_of(sender)]
        if ":" in room_id:
            destinations.append(room_id.split(":", 1)[1])
        path = federation_path(
            "_matrix", "federation", "v1", "exchange_third_party_invite", room_id
        )
        last: MembershipError | None = None
        for destination in dict.fromkeys(destinations):
            if destination == self.server_name:
                continue
            try:
                await self.deps.client.put_json(destination, path, dict(partial))
                return
            except HttpResponseError as error:
                errcode = error.errcode or "M_UNKNOWN"
                last = MembershipError(
                    error.status if 400 <= error.status < 500 else 502,
                    errcode,
                    f"{destination} refused the exchange: {error.error or error.status}",
                )
                if error.status in (400, 403):
                    break
            except (DestinationUnreachableError, FederationError) as error:
                last = MembershipError(502, "M_UNKNOWN", f"cannot reach {destination}: {error}")
        raise last or not_found("no server to exchange the invite with")

    # ------------------------------------------------------------ exchange_third_party_invite

    async def exchange(self, origin: str, room_id: str, raw: bytes) -> str:
        """``exchange_third_party_invite`` from ``origin``; a refusal is logged with its cause."""
        try:
            return await self._exchange(origin, room_id, raw)
        except (MembershipError, ServiceError) as error:
            log.warning(
                "exchange_third_party_invite refused",
                extra={
                    "origin": origin,
                    "room_id": room_id,
                    "errcode": error.errcode,
                    "error": error.message,
                },
            )
            raise

    async def _exchange(self, origin: str, room_id: str, raw: bytes) -> str:
        deps = self.deps
        try:
            partial = decode_json(raw)
        except ValueError:
            raise MembershipError(400, "M_NOT_JSON", "Content not JSON") from None
        if not isinstance(partial, dict):
            raise MembershipError(400, "M_BAD_JSON", "the body must be a JSON object")
        for name in ("type", "room_id", "sender", "state_key"):
            if not isinstance(partial.get(name), str):
                raise _missing(name)
        content = partial.get("content")
        if not isinstance(content, Mapping):
            raise _missing("content")
        if partial["type"] != MEMBER or content.get("membership") != "invite":
            raise invalid("the event must be an m.room.member invite")
        if partial["room_id"] != room_id:
            raise invalid("the event's room_id is not the room of the request")
        sender, target = partial["sender"], partial["state_key"]
        signed, mxid, token = parse_signed(content.get("third_party_invite"))
        if not is_valid_user_id(target):
            raise invalid(f"invalid state_key {target!r}")
        if mxid != target:
            raise forbidden("third_party_invite.signed.mxid is not the invitee")
        if not self._ours(sender):
            raise forbidden(f"{sender!r} is not a user of this server")

        # 1. The room, its m.room.third_party_invite and the signature (no lock).
        async with deps.pool.acquire() as conn:
            head = await resident_room(conn, deps, room_id)
            await check_acl(conn, head, origin)
            invite_event = await self._third_party_invite(conn, head.state, sender, token)
            if await storage.token_consumed_by(conn, room_id, token) is not None:
                raise forbidden("the third-party invite token was already used")
        await self._check_key_validity(signed, invite_event)
        display_name = invite_event.content.get("display_name")
        content = invite_content(display_name if isinstance(display_name, str) else "", signed)

        if self._ours(target):
            event_id = await self._invite_locally(room_id, sender, target, signed, token)
            if not event_id:
                raise forbidden("the third-party invite token was already used")
            return event_id
        return await self._invite_remote(room_id, sender, target, content, token)

    async def _third_party_invite(
        self, conn: asyncpg.Connection, state: Mapping[Any, str], sender: str, token: str
    ) -> Event:
        """The room's m.room.third_party_invite for ``token``, sent by ``sender`` (else 403)."""
        found = await state_events(conn, state, [(THIRD_PARTY_INVITE, token)])
        invite_event = found.get((THIRD_PARTY_INVITE, token))
        if invite_event is None:
            raise forbidden("no third-party invite for this token in the room")
        if invite_event.sender != sender:
            raise forbidden("the sender did not send the third-party invite")
        return invite_event

    async def _check_key_validity(self, signed: Mapping[str, Any], invite_event: Event) -> None:
        """403 unless a key of the invite verifies ``signed`` and is confirmed valid."""
        await check_invite_keys(self.identity, signed, invite_event.content)

    async def _invite_remote(
        self, room_id: str, sender: str, target: str, content: dict[str, Any], token: str
    ) -> str:
        """As any invite we send: built here, countersigned by the invitee's server, accepted."""
        deps = self.deps
        async with deps.pool.acquire() as conn, conn.transaction():
            batch = RoomBatch(deps.core, conn, room_id)
            if not await batch.open(1):
                raise not_found()
            event, pdu = deps.local.build(batch, room_id, MEMBER, sender, target, content)
            head = await room_head(conn, deps.core, room_id)
            if head is None:
                raise not_found()
            await auth_check_against_state(conn, head, event)
            invite_state = await self.resident.room_state_pdus(conn, room_id)
            policy = await deps.local.policy_server_for(batch, event)
        version = head.version
        if policy is not None:
            event, pdu = await deps.local.policy_sign(policy, event, pdu)
        returned = await self.resident._send_invite(  # noqa: SLF001 - the one v2/v1 invite path
            server_name_of(target), room_id, event, pdu, invite_state
        )
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
        async with deps.pool.acquire() as conn, conn.transaction():
            batch = RoomBatch(deps.core, conn, room_id)
            if not await batch.open(1):
                raise not_found()
            if await storage.token_consumed_by(conn, room_id, token) is not None:
                raise forbidden("the third-party invite token was already used")
            await batch.prefetch([final_event])
            outcome = await batch.add_local(final_event, final, policy_signed_by=policy)
            if outcome.status is not Status.ACCEPTED:
                raise forbidden(f"the invite is not allowed: {outcome.error or 'soft failed'}")
            await batch.write()
        await batch.committed()
        return event.event_id
