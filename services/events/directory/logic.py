"""The directory's operations over the events database and, for other
servers' directories, the federation client."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg
import grpc

from mxfed.bounded import BoundedDict
from mxfed.federation_client import (
    FederationClient,
    FederationError,
    HttpResponseError,
    federation_path,
)
from mxfed.service_errors import BadRequest, NotFound, ServiceError
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

log = logging.getLogger(__name__)

# Join rules under which any server may peek or join (no membership needed).
_OPEN_JOIN_RULES = frozenset({"public", "knock"})

# Children of a space we do not hold, asked of their `via` servers
# (GET /hierarchy/{roomId}) for local callers: at most this many children per
# call, this many via servers each, this many requests at once, each with
# this deadline (seconds).
REMOTE_CHILDREN_LIMIT = 50
REMOTE_VIA_LIMIT = 3
REMOTE_CONCURRENCY = 5
REMOTE_HIERARCHY_TIMEOUT = 5.0
# Remote answers are kept in memory (per events process) this long; a child
# no via server could give is not asked again for NEGATIVE_TTL.
HIERARCHY_CACHE_TTL = 300.0
HIERARCHY_NEGATIVE_TTL = 30.0
HIERARCHY_CACHE_SIZE = 2000


class HierarchyCache:
    """(room_id, suggested_only) → a remote /hierarchy room summary (None: nobody
    had it), kept for a short while; least recently stored dropped first."""

    def __init__(
        self,
        ttl: float = HIERARCHY_CACHE_TTL,
        negative_ttl: float = HIERARCHY_NEGATIVE_TTL,
        size: int = HIERARCHY_CACHE_SIZE,
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.size = size
        self._entries: BoundedDict[tuple[str, bool], tuple[float, JsonDict | None]] = BoundedDict(
            "events_hierarchy_summaries", size
        )

    def get(self, key: tuple[str, bool]) -> tuple[bool, JsonDict | None]:
        """(found, summary)."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        if entry[0] <= time.monotonic():
            del self._entries[key]
            return False, None
        return True, entry[1]

    def put(self, key: tuple[str, bool], summary: JsonDict | None) -> None:
        ttl = self.ttl if summary is not None else self.negative_ttl
        self._entries[key] = (time.monotonic() + ttl, summary)


class RemoteUnavailable(ServiceError):
    status = grpc.StatusCode.UNAVAILABLE
    errcode = "M_UNKNOWN"


class Directory:
    def __init__(
        self, pool: asyncpg.Pool, server_name: str, client: FederationClient | None = None
    ) -> None:
        self.pool = pool
        self.server_name = server_name
        self.client = client
        self.hierarchy_cache = HierarchyCache()

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
                raise ServiceError(error.error or str(error), error.errcode) from None
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
        """The /hierarchy body of a room we hold.

        Children we do not hold are asked of their ``via`` servers for local
        callers (``as_server`` empty) and included when one answers; a remote
        requester is left to ask them itself (it filters what it gets, and we
        cannot judge its access to rooms we do not hold).
        """
        unknown: dict[str, list[str]] = {}
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
            via = {
                child["state_key"]: child["content"]["via"] for child in summary["children_state"]
            }
            known = await storage.load_rooms(conn, child_ids, ("m.space.child",))
            found: dict[str, JsonDict] = {}
            inaccessible = []
            for child_id in child_ids:
                child = known.get(child_id)
                if child is None:
                    unknown[child_id] = via[child_id]
                elif await self._accessible(conn, child, as_server):
                    found[child_id] = hierarchy_summary(child, suggested_only)
                else:
                    inaccessible.append(child_id)
        if unknown and not as_server and self.client is not None:
            found.update(await self._remote_children(unknown, suggested_only))
        children = [found[c] for c in child_ids if c in found]
        return {"room": summary, "children": children, "inaccessible_children": inaccessible}

    async def _remote_children(
        self, unknown: dict[str, list[str]], suggested_only: bool
    ) -> dict[str, JsonDict]:
        """Summaries of rooms we do not hold, from their via servers (cached)."""
        results: dict[str, JsonDict] = {}
        wanted = []
        for child_id, via in list(unknown.items())[:REMOTE_CHILDREN_LIMIT]:
            hit, cached = self.hierarchy_cache.get((child_id, suggested_only))
            if not hit:
                wanted.append((child_id, via))
            elif cached is not None:
                results[child_id] = cached
        limit = asyncio.Semaphore(REMOTE_CONCURRENCY)

        async def fetch(child_id: str, via: list[str]) -> None:
            summary = None
            servers = [s for s in dict.fromkeys(via) if s != self.server_name]
            for server in servers[:REMOTE_VIA_LIMIT]:
                async with limit:
                    summary = await self._remote_summary(server, child_id, suggested_only)
                if summary is not None:
                    break
            self.hierarchy_cache.put((child_id, suggested_only), summary)
            if summary is not None:
                results[child_id] = summary

        await asyncio.gather(*(fetch(c, v) for c, v in wanted))
        return results

    async def _remote_summary(
        self, server: str, room_id: str, suggested_only: bool
    ) -> JsonDict | None:
        assert self.client is not None
        path = federation_path("_matrix", "federation", "v1", "hierarchy", room_id)
        query = {"suggested_only": "true" if suggested_only else "false"}
        try:
            reply = await self.client.get_json(
                server, path, query=query, timeout=REMOTE_HIERARCHY_TIMEOUT
            )
        except (FederationError, TimeoutError) as error:
            log.info(
                "remote hierarchy unavailable",
                extra={"server": server, "room_id": room_id, "error": str(error)},
            )
            return None
        room = reply.get("room") if isinstance(reply, dict) else None
        if (
            not isinstance(room, dict)
            or room.get("room_id") != room_id
            or not isinstance(room.get("num_joined_members"), int)
        ):
            log.info("invalid remote hierarchy", extra={"server": server, "room_id": room_id})
            return None
        if not isinstance(room.get("children_state"), list):
            room["children_state"] = []
        return room

    # ------------------------------------------------------------ users

    async def rooms_of_user(self, user_id: str) -> list[str]:
        async with self.pool.acquire() as conn:
            return await storage.rooms_of_user(conn, user_id)
