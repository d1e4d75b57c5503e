"""Rooms other servers host: what joining, leaving, knocking and received invites share.

Spec: https://spec.matrix.org/v1.19/server-server-api/#joining-rooms,
#knocking-rooms, #inviting-to-a-room and #leaving-rooms-rejecting-invites
(remote membership flow: candidate servers, make_* with the supported versions,
template validation, send_*; out-of-band memberships).

:class:`RemoteRooms` finds a room and the servers likely to be in it, runs
the make_* / send_* handshake with one of them (:class:`TryNext` when
another may do better), records and forgets out-of-band memberships, and
checks the stripped state that comes with knocks and invites. Its
subclasses are :class:`~.join.Join`, :class:`~.leave.Leave`,
:class:`~.knock.Knock` and :class:`~.received_invites.ReceivedInvites`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from matrix_protocol.canonical_json import encode_json
from matrix_protocol.events import Event
from matrix_protocol.membership import (
    MembershipError,
    build_event_from_template,
    check_room_state_pdus,
    forbidden,
    invalid,
    stripped_state,
    validate_template,
)
from matrix_protocol.pdu_format import PduFormatError, check_pdu_format
from matrix_protocol.room_versions import RoomVersion, UnsupportedRoomVersion, room_version
from matrix_protocol.server_names import is_valid_user_id, server_name_of
from matrix_protocol.signing import signatures_required_for_event
from mxfed.clock import now_ms
from mxfed.federation_client import (
    DestinationBlockedError,
    FederationError,
    HttpResponseError,
    federation_path,
)
from services.events import storage
from services.events.membership import storage as oob_storage
from services.events.membership.common import MembershipDeps
from services.events.pdu_checks import verify_signatures

# make_* errors after which another resident may do better ([Synapse]).
_TRY_NEXT_ERRCODES = frozenset(
    {"M_NOT_FOUND", "M_UNABLE_TO_AUTHORISE_JOIN", "M_UNABLE_TO_GRANT_JOIN"}
)


class TryNext(Exception):
    """This candidate server cannot help; ``error`` is what to report if none can."""

    def __init__(self, error: MembershipError) -> None:
        super().__init__(error.message)
        self.error = error


def unavailable(message: str) -> MembershipError:
    return MembershipError(502, "M_UNKNOWN", message)


class RemoteRooms:
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
            raise unavailable(f"alias lookup on {alias_server} failed: {error}") from None
        except FederationError as error:
            raise unavailable(f"alias lookup on {alias_server} failed: {error}") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("room_id"), str):
            raise unavailable(f"{alias_server} gave a malformed directory answer")
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
        except DestinationBlockedError:
            blocked = forbidden(f"federation with {server} is blocked on this server")
            raise TryNext(blocked) from None
        except FederationError as error:
            raise TryNext(unavailable(f"{server}: {error}")) from None
        if not isinstance(answer, dict):
            raise TryNext(unavailable(f"{server} gave a malformed make_{membership} answer"))
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
        self,
        server: str,
        kind: str,
        room_id: str,
        event_id: str,
        pdu: dict[str, Any],
        *,
        omit_members: bool = False,
    ) -> Any:
        """PUT send_{kind} (v2 for join/leave, with the v1 fallback; v1 for knock).

        ``omit_members``: ask send_join v2 for a partial state (the v1
        fallback cannot, so its answer is always the full state).
        """
        client = self.deps.client
        v1 = federation_path("_matrix", "federation", "v1", f"send_{kind}", room_id, event_id)
        try:
            if kind == "knock":
                return await client.put_json(server, v1, pdu)
            v2 = federation_path("_matrix", "federation", "v2", f"send_{kind}", room_id, event_id)
            query = {"omit_members": "true"} if omit_members else None
            try:
                return await client.put_json(server, v2, pdu, query=query)
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
                raise TryNext(unavailable(f"{server}: {error}")) from None
            if errcode in ("M_INVALID_PARAM", "M_MISSING_PARAM"):
                # A 5xx for the local actor, not a pass-through.
                raise unavailable(f"{server} refused our {kind}: {error}") from None
            raise MembershipError(error.status, errcode, error.error or str(error)) from None
        except FederationError as error:
            raise TryNext(unavailable(f"{server}: {error}")) from None

    # ------------------------------------------------------------ out-of-band memberships

    async def _forget_out_of_band(self, user_id: str, room_id: str) -> None:
        async with self.deps.pool.acquire() as conn:
            await oob_storage.delete(conn, user_id, room_id)

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

    # ------------------------------------------------------------ stripped state

    async def _stripped_room_state(
        self, raw: Any, version: RoomVersion, room_id: str, *, strict: bool
    ) -> list[dict[str, Any]]:
        """invite/knock room state → stripped state; entries that fail checks are dropped.

        ``strict`` (room v12+ invites): a missing create event or a malformed
        entry refuses the whole thing
        (https://spec.matrix.org/v1.19/server-server-api/#put_matrixfederationv2inviteroomideventid).
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
        errors = await verify_signatures(self.deps.keys, checks)
        good = [event for (event, _), error in zip(checks, errors, strict=True) if error is None]
        if strict and not any(e.type == "m.room.create" for e in good):
            raise invalid("invite_room_state: the m.room.create event does not verify")
        return stripped_state(good)
