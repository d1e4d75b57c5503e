"""Reads: events (with history visibility per server), state, auth chains, rooms.

Spec: https://spec.matrix.org/v1.19/server-server-api/#server-access-control-lists-acls and
https://spec.matrix.org/v1.19/client-server-api/#room-history-visibility
(visibility of events served over federation as Synapse does it): a server may
read a room when it has a joined member and the ACL allows it; an event it may
read is returned as is when any of its users could see it under
``m.room.history_visibility`` at that event (``world_readable``/``shared``:
anyone; ``invited``: invited or joined; ``joined``: joined; default ``shared``),
otherwise redacted.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from matrix_protocol.canonical_json import decode_json, encode_json
from matrix_protocol.redaction import redact
from matrix_protocol.room_versions import room_version
from matrix_protocol.server_acl import SERVER_ACL_EVENT_TYPE, server_allowed
from matrix_protocol.server_names import server_name_of
from mxfed.service_errors import BadRequest
from services.events import storage
from services.events.state_storage import StateStore


async def server_acl_allows(conn: asyncpg.Connection, room_id: str, server: str) -> bool:
    """The room's current m.room.server_acl lets ``server`` in."""
    return room_id not in await server_acl_denied_rooms(conn, [room_id], server)


async def server_acl_denied_rooms(
    conn: asyncpg.Connection, room_ids: Sequence[str], server: str
) -> set[str]:
    """The rooms of ``room_ids`` whose current m.room.server_acl keeps ``server`` out
    (one query for them all, a second only if some have an ACL)."""
    acl_ids = await storage.current_state_of_rooms(conn, room_ids, SERVER_ACL_EVENT_TYPE, "")
    if not acl_ids:
        return set()
    acls = await storage.fetch_events(conn, acl_ids.values())
    return {
        room_id
        for room_id, acl_id in acl_ids.items()
        if (acl := acls.get(acl_id)) is not None and not server_allowed(server, acl.event.content)
    }


@dataclass
class EventView:
    event_id: str
    room_id: str
    room_version: str
    pdu_json: str
    status: int
    stream_position: int
    redacted: bool
    rejection_reason: str

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> EventView:
        return cls(
            event_id=row["event_id"],
            room_id=row["room_id"],
            room_version=row["room_version"],
            pdu_json=row["pdu_json"],
            status=row["status"],
            stream_position=row["stream_position"] or 0,
            redacted=row["redacted"],
            rejection_reason=row["rejection_reason"],
        )


@dataclass
class RoomInfo:
    exists: bool
    room_version: str = ""
    forward_extremities: Sequence[str] = ()
    min_depth: int = 0
    max_depth: int = 0
    we_are_joined: bool = False
    create_event_id: str = ""
    # Partial-state join: ResyncState values (1 = full state), progress.
    resync_state: int = 1
    members_known: int = 0
    members_expected: int = 0
    resync_attempts: int = 0
    resync_error: str = ""


@dataclass
class ServerAccess:
    room_exists: bool
    allowed: bool
    reason: str = ""
    partial_state: bool = False
    # Allowed on the partial state's view of the room (allow_partial_state).
    partial_view: bool = False


@dataclass
class ServerEvents:
    """Events as a server may have them (:meth:`Reads.events_for_server`)."""

    views: list[EventView]
    # Left out because their room is still in partial state here (MSC3895).
    partial_state_event_ids: list[str]


@dataclass
class TimelinePage:
    events: list[EventView]
    next_token: str
    reached_room_start: bool
    resume_token: str = ""


def _encode_token(depth: int, nid: int) -> str:
    return base64.urlsafe_b64encode(f"{depth}:{nid}".encode()).decode().rstrip("=")


class InvalidPaginationToken(BadRequest):
    """A timeline token this service did not hand out."""


def _decode_token(token: str) -> tuple[int, int]:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        depth, nid = text.split(":")
        return int(depth), int(nid)
    except (ValueError, UnicodeDecodeError):
        raise InvalidPaginationToken(f"invalid pagination token {token!r}") from None


class Reads:
    def __init__(self, pool: asyncpg.Pool, state_store: StateStore, server_name: str) -> None:
        self.pool = pool
        self.state_store = state_store
        self.server_name = server_name

    async def events(self, event_ids: Sequence[str], as_server: str = "") -> list[EventView]:
        if as_server:
            return (await self.events_for_server(event_ids, as_server)).views
        async with self.pool.acquire() as conn:
            rows = await storage.fetch_event_rows(conn, event_ids)
            return [EventView.from_row(row) for row in rows]

    async def events_for_server(
        self, event_ids: Sequence[str], server: str, partial_state_history: bool = False
    ) -> ServerEvents:
        """The events ``server`` may have: rooms it may not read left out, others redacted
        where history visibility hides them from it.

        ``partial_state_history``: a room still in partial state here is read
        as :meth:`_server_access` allows with ``allow_partial_state``, and
        other servers' events of it are redacted: which of them the server
        may see cannot be told on a partial state (as Synapse serves history
        during a partial join).
        """
        found = ServerEvents([], [])
        async with self.pool.acquire() as conn:
            rows = await storage.fetch_event_rows(conn, event_ids)
            access_by_room: dict[str, ServerAccess] = {}
            for row in rows:
                room_id = row["room_id"]
                if room_id not in access_by_room:
                    access_by_room[room_id] = await self._server_access(
                        conn, room_id, server, True, True, partial_state_history
                    )
                access = access_by_room[room_id]
                if not access.allowed:
                    if access.partial_state:
                        found.partial_state_event_ids.append(row["event_id"])
                    continue
                view = EventView.from_row(row)
                foreign = access.partial_view and server_name_of(row["sender"]) != self.server_name
                if not view.redacted and (foreign or not await self._visible(conn, row, server)):
                    version = room_version(view.room_version)
                    view.pdu_json = encode_json(
                        redact(decode_json(view.pdu_json), version)
                    ).decode()
                    view.redacted = True
                found.views.append(view)
        return found

    async def _visible(self, conn: asyncpg.Connection, row: asyncpg.Record, server: str) -> bool:
        if row["state_group_before"] is None:
            return True  # outliers: no state known; the room check already passed
        state = (await self.state_store.get(conn, row["state_group_before"])).state
        visibility = "shared"
        history_id = state.get(("m.room.history_visibility", ""))
        members = [
            e for (t, k), e in state.items() if t == "m.room.member" and k.endswith(":" + server)
        ]
        wanted = [history_id, *members] if history_id else members
        loaded = await storage.fetch_events(conn, wanted)
        if history_id and history_id in loaded:
            value = loaded[history_id].event.content.get("history_visibility")
            if isinstance(value, str):
                visibility = value
        if visibility not in ("invited", "joined"):
            return True
        allowed = {"join", "invite"} if visibility == "invited" else {"join"}
        return any(
            loaded[e].event.membership in allowed
            for e in members
            if e in loaded and loaded[e].event.state_key.split(":", 1)[1] == server  # type: ignore[union-attr]
        )

    async def server_access(
        self,
        room_id: str,
        server: str,
        check_acl: bool,
        require_joined: bool,
        allow_partial_state: bool = False,
    ) -> ServerAccess:
        async with self.pool.acquire() as conn:
            return await self._server_access(
                conn, room_id, server, check_acl, require_joined, allow_partial_state
            )

    async def _server_access(
        self,
        conn: asyncpg.Connection,
        room_id: str,
        server: str,
        check_acl: bool,
        require_joined: bool,
        allow_partial_state: bool = False,
    ) -> ServerAccess:
        if not await storage.get_rooms(conn, [room_id]):
            return ServerAccess(False, False, "unknown room")
        if check_acl and not await server_acl_allows(conn, room_id, server):
            return ServerAccess(True, False, "denied by the room's server ACL")
        partial = await storage.partial_state_room(conn, room_id) if require_joined else None
        if partial is not None and not allow_partial_state:
            # NOTSPEC (MSC3895, as Synapse does): a room still in partial
            # state serves no state to other servers — its state lacks
            # members, so it could neither tell whether the server is joined
            # nor give complete answers. Refused until the resync ends.
            return ServerAccess(
                True, False, "the room's state is partial here (resyncing)", partial_state=True
            )
        if partial is not None:
            # NOTSPEC (as Synapse serves /backfill and /get_missing_events
            # during a partial join): a server of the partial state's view —
            # the join's servers_in_room, or one with a member known since —
            # may read the history (of which only our own events in full).
            if server in {partial.joined_via, *partial.servers}:
                return ServerAccess(True, True, partial_view=True)
            if await storage.server_has_joined_member(conn, room_id, server):
                return ServerAccess(True, True, partial_view=True)
            return ServerAccess(True, False, "the server is not in the room's partial state here")
        if require_joined and not await storage.server_has_joined_member(conn, room_id, server):
            return ServerAccess(True, False, "the server has no joined member in the room")
        return ServerAccess(True, True)

    async def state_at_event(
        self, room_id: str, event_id: str, include_auth_chain: bool
    ) -> tuple[list[str], list[str]] | None:
        """(state ids before the event, auth chain ids of that state), or None."""
        async with self.pool.acquire() as conn:
            group = await storage.state_group_before(conn, room_id, event_id)
            if group is None:
                return None
            state = (await self.state_store.get(conn, group)).state
            state_ids = list(state.values())
            chain = []
            if include_auth_chain:
                chain = await self._auth_chain(conn, room_id, state_ids)
            return state_ids, chain

    async def auth_chain(self, room_id: str, event_ids: Sequence[str]) -> list[str]:
        async with self.pool.acquire() as conn:
            return await self._auth_chain(conn, room_id, event_ids)

    @staticmethod
    async def _auth_chain(
        conn: asyncpg.Connection, room_id: str, event_ids: Sequence[str]
    ) -> list[str]:
        """The auth chain; in v12 rooms with the implied create event (room v12)."""
        chain = await storage.auth_chain_ids(conn, event_ids)
        rooms = await storage.get_rooms(conn, [room_id])
        room = rooms.get(room_id)
        if room is not None and room_version(room.room_version).room_id_from_create_event:
            create_id = "$" + room_id[1:]
            if create_id not in chain and any(e != create_id for e in event_ids):
                chain.append(create_id)
        return chain

    async def current_state(
        self, room_id: str, filters: Sequence[tuple[str, str | None]]
    ) -> list[EventView] | None:
        async with self.pool.acquire() as conn:
            if not await storage.get_rooms(conn, [room_id]):
                return None
            ids = await storage.current_state_ids(conn, room_id, filters)
            rows = await storage.fetch_event_rows(conn, ids)
            return [EventView.from_row(row) for row in rows]

    async def timeline(
        self, room_id: str, from_token: str, backwards: bool, limit: int
    ) -> TimelinePage:
        limit = max(1, min(limit or 20, 1000))
        after = _decode_token(from_token) if from_token else None
        async with self.pool.acquire() as conn:
            rows = await storage.timeline_page(conn, room_id, after, backwards, limit)
        events = [EventView.from_row(row) for row in rows]
        reached_start = any(row["type"] == "m.room.create" for row in rows)
        next_token = resume_token = ""
        if rows:
            resume_token = _encode_token(rows[-1]["depth"], rows[-1]["nid"])
        if len(rows) == limit and not (backwards and reached_start):
            next_token = resume_token
        return TimelinePage(events, next_token, reached_start, resume_token)

    async def room_info(self, room_id: str) -> RoomInfo:
        async with self.pool.acquire() as conn:
            rooms = await storage.get_rooms(conn, [room_id])
            if room_id not in rooms:
                return RoomInfo(False)
            room = rooms[room_id]
            extremities = await storage.forward_extremities(conn, room_id)
            lo, hi = await storage.depth_range(conn, room_id)
            joined = await storage.server_has_joined_member(conn, room_id, self.server_name)
            partial = await storage.partial_state_room(conn, room_id)
            members = await storage.count_current_members(conn, room_id)
            info = RoomInfo(
                True,
                room.room_version,
                sorted(extremities),
                lo,
                hi,
                joined,
                room.create_event_id or "",
                members_known=members,
                members_expected=members,
            )
            if partial is not None:
                info.resync_state = partial.resync_state
                info.members_expected = partial.members_expected
                info.resync_attempts = partial.resync_attempts
                info.resync_error = partial.resync_error
            return info

    async def servers_in_room(self, room_id: str, at_event_id: str) -> list[str] | None:
        async with self.pool.acquire() as conn:
            if not at_event_id:
                if not await storage.get_rooms(conn, [room_id]):
                    return None
                joined = await storage.joined_servers(conn, room_id)
                partial = await storage.partial_state_room(conn, room_id)
                if partial is None:
                    return joined
                # Partial state: the servers the join's answer named count too.
                known = {*joined, partial.joined_via, *partial.servers} - {self.server_name}
                return sorted(known | ({self.server_name} & set(joined)))
            return await storage.servers_before(conn, room_id, at_event_id)
