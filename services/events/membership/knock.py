"""Local users knocking on rooms other servers host.

Spec: https://spec.matrix.org/v1.19/server-server-api/#knocking-rooms
(make_knock with the versions that allow it, send_knock, ``knock_room_state``). The knock is
recorded as an out-of-band membership with the room's stripped state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matrix_protocol.canonical_json import encode_json
from matrix_protocol.membership import MembershipError, stripped_state
from matrix_protocol.room_versions import KNOWN_ROOM_VERSIONS
from services.events.admin.blocks import BLOCKED_ROOMS
from services.events.membership.remote_rooms import RemoteRooms, TryNext, unavailable

KNOCK_VERSIONS = [v for v, rules in KNOWN_ROOM_VERSIONS.items() if rules.knock_join_rule]


class Knock(RemoteRooms):
    async def perform_knock(
        self, room_id_or_alias: str, user_id: str, servers: Sequence[str], reason: str
    ) -> tuple[str, str, list[dict[str, Any]]]:
        self._require_local_user(user_id)
        room_id, alias_servers = await self.resolve_room(room_id_or_alias)
        BLOCKED_ROOMS.check(room_id)
        candidates = self._candidates(room_id, servers, alias_servers)
        if not candidates:
            raise MembershipError(404, "M_NOT_FOUND", "No known servers to knock through")
        last: MembershipError = unavailable("no server could be reached")
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
