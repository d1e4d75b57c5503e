"""Invites other servers send to local users (the ``Membership.ReceiveInvite`` side).

Spec: https://spec.matrix.org/v1.19/server-server-api/#inviting-to-a-room (v2/v1
invite: the event's checks, ``invite_room_state``, our countersignature).
The invite is checked (format, content hash, the inviting server's
signature), countersigned and recorded as an out-of-band membership of the
invited user with the room's stripped state; local consumers read those
with ``QueryInvites``.
"""

from __future__ import annotations

from matrix_protocol.canonical_json import decode_json, encode_json
from matrix_protocol.hashes import content_hash_matches
from matrix_protocol.membership import (
    MembershipError,
    check_membership_event,
    forbidden,
    incompatible_room_version,
    invalid,
    stripped_state,
)
from matrix_protocol.room_versions import UnsupportedRoomVersion, room_version
from matrix_protocol.server_acl import server_allowed
from matrix_protocol.signing import signatures_required_for_event
from services.events.membership import storage as oob_storage
from services.events.membership.common import add_signature, room_head, state_events
from services.events.membership.remote_rooms import RemoteRooms
from services.events.pdu_checks import verify_signatures, without_unsigned


class ReceivedInvites(RemoteRooms):
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
        pdu = without_unsigned(pdu)
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
        errors = await verify_signatures(
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
