"""Local users leaving rooms other servers host: rejecting an invite, retracting a knock.

Spec: https://spec.matrix.org/v1.19/server-server-api/#leaving-rooms-rejecting-invites
(leaving, rejecting and retracting through make_leave / send_leave). A user in a room we are
in simply sends a leave event through the room's batch.
"""

from __future__ import annotations

import logging
from typing import Any

from matrix_protocol.membership import MembershipError, forbidden
from matrix_protocol.room_versions import room_version
from services.events import storage
from services.events.membership import storage as oob_storage
from services.events.membership.common import MEMBER, room_head, state_events
from services.events.membership.remote_rooms import RemoteRooms, TryNext

log = logging.getLogger(__name__)


class Leave(RemoteRooms):
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
