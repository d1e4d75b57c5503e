"""Device lists for the servers a local user's join brings in
(https://spec.matrix.org/v1.19/server-server-api/#device-management).

A sender MUST send ``m.device_list_update`` to every server sharing a room
with the user whenever the list changes (``notify.py``) **and** when the user
joins a room containing servers that were not yet receiving the user's
updates. This module does the second part:

* One keys replica at a time follows the events service's stream of local
  member events (``StreamEvents(local_senders_only=True,
  event_types=["m.room.member"])``: each item costs a commit of the cursor,
  so it is not sent every message): the one holding the
  session advisory lock ``hashtext('mxfed.keys.device_list_joins')`` on its
  own connection. Another replica polls for the lock and takes over when the
  holder's connection closes.
* For each accepted ``m.room.member`` event in which a local user's
  membership *becomes* ``join`` (its previous membership, read from the
  event's auth events, was not ``join``), the destinations are the servers
  with joined members before the join (``servers_before``) minus the servers
  already sharing another room with the user (``QueryRoomsOfUser`` +
  ``QueryServersInRoom``) minus ourselves.
* The cursor advances on the lock-holding connection in the same
  transaction that records the join in ``accounts.device_list_join_outbox``, so
  a crash replays from the stored cursor and never loses or doubles a join
  (the outbox is unique per event too).
* The outbox is then handed to the sender (``PerformSendEdus`` with explicit
  destinations): one ``m.device_list_update`` per device of the user, with
  the user's current ``stream_id`` and an empty ``prev_id`` (the first of a
  sequence for those servers: receivers populate or resync their cache from
  ``/user/devices``), plus one ``m.signing_key_update`` when the user has
  master/self-signing keys. A row is deleted only once the sender stored its
  EDUs; failures are retried with backoff.

* A join to a room whose state is still partial here (joined with
  ``omit_members``; ``QueryRoomInfo`` says it resyncs) is remembered in
  ``accounts.device_list_partial_joins`` with the servers it went to. Its
  servers came from the join's answer (``servers_in_room``) and from the
  members seen so far; servers of the room we learn of only from the full
  state — ones that joined while the room was partial — did not get the
  user's device list, nor the updates made meanwhile. When the resync has
  ended (polled), those servers get the whole list through the same outbox,
  as Synapse does when a room leaves partial state.

The cursor starts at 0, the whole stream (see migration 101).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc

from matrix_protocol.canonical_json import decode_json, encode_json
from mxfed.clock import now_ms
from mxfed.leadership import lead_forever
from mxfed.waits import event_set_within
from mxfed_api.events.v1 import directory_pb2, directory_pb2_grpc, events_pb2, events_pb2_grpc
from mxfed_api.sender.v1 import sender_pb2, sender_pb2_grpc
from services.accounts import storage
from services.accounts.local import LocalAccounts
from services.accounts.validation import user_server

log = logging.getLogger(__name__)

LOCK_NAME = "mxfed.keys.device_list_joins"
CALL_TIMEOUT = 10.0
MAX_BATCH = 200
# The outbox is unique per event: the resync's row for a join gets this suffix.
RESYNCED_SUFFIX = "#resynced"
ROOM_QUERY_CONCURRENCY = 8


@dataclass(frozen=True)
class Join:
    """A local user's membership becoming join, as seen in the stream."""

    user_id: str
    room_id: str
    event_id: str
    auth_event_ids: tuple[str, ...]
    servers_before: tuple[str, ...]


def join_of(item: events_pb2.StreamEventsResponse, server_name: str) -> Join | None:
    """The local user's join an item carries (``None``: not one)."""
    if item.WhichOneof("item") != "event":
        return None
    event = item.event
    if event.status != events_pb2.EVENT_STATUS_ACCEPTED:
        return None
    try:
        pdu = decode_json(event.pdu_json)
    except ValueError:
        return None
    if not isinstance(pdu, dict) or pdu.get("type") != "m.room.member":
        return None
    user_id = pdu.get("state_key")
    content = pdu.get("content")
    if (
        not isinstance(user_id, str)
        or user_server(user_id) != server_name
        or not isinstance(content, dict)
        or content.get("membership") != "join"
    ):
        return None
    auth = pdu.get("auth_events") or []
    auth_ids = tuple(
        a if isinstance(a, str) else a[0]
        for a in auth
        if isinstance(a, str) or (isinstance(a, list) and a and isinstance(a[0], str))
    )
    return Join(
        user_id=user_id,
        room_id=event.room_id,
        event_id=event.event_id,
        auth_event_ids=auth_ids,
        servers_before=tuple(item.servers_before),
    )


def device_list_edus(devices_body: dict[str, Any], destinations: list[str]) -> list[Any]:
    """The sender EDUs handing a user's whole device list to ``destinations``."""
    user_id = devices_body["user_id"]
    stream_id = devices_body["stream_id"]
    edus = []
    for device in devices_body["devices"]:
        content: dict[str, Any] = {
            "user_id": user_id,
            "device_id": device["device_id"],
            "stream_id": stream_id,
            "prev_id": [],
            "deleted": False,
        }
        if "device_display_name" in device:
            content["device_display_name"] = device["device_display_name"]
        if "keys" in device:
            content["keys"] = device["keys"]
        edus.append(
            sender_pb2.Edu(
                edu_type="m.device_list_update",
                content_json=encode_json(content),
                destinations=destinations,
            )
        )
    signing = {
        field: devices_body[field]
        for field in ("master_key", "self_signing_key")
        if field in devices_body
    }
    if signing:
        edus.append(
            sender_pb2.Edu(
                edu_type="m.signing_key_update",
                content_json=encode_json({"user_id": user_id, **signing}),
                destinations=destinations,
            )
        )
    return edus


class JoinDeviceLists:
    def __init__(
        self,
        database_url: str,
        local: LocalAccounts,
        events_channel: grpc.aio.Channel,
        sender_channel: grpc.aio.Channel,
        *,
        lock_poll_interval: float = 2.0,
        retry_interval: float = 5.0,
        resync_poll_interval: float = 5.0,
    ) -> None:
        self.database_url = database_url
        self.local = local
        self.server_name = local.server_name
        self.events = events_pb2_grpc.EventsStub(events_channel)
        self.directory = directory_pb2_grpc.DirectoryStub(events_channel)
        self.sender = sender_pb2_grpc.SenderStub(sender_channel)
        self.lock_poll_interval = lock_poll_interval
        self.retry_interval = retry_interval
        self.resync_poll_interval = resync_poll_interval
        self.position = 0
        self.leader = False
        self._outbox_wake = asyncio.Event()
        self._conn_lock = asyncio.Lock()

    # ------------------------------------------------------------ leader loop

    async def run(self) -> None:
        """Forever: wait for the lock, then follow the stream and drain the outbox."""
        await lead_forever(
            self.database_url,
            LOCK_NAME,
            self._lead,
            poll_interval=self.lock_poll_interval,
            on_leadership=self._set_leader,
        )

    def _set_leader(self, held: bool) -> None:
        self.leader = held

    async def _lead(self, connection: asyncpg.Connection) -> None:
        drain = asyncio.create_task(self._drain_forever(connection), name="keys:join-outbox")
        resynced = asyncio.create_task(
            self._resynced_forever(connection), name="keys:join-resynced"
        )
        try:
            await self._follow(connection)
        finally:
            drain.cancel()
            resynced.cancel()
            await asyncio.gather(drain, resynced, return_exceptions=True)

    async def _follow(self, connection: asyncpg.Connection) -> None:
        async with self._conn_lock:
            self.position = await storage.join_cursor_position(connection)
        # wait_for_ready: at start the events service may not be up yet; that
        # is not worth a warning and a restart.
        call = self.events.StreamEvents(
            events_pb2.StreamEventsRequest(
                after_position=self.position,
                local_senders_only=True,
                event_types=["m.room.member"],
            ),
            wait_for_ready=True,
        )
        try:
            async for item in call:
                await self._handle(connection, item)
            log.info("events stream ended; reconnecting")
        finally:
            call.cancel()

    async def _handle(
        self, connection: asyncpg.Connection, item: events_pb2.StreamEventsResponse
    ) -> None:
        join = join_of(item, self.server_name)
        destinations: list[str] = []
        partial = False
        if join is not None and not await self._was_joined(join):
            partial = await self._partial(join.room_id)
            if not partial:
                # A resync may have ended since the item was read: the join's
                # servers are then the full state's.
                join = await self._fresh_servers(join)
            destinations = await self._new_servers(join)
        # The lock connection is shared by the stream follower and the outbox
        # drain; they take turns.
        async with self._conn_lock, connection.transaction():
            if partial and join is not None:
                await storage.insert_partial_join(
                    connection,
                    join.event_id,
                    join.user_id,
                    join.room_id,
                    sorted({*join.servers_before, *destinations}),
                    now_ms(),
                )
            if destinations and join is not None:
                await storage.insert_join_outbox(
                    connection,
                    join.user_id,
                    join.room_id,
                    join.event_id,
                    destinations,
                    now_ms(),
                )
            await storage.set_join_cursor_position(connection, item.position)
        self.position = item.position
        if destinations:
            self._outbox_wake.set()

    # ------------------------------------------------------------ destinations

    async def _was_joined(self, join: Join) -> bool:
        """Was the user already joined before this event (a profile change)?

        The auth events of a membership event include the target's previous
        membership event, when there is one.
        """
        if not join.auth_event_ids:
            return False
        reply = await self.events.QueryEvents(
            events_pb2.QueryEventsRequest(event_ids=list(join.auth_event_ids)),
            timeout=CALL_TIMEOUT,
            wait_for_ready=True,
        )
        for record in reply.events:
            try:
                pdu = decode_json(record.pdu_json)
            except ValueError:
                continue
            if (
                isinstance(pdu, dict)
                and pdu.get("type") == "m.room.member"
                and pdu.get("state_key") == join.user_id
            ):
                content = pdu.get("content")
                return isinstance(content, dict) and content.get("membership") == "join"
        return False

    async def _new_servers(self, join: Join) -> list[str]:
        room_servers = set(join.servers_before) - {self.server_name, ""}
        if not room_servers:
            return []
        rooms = await self.directory.QueryRoomsOfUser(
            directory_pb2.QueryRoomsOfUserRequest(user_id=join.user_id),
            timeout=CALL_TIMEOUT,
            wait_for_ready=True,
        )
        others = [r for r in rooms.room_ids if r != join.room_id]
        limit = asyncio.Semaphore(ROOM_QUERY_CONCURRENCY)

        async def servers_of(room_id: str) -> list[str]:
            async with limit:
                reply = await self.events.QueryServersInRoom(
                    events_pb2.QueryServersInRoomRequest(room_id=room_id),
                    timeout=CALL_TIMEOUT,
                    wait_for_ready=True,
                )
                return list(reply.servers)

        sharing: set[str] = set()
        for servers in await asyncio.gather(*(servers_of(r) for r in others)):
            sharing.update(servers)
        return sorted(room_servers - sharing)

    async def _fresh_servers(self, join: Join) -> Join:
        """``join`` with the servers before it as the events service holds them now."""
        reply = await self.events.QueryServersInRoom(
            events_pb2.QueryServersInRoomRequest(room_id=join.room_id, at_event_id=join.event_id),
            timeout=CALL_TIMEOUT,
            wait_for_ready=True,
        )
        if not reply.servers:
            return join
        return dataclasses.replace(join, servers_before=tuple(reply.servers))

    async def _partial(self, room_id: str) -> bool:
        """Is the room's state partial here (a join with omit_members, resyncing)?"""
        info = await self.events.QueryRoomInfo(
            events_pb2.QueryRoomInfoRequest(room_id=room_id),
            timeout=CALL_TIMEOUT,
            wait_for_ready=True,
        )
        return info.exists and info.resync_state not in (
            events_pb2.RESYNC_STATE_UNSPECIFIED,
            events_pb2.RESYNC_STATE_FULL_STATE,
        )

    # ------------------------------------------------------------ after a resync

    async def _resynced_forever(self, connection: asyncpg.Connection) -> None:
        while True:
            try:
                await self.resynced(connection)
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "could not check partial-state rooms for device lists; retrying",
                    extra={"code": exc.code().name, "details": exc.details()},
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not check partial-state rooms for device lists; retrying")
            await asyncio.sleep(self.resync_poll_interval)

    async def resynced(self, connection: asyncpg.Connection) -> None:
        """Joins to rooms whose resync has ended: their servers not sent to go to the outbox."""
        async with self._conn_lock:
            rows = await storage.partial_joins(connection, MAX_BATCH)
        woken = False
        for row in rows:
            room_id, user_id = row["room_id"], row["user_id"]
            if await self._partial(room_id):
                continue
            rooms = await self.directory.QueryRoomsOfUser(
                directory_pb2.QueryRoomsOfUserRequest(user_id=user_id),
                timeout=CALL_TIMEOUT,
                wait_for_ready=True,
            )
            destinations: list[str] = []
            if room_id in rooms.room_ids:  # else: left meanwhile
                reply = await self.events.QueryServersInRoom(
                    events_pb2.QueryServersInRoomRequest(room_id=room_id),
                    timeout=CALL_TIMEOUT,
                    wait_for_ready=True,
                )
                known = {*row["sent_to"], self.server_name, ""}
                destinations = sorted(set(reply.servers) - known)
            async with self._conn_lock, connection.transaction():
                if destinations:
                    await storage.insert_join_outbox(
                        connection,
                        user_id,
                        room_id,
                        row["event_id"] + RESYNCED_SUFFIX,
                        destinations,
                        now_ms(),
                    )
                await storage.delete_partial_join(connection, row["event_id"])
            if destinations:
                log.info(
                    "device lists for the servers a resync revealed",
                    extra={"user_id": user_id, "room_id": room_id, "servers": len(destinations)},
                )
                woken = True
        if woken:
            self._outbox_wake.set()

    # ------------------------------------------------------------ outbox

    async def _drain_forever(self, connection: asyncpg.Connection) -> None:
        while True:
            self._outbox_wake.clear()
            try:
                remaining = await self.drain(connection)
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "could not hand device lists to the sender; retrying",
                    extra={"code": exc.code().name, "details": exc.details()},
                )
                remaining = True
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not hand device lists to the sender; retrying")
                remaining = True
            if remaining:
                await event_set_within(self._outbox_wake, self.retry_interval)
            else:
                await self._outbox_wake.wait()

    async def drain(self, connection: asyncpg.Connection) -> bool:
        """Hand every outbox row to the sender; True when some are left (a failure)."""
        while True:
            async with self._conn_lock:
                rows = await storage.join_outbox(connection, MAX_BATCH)
            if not rows:
                return False
            for row in rows:
                body = await self.local.user_devices(row["user_id"])
                edus = device_list_edus(body, list(row["destinations"]))
                if edus:
                    await self.sender.PerformSendEdus(
                        sender_pb2.PerformSendEdusRequest(edus=edus),
                        timeout=CALL_TIMEOUT,
                        wait_for_ready=True,
                    )
                async with self._conn_lock:
                    await storage.delete_join_outbox_row(connection, row["seq"])
