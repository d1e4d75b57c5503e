"""The directory's operations over the events database and, for other
servers' directories, the federation client."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import grpc

from mxfed.federation_client import (
    FederationClient,
    FederationError,
    HttpResponseError,
    federation_path,
)
from services.events.directory import storage
from services.events.directory.summaries import (
    InvalidToken,
    JsonDict,
    PublicRoomsQuery,
    allowed_room_ids,
    federates,
    hierarchy_summary,
    join_rule,
    matches,
    paginate,
    public_room_entry,
)
from services.events.errors import BadRequest, EventsError, NotFound

log = logging.getLogger(__name__)

# Join rules under which any server may peek or join (no membership needed).
_OPEN_JOIN_RULES = frozenset({"public", "knock"})


class RemoteUnavailable(EventsError):
    status = grpc.StatusCode.UNAVAILABLE
    errcode = "M_UNKNOWN"


class Directory:
    def __init__(
        self, pool: asyncpg.Pool, server_name: str, client: FederationClient | None = None
    ) -> None:
        self.pool = pool
        self.server_name = server_name
        self.client = client

    # ------------------------------------------------------------ publishing

    async def publish(self, room_id: str, network_id: str = "") -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            if not await storage.room_exists(conn, room_id):
                raise NotFound(f"Unknown room {room_id}")
            return await storage.publish(conn, room_id, network_id)

    async def unpublish(self, room_id: str) -> bool:
        async with self.pool.acquire() as conn:
            return await storage.unpublish(conn, room_id)

    # ------------------------------------------------------------ public rooms

    async def public_rooms(
        self,
        query: PublicRoomsQuery,
        *,
        include_all_networks: bool = False,
        third_party_instance_id: str = "",
        for_federation: bool = False,
    ) -> JsonDict:
        if query.limit < 0:
            raise BadRequest("limit must not be negative")
        if include_all_networks:
            networks: list[str] | None = None
        else:
            networks = [third_party_instance_id]
        async with self.pool.acquire() as conn:
            room_ids = await storage.published_room_ids(conn, networks)
            rooms = await storage.load_rooms(conn, room_ids)
        entries = [
            public_room_entry(room)
            for room in rooms.values()
            if not (for_federation and not federates(room))
        ]
        entries = [entry for entry in entries if matches(entry, query)]
        try:
            return paginate(entries, query.limit, query.since)
        except InvalidToken as error:
            raise BadRequest(f"Invalid 'since': {error}") from None

    async def remote_public_rooms(
        self,
        server: str,
        query: PublicRoomsQuery,
        *,
        include_all_networks: bool = False,
        third_party_instance_id: str = "",
    ) -> JsonDict:
        if self.client is None:
            raise RemoteUnavailable("no federation client")
        body: JsonDict = {}
        if query.limit > 0:
            body["limit"] = query.limit
        if query.since:
            body["since"] = query.since
        search_filter: JsonDict = {}
        if query.search:
            search_filter["generic_search_term"] = query.search
        if query.room_types is not None:
            search_filter["room_types"] = [
                *query.room_types,
                *([None] if query.include_untyped else []),
            ]
        if search_filter:
            body["filter"] = search_filter
        if include_all_networks:
            body["include_all_networks"] = True
        elif third_party_instance_id:
            body["third_party_instance_id"] = third_party_instance_id
        path = federation_path("_matrix", "federation", "v1", "publicRooms")
        try:
            try:
                reply = await self.client.post_json(server, path, body, idempotent=True)
            except HttpResponseError as error:
                # Servers without POST support: GET does everything but filters.
                if error.status not in (400, 404, 405) or search_filter:
                    raise
                params: dict[str, Any] = {k: v for k, v in body.items() if k in ("limit", "since")}
                if include_all_networks:
                    params["include_all_networks"] = "true"
                elif third_party_instance_id:
                    params["third_party_instance_id"] = third_party_instance_id
                reply = await self.client.get_json(server, path, query=params)
        except HttpResponseError as error:
            if error.errcode and error.status < 500:
                raise EventsError(error.error or str(error), error.errcode) from None
            raise RemoteUnavailable(f"{server} answered {error}") from None
        except FederationError as error:
            raise RemoteUnavailable(f"could not reach {server}: {error}") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("chunk"), list):
            raise RemoteUnavailable(f"{server} sent an invalid publicRooms response")
        return reply

    # ------------------------------------------------------------ spaces

    async def _accessible(
        self, conn: asyncpg.Connection, room: storage.RoomData, as_server: str
    ) -> bool:
        """May ``as_server`` peek or join the room (Synapse's rules for remote requesters)?"""
        if not as_server:
            return True
        rule = join_rule(room)
        if rule in _OPEN_JOIN_RULES:
            return True
        history = room.state.get(("m.room.history_visibility", ""))
        if history is not None and history.content.get("history_visibility") == "world_readable":
            return True
        if await storage.server_has_member(conn, room.room_id, as_server, ("join", "invite")):
            return True
        if rule in ("restricted", "knock_restricted"):
            return await storage.server_joined_any(conn, allowed_room_ids(room), as_server)
        return False

    async def hierarchy(self, room_id: str, suggested_only: bool, as_server: str) -> JsonDict:
        async with self.pool.acquire() as conn:
            rooms = await storage.load_rooms(conn, [room_id], ("m.space.child",))
            room = rooms.get(room_id)
            if room is None or not await self._accessible(conn, room, as_server):
                raise NotFound("Unknown room, or not accessible to the requesting server")
            summary = hierarchy_summary(room, suggested_only)
            child_ids = [
                child["state_key"]
                for child in summary["children_state"]
                if child["state_key"] != room_id
            ]
            known = await storage.load_rooms(conn, child_ids, ("m.space.child",))
            children = []
            inaccessible = []
            for child_id in child_ids:
                child = known.get(child_id)
                if child is None:
                    continue  # not a room we know: the requester must ask elsewhere
                if await self._accessible(conn, child, as_server):
                    children.append(hierarchy_summary(child, suggested_only))
                else:
                    inaccessible.append(child_id)
        return {"room": summary, "children": children, "inaccessible_children": inaccessible}

    # ------------------------------------------------------------ users

    async def rooms_of_user(self, user_id: str) -> list[str]:
        async with self.pool.acquire() as conn:
            return await storage.rooms_of_user(conn, user_id)
