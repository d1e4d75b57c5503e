"""The :class:`Client`: mxfed's gRPC API for bots, bridges and the ``mxfed`` CLI.

One object holds one channel per service (opened on first use, over the
internal plane's mutual TLS with the operator's or an actor's certificate)
and offers the calls a bot needs as typed methods. Every failure raises a
:class:`~mxfed.client.errors.MatrixError` carrying the Matrix errcode.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import grpc

from mxfed.client.errors import MatrixError, NotFound, Unavailable, from_rpc_error
from mxfed.client.send_stream import SendStream
from mxfed.client.types import (
    Backfilled,
    CreatedRoom,
    Event,
    FilePosition,
    Joined,
    KeysUploaded,
    Knocked,
    MediaInfo,
    Membership,
    PublicRooms,
    Receipt,
    RoomInfo,
    Sent,
    StreamItem,
    ThirdPartyInvited,
    ToDeviceMessage,
    Typing,
    Uploaded,
)
from mxfed.config import Config, load_config
from mxfed.internal_identity import OPERATOR, Caller
from mxfed.internal_plane import open_channel
from mxfed_api.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from mxfed_api.backfill.v1 import backfill_pb2, backfill_pb2_grpc
from mxfed_api.events.v1 import (
    directory_pb2,
    directory_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    membership_pb2,
    membership_pb2_grpc,
    third_party_pb2,
    third_party_pb2_grpc,
)
from mxfed_api.keys.v1 import keys_pb2, keys_pb2_grpc
from mxfed_api.media.v1 import media_pb2, media_pb2_grpc
from mxfed_api.sender.v1 import sender_pb2, sender_pb2_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S")

CALL_TIMEOUT = 30.0
# Joining a big remote room fetches and checks its whole state.
MEMBERSHIP_TIMEOUT = 300.0
BACKFILL_TIMEOUT = 180.0
BACKFILL_BATCH = 100
THIRD_PARTY_TIMEOUT = 120.0
SEND_ATTEMPTS = 4
RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
CHUNK_BYTES = 256 * 1024


def _service_of(stub_class: type) -> str:
    """The service of a stub: ``mxfed_api.<package>.v1.*_pb2_grpc`` → the package."""
    parts = stub_class.__module__.split(".")
    if len(parts) < 3 or parts[0] != "mxfed_api":
        raise ValueError(f"{stub_class.__name__} is not a stub of mxfed's API")
    return parts[1]


_RESYNC_STATES = {
    events_pb2.RESYNC_STATE_FULL_STATE: "full_state",
    events_pb2.RESYNC_STATE_PENDING: "pending",
    events_pb2.RESYNC_STATE_FETCHING: "fetching",
    events_pb2.RESYNC_STATE_STORING: "storing",
    events_pb2.RESYNC_STATE_RETRYING: "retrying",
}


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def _loads(data: bytes, default: Any) -> Any:
    return json.loads(data) if data else default


class Client:
    """mxfed's gRPC API for local actors.

    ``Client.from_config()`` reads the same configuration as the CLI (the
    file named by ``--config``/``MXFED_CONFIG``, environment overrides) and
    calls as the operator, or as ``actor`` (a certificate from ``mxfed actors
    add NAME`` under the internal TLS directory). Use it as an async context
    manager, or call :meth:`close`.
    """

    def __init__(
        self,
        config: Config,
        caller: Caller = OPERATOR,
        *,
        addresses: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.caller = caller
        # Per service, an address other than the configured one (one replica, say).
        self.addresses = dict(addresses or {})
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[type, Any] = {}
        # Local sends, over one stream (opened on the first).
        self._send_stream: SendStream | None = None

    @classmethod
    def from_config(
        cls,
        path: str | Path | None = None,
        *,
        actor: str | None = None,
        **overrides: Any,
    ) -> Client:
        """A client with the CLI's defaults; ``overrides`` are configuration settings."""
        config = load_config(path)
        if overrides:
            config = config.model_copy(update=overrides)
        return cls(config, Caller.actor(actor) if actor else OPERATOR)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._send_stream is not None:
            await self._send_stream.close()
            self._send_stream = None
        channels, self._channels = self._channels, {}
        self._stubs.clear()
        for channel in channels.values():
            await channel.close()

    # ------------------------------------------------------------ plumbing

    def stub(self, stub_class: Callable[[grpc.aio.Channel], S]) -> S:
        """The stub of any service (for calls without a method here; wrap them in
        :meth:`guarded` so errors become :class:`MatrixError`)."""
        stub = self._stubs.get(stub_class)  # type: ignore[call-overload]
        if stub is None:
            # accounts is served by the keys process unless accounts_in_keys is off.
            service = self.config.host_part(_service_of(stub_class))  # type: ignore[arg-type]
            channel = self._channels.get(service)
            if channel is None:
                channel = open_channel(
                    self.config, service, caller=self.caller, address=self.addresses.get(service)
                )
                self._channels[service] = channel
            stub = stub_class(channel)
            self._stubs[stub_class] = stub  # type: ignore[index]
        return stub

    @contextmanager
    def guarded(self, service: str = "") -> Any:
        """Turn failed gRPC calls inside the block into :class:`MatrixError`."""
        try:
            yield
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, service) from None

    async def _call(self, service: str, call: Awaitable[T]) -> T:
        with self.guarded(service):
            return await call

    @property
    def _events(self) -> events_pb2_grpc.EventsStub:
        return self.stub(events_pb2_grpc.EventsStub)

    @property
    def _membership(self) -> membership_pb2_grpc.MembershipStub:
        return self.stub(membership_pb2_grpc.MembershipStub)

    @property
    def _accounts(self) -> accounts_pb2_grpc.AccountsStub:
        return self.stub(accounts_pb2_grpc.AccountsStub)

    @property
    def _media(self) -> media_pb2_grpc.MediaStub:
        return self.stub(media_pb2_grpc.MediaStub)

    @property
    def server_name(self) -> str:
        return self.config.server_name

    @property
    def operator(self) -> Operator:
        """The operator's calls (keys, delivery queues, diagnosis)."""
        return Operator(self)

    # ------------------------------------------------------------ rooms

    async def create_room(
        self,
        creator: str,
        *,
        name: str = "",
        topic: str = "",
        preset: str = "private_chat",
        alias_localpart: str = "",
        invite: Sequence[str] = (),
        room_version: str = "",
        initial_state: Sequence[Mapping[str, Any]] = (),
        creation_content: Mapping[str, Any] | None = None,
        power_level_overrides: Mapping[str, Any] | None = None,
    ) -> CreatedRoom:
        """Create a room; ``creator`` is a local user. Remote invitees are invited over
        federation."""
        request = events_pb2.PerformCreateRoomRequest(
            creator=creator,
            room_version=room_version,
            preset=preset,
            name=name,
            topic=topic,
            alias_localpart=alias_localpart,
            invite=list(invite),
        )
        if initial_state:
            request.initial_state_json = _json(list(initial_state))
        if creation_content:
            request.creation_content_json = _json(dict(creation_content))
        if power_level_overrides:
            request.power_level_overrides_json = _json(dict(power_level_overrides))
        reply = await self._call(
            "events", self._events.PerformCreateRoom(request, timeout=MEMBERSHIP_TIMEOUT)
        )
        return CreatedRoom(reply.room_id, reply.room_alias or None)

    async def resolve_room(self, room: str) -> str:
        """The room ID of a room ID or a local alias (``#name:server``)."""
        if not room.startswith("#"):
            return room
        reply = await self._call(
            "events",
            self._events.QueryAlias(events_pb2.QueryAliasRequest(alias=room), timeout=CALL_TIMEOUT),
        )
        if not reply.found:
            raise NotFound("M_NOT_FOUND", f"no room has the alias {room}")
        return reply.room_id

    async def room_info(self, room_id: str) -> RoomInfo:
        reply = await self._call(
            "events",
            self._events.QueryRoomInfo(
                events_pb2.QueryRoomInfoRequest(room_id=room_id), timeout=CALL_TIMEOUT
            ),
        )
        return RoomInfo(
            room_id,
            reply.exists,
            reply.room_version,
            reply.we_are_joined,
            tuple(reply.forward_extremities),
            reply.min_depth,
            reply.max_depth,
            resync_state=_RESYNC_STATES.get(reply.resync_state, "full_state"),
            members_known=reply.members_known,
            members_expected=reply.members_expected,
            resync_attempts=reply.resync_attempts,
            resync_error=reply.resync_error,
        )

    async def current_state(
        self, room_id: str, types: Iterable[tuple[str, str | None]] = ()
    ) -> list[Event]:
        """The room's current state events; ``types``: (type, state_key or None for any)."""
        request = events_pb2.QueryCurrentStateRequest(room_id=room_id)
        for event_type, state_key in types:
            state_filter = request.filter.add(type=event_type)
            if state_key is not None:
                state_filter.state_key = state_key
        reply = await self._call(
            "events", self._events.QueryCurrentState(request, timeout=CALL_TIMEOUT)
        )
        if not reply.room_exists:
            raise NotFound("M_NOT_FOUND", f"unknown room {room_id}")
        return [Event.from_record(record) for record in reply.events]

    async def joined_members(self, room_id: str) -> list[str]:
        members = await self.current_state(room_id, [("m.room.member", None)])
        return sorted(
            e.state_key for e in members if e.state_key and e.content.get("membership") == "join"
        )

    async def servers_in_room(self, room_id: str) -> list[str]:
        reply = await self._call(
            "events",
            self._events.QueryServersInRoom(
                events_pb2.QueryServersInRoomRequest(room_id=room_id), timeout=CALL_TIMEOUT
            ),
        )
        return list(reply.servers)

    async def create_alias(
        self, alias: str, room_id: str, creator: str, servers: Sequence[str] = ()
    ) -> None:
        await self._call(
            "events",
            self._events.PerformCreateAlias(
                events_pb2.PerformCreateAliasRequest(
                    alias=alias, room_id=room_id, creator=creator, servers=list(servers)
                ),
                timeout=CALL_TIMEOUT,
            ),
        )

    # ------------------------------------------------------------ membership

    async def join(
        self,
        user_id: str,
        room: str,
        *,
        servers: Sequence[str] = (),
        reason: str = "",
        content: Mapping[str, Any] | None = None,
    ) -> Joined:
        """Join a room by ID or alias: locally when we are in it, else through ``servers``
        (and the alias's servers, an inviter's, the room ID's domain)."""
        request = membership_pb2.PerformJoinRequest(
            room_id_or_alias=room, user_id=user_id, servers=list(servers), reason=reason
        )
        if content:
            request.content_json = _json(dict(content))
        reply = await self._call(
            "events", self._membership.PerformJoin(request, timeout=MEMBERSHIP_TIMEOUT)
        )
        return Joined(reply.room_id, reply.event_id, reply.remote)

    async def leave(self, user_id: str, room_id: str, *, reason: str = "") -> str:
        """Leave, reject an invite or retract a knock; the leave event's ID ("" when no
        server could be reached and it was only recorded here)."""
        reply = await self._call(
            "events",
            self._membership.PerformLeave(
                membership_pb2.PerformLeaveRequest(room_id=room_id, user_id=user_id, reason=reason),
                timeout=MEMBERSHIP_TIMEOUT,
            ),
        )
        return reply.event_id

    async def invite(self, sender: str, room_id: str, target: str, *, reason: str = "") -> str:
        """Invite any user (local or remote); the invite's event ID."""
        reply = await self._call(
            "events",
            self._membership.PerformInvite(
                membership_pb2.PerformInviteRequest(
                    room_id=room_id, sender=sender, target=target, reason=reason
                ),
                timeout=MEMBERSHIP_TIMEOUT,
            ),
        )
        return reply.event_id

    async def knock(
        self, user_id: str, room: str, *, servers: Sequence[str] = (), reason: str = ""
    ) -> Knocked:
        reply = await self._call(
            "events",
            self._membership.PerformKnock(
                membership_pb2.PerformKnockRequest(
                    room_id_or_alias=room, user_id=user_id, servers=list(servers), reason=reason
                ),
                timeout=MEMBERSHIP_TIMEOUT,
            ),
        )
        return Knocked(reply.room_id, reply.event_id, _loads(reply.stripped_state_json, []))

    async def invites(self, user_id: str = "") -> list[Membership]:
        """Pending invites and knocks of local users (``user_id``: one of them)."""
        reply = await self._call(
            "events",
            self._membership.QueryInvites(
                membership_pb2.QueryInvitesRequest(user_id=user_id), timeout=CALL_TIMEOUT
            ),
        )
        return [
            Membership(
                room_id=item.room_id,
                user_id=item.user_id,
                membership=item.membership,
                event_id=item.event_id,
                sender=item.sender,
                via_server=item.via_server,
                room_version=item.room_version,
                stripped_state=_loads(item.stripped_state_json, []),
            )
            for item in reply.memberships
        ]

    async def third_party_invite(
        self,
        sender: str,
        room_id: str,
        *,
        medium: str,
        address: str,
        id_server: str,
        id_access_token: str = "",
    ) -> ThirdPartyInvited:
        """Invite a 3PID (an email address...) through an identity server."""
        stub = self.stub(third_party_pb2_grpc.ThirdPartyInvitesStub)
        reply = await self._call(
            "events",
            stub.PerformThirdPartyInvite(
                third_party_pb2.PerformThirdPartyInviteRequest(
                    room_id=room_id,
                    sender=sender,
                    id_server=id_server,
                    medium=medium,
                    address=address,
                    id_access_token=id_access_token,
                ),
                timeout=THIRD_PARTY_TIMEOUT,
            ),
        )
        return ThirdPartyInvited(reply.event_id, reply.token, reply.display_name)

    # ------------------------------------------------------------ sending

    async def send_event(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        redacts: str = "",
        txn_id: str | None = None,
    ) -> Sent:
        """Send an event as the local user ``sender``.

        ``txn_id`` (per sender) makes the call idempotent: a retry with the
        same id — here after the service was unavailable, or by a restarted
        bot — returns the event sent the first time instead of sending
        another. Without one a fresh id is used for this call's own retries.
        """
        txn_id = txn_id or secrets.token_hex(16)  # as random as uuid4, a quarter of its CPU
        request = events_pb2.PerformSendEventRequest(
            room_id=room_id,
            sender=sender,
            type=event_type,
            content_json=_json(dict(content)),
            redacts=redacts,
            txn_id=txn_id,
        )
        if state_key is not None:
            request.state_key = state_key
        for attempt in range(SEND_ATTEMPTS):
            if self._send_stream is None:  # the first send, or the client closed meanwhile
                self._send_stream = SendStream(lambda: self._events)
            try:
                reply = await self._send_stream.send(request, CALL_TIMEOUT)
                return Sent(reply.event_id, room_id, reply.stream_position, txn_id)
            except Unavailable:
                if attempt == SEND_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(RECONNECT_DELAYS[attempt])
        raise AssertionError("unreachable")

    async def send_message(
        self,
        room_id: str,
        sender: str,
        body: str,
        *,
        msgtype: str = "m.text",
        txn_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Sent:
        content = {"msgtype": msgtype, "body": body, **(extra or {})}
        return await self.send_event(room_id, sender, "m.room.message", content, txn_id=txn_id)

    async def send_state(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: Mapping[str, Any],
        state_key: str = "",
        *,
        txn_id: str | None = None,
    ) -> Sent:
        return await self.send_event(
            room_id, sender, event_type, content, state_key=state_key, txn_id=txn_id
        )

    async def redact(
        self,
        room_id: str,
        sender: str,
        event_id: str,
        *,
        reason: str = "",
        txn_id: str | None = None,
    ) -> Sent:
        content = {"reason": reason} if reason else {}
        return await self.send_event(
            room_id, sender, "m.room.redaction", content, redacts=event_id, txn_id=txn_id
        )

    # ------------------------------------------------------------ reading

    async def events(self, event_ids: Sequence[str]) -> list[Event]:
        reply = await self._call(
            "events",
            self._events.QueryEvents(
                events_pb2.QueryEventsRequest(event_ids=list(event_ids)), timeout=CALL_TIMEOUT
            ),
        )
        return [Event.from_record(record) for record in reply.events]

    async def backfill(
        self, room_id: str, limit: int = BACKFILL_BATCH, *, servers: Sequence[str] = ()
    ) -> Backfilled:
        """Fetch older history of the room from other servers (``servers`` asked first)."""
        stub = self.stub(backfill_pb2_grpc.BackfillStub)
        reply = await self._call(
            "backfill",
            stub.PerformBackfill(
                backfill_pb2.PerformBackfillRequest(
                    room_id=room_id, limit=limit, servers=list(servers)
                ),
                timeout=BACKFILL_TIMEOUT,
            ),
        )
        return Backfilled(
            reply.events_fetched, reply.server, tuple(reply.servers_failed), reply.events_refused
        )

    async def history(
        self, room_id: str, limit: int = 20, *, backfill: bool = False
    ) -> list[Event]:
        """The room's ``limit`` latest events, oldest first.

        ``backfill``: when we hold fewer, fetch older history from other
        servers and go on, until ``limit`` events or the room's start.
        """
        if limit < 1:
            raise MatrixError("M_INVALID_PARAM", "limit must be at least 1")
        events: list[Event] = []
        token = resume = ""
        while len(events) < limit:
            reply = await self._call(
                "events",
                self._events.QueryTimeline(
                    events_pb2.QueryTimelineRequest(
                        room_id=room_id, from_token=token, backwards=True, limit=limit - len(events)
                    ),
                    timeout=CALL_TIMEOUT,
                ),
            )
            events.extend(Event.from_record(record) for record in reply.events)
            resume = reply.resume_token or resume
            if reply.reached_room_start or len(events) >= limit:
                break
            if reply.next_token:
                token = reply.next_token
                continue
            wanted = min(BACKFILL_BATCH, max(limit - len(events), 10))
            if not backfill or (await self.backfill(room_id, wanted)).events_fetched == 0:
                break
            token = resume
        # Backwards pagination yields newest first.
        return list(reversed(events[:limit]))

    async def latest_position(self, room_id: str) -> int:
        """The stream position of the newest event we hold in the room (0: none)."""
        latest = await self.history(room_id, 1)
        return max((event.stream_position for event in latest), default=0)

    async def stream(
        self,
        *,
        room_id: str = "",
        after: int | None = None,
        position: FilePosition | None = None,
        ephemeral: bool = False,
        local_senders_only: bool = False,
        reconnect: bool = True,
    ) -> AsyncIterator[StreamItem]:
        """New events (and with ``ephemeral`` typing and receipts), of one room or all.

        Starts after ``after`` (0: everything stored; -1: only what comes from
        now), or after the position stored in ``position``, which is then
        updated as items are handled (see :class:`FilePosition`). When the
        events service goes away the stream reconnects after the last item
        delivered (``reconnect``): nothing is skipped and nothing repeated.
        (Started with -1 and cut before its first item, it resumes from "now"
        again: give a position, e.g. :meth:`latest_position`, to be exact.)
        """
        last = after if after is not None else (position.load() if position else -1)
        delivered: int | None = None
        failures = 0
        while True:
            request = events_pb2.StreamEventsRequest(
                room_id=room_id,
                after_position=last,
                local_senders_only=local_senders_only,
                include_ephemeral=ephemeral,
            )
            # The items ready together come in one message (cheaper at both ends).
            call = self._events.StreamEventBatches(
                events_pb2.StreamEventBatchesRequest(stream=request)
            )
            try:
                async for batch in call:
                    failures = 0
                    for reply in batch.items:
                        if delivered is not None and position is not None:
                            position.save(delivered)
                        item = _stream_item(reply)
                        last = delivered = item.position
                        yield item
            except grpc.aio.AioRpcError as error:
                problem = from_rpc_error(error, "events")
                if not (reconnect and isinstance(problem, Unavailable)):
                    raise problem from None
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                failures += 1
                log.warning(
                    "event stream interrupted; resuming",
                    extra={"after_position": last, "retry_in": delay, "error": str(problem)},
                )
                await asyncio.sleep(delay)
                continue
            finally:
                call.cancel()
            if not reconnect:
                return

    # ------------------------------------------------------------ typing and receipts

    async def _send_edus(
        self, edus: Sequence[sender_pb2.Edu] = (), to_device: Sequence[Any] = ()
    ) -> int:
        stub = self.stub(sender_pb2_grpc.SenderStub)
        reply = await self._call(
            "sender",
            stub.PerformSendEdus(
                sender_pb2.PerformSendEdusRequest(edus=list(edus), to_device=list(to_device)),
                timeout=CALL_TIMEOUT,
            ),
        )
        return reply.queued

    async def typing(self, room_id: str, user_id: str, typing: bool = True) -> None:
        """Tell the room's other servers that the local user is (not) typing."""
        content = {"room_id": room_id, "user_id": user_id, "typing": typing}
        await self._send_edus([sender_pb2.Edu(edu_type="m.typing", content_json=_json(content))])

    async def read_receipt(self, room_id: str, user_id: str, event_id: str, ts: int = 0) -> None:
        """A read receipt of the local user for ``event_id``, to the room's other servers."""
        receipt = {"event_ids": [event_id], "data": {"ts": ts or int(time.time() * 1000)}}
        content = {room_id: {"m.read": {user_id: receipt}}}
        await self._send_edus([sender_pb2.Edu(edu_type="m.receipt", content_json=_json(content))])

    # ------------------------------------------------------------ profiles

    async def set_profile(
        self, user_id: str, fields: Mapping[str, Any], *, replace: bool = False
    ) -> dict[str, Any]:
        """Set (``None``: remove) profile fields of a local user; the whole profile after."""
        reply = await self._call(
            "accounts",
            self._accounts.PerformSetProfile(
                accounts_pb2.PerformSetProfileRequest(
                    user_id=user_id, fields_json=_json(dict(fields)), replace=replace
                ),
                timeout=CALL_TIMEOUT,
            ),
        )
        return dict(_loads(reply.profile_json, {}))

    async def profile(self, user_id: str, field: str = "") -> dict[str, Any] | None:
        """A user's profile (a remote user's over federation); None when unknown."""
        reply = await self._call(
            "accounts",
            self._accounts.QueryProfile(
                accounts_pb2.QueryProfileRequest(user_id=user_id, field=field),
                timeout=CALL_TIMEOUT,
            ),
        )
        return dict(_loads(reply.profile_json, {})) if reply.found else None

    # ------------------------------------------------------------ the room directory

    async def publish_room(self, room_id: str, network_id: str = "") -> bool:
        """List a room in our public room directory; whether it was listed already."""
        stub = self.stub(directory_pb2_grpc.DirectoryStub)
        reply = await self._call(
            "events",
            stub.PerformPublishRoom(
                directory_pb2.PerformPublishRoomRequest(room_id=room_id, network_id=network_id),
                timeout=CALL_TIMEOUT,
            ),
        )
        return reply.was_published

    async def unpublish_room(self, room_id: str) -> bool:
        """Take a room out of our public room directory; whether it was listed."""
        stub = self.stub(directory_pb2_grpc.DirectoryStub)
        reply = await self._call(
            "events",
            stub.PerformUnpublishRoom(
                directory_pb2.PerformUnpublishRoomRequest(room_id=room_id), timeout=CALL_TIMEOUT
            ),
        )
        return reply.was_published

    async def public_rooms(
        self, *, server: str = "", limit: int = 0, since: str = "", search: str = ""
    ) -> PublicRooms:
        """Our public room directory, or another server's (``server``) over federation."""
        stub = self.stub(directory_pb2_grpc.DirectoryStub)
        reply = await self._call(
            "events",
            stub.QueryPublicRooms(
                directory_pb2.QueryPublicRoomsRequest(
                    server=server, limit=limit, since=since, generic_search_term=search
                ),
                timeout=CALL_TIMEOUT * 2,
            ),
        )
        body = dict(_loads(reply.response_json, {}))
        return PublicRooms(
            chunk=list(body.get("chunk", [])),
            next_batch=reply.next_batch,
            prev_batch=reply.prev_batch,
            total_room_count_estimate=reply.total_room_count_estimate,
            body=body,
        )

    # ------------------------------------------------------------ devices and to-device

    async def upload_keys(
        self,
        user_id: str,
        device_id: str,
        *,
        device_keys: Mapping[str, Any] | None = None,
        one_time_keys: Mapping[str, Any] | None = None,
        fallback_keys: Mapping[str, Any] | None = None,
        display_name: str | None = None,
    ) -> KeysUploaded:
        """Create a local user's device (or update it) with its end-to-end keys."""
        request = accounts_pb2.PerformUploadKeysRequest(
            user_id=user_id,
            device_id=device_id,
            device_keys_json=_json(dict(device_keys)) if device_keys else b"",
            one_time_keys_json=_json(dict(one_time_keys)) if one_time_keys else b"",
            fallback_keys_json=_json(dict(fallback_keys)) if fallback_keys else b"",
        )
        if display_name is not None:
            request.display_name = display_name
        reply = await self._call(
            "accounts", self._accounts.PerformUploadKeys(request, timeout=CALL_TIMEOUT)
        )
        return KeysUploaded(dict(reply.one_time_key_counts), reply.stream_id)

    async def add_device(
        self, user_id: str, device_id: str, display_name: str | None = None
    ) -> None:
        """Create (or rename) a local user's device."""
        request = accounts_pb2.PerformUploadKeysRequest(user_id=user_id, device_id=device_id)
        if display_name is not None:
            request.display_name = display_name
        await self._call(
            "accounts", self._accounts.PerformUploadKeys(request, timeout=CALL_TIMEOUT)
        )

    async def devices(self, user_id: str, *, force_resync: bool = False) -> dict[str, Any]:
        """A user's devices: ours from our store, a remote user's over federation
        (through the device-list cache; ``force_resync`` asks its server again)."""
        if user_id.partition(":")[2] == self.server_name:
            reply = await self._call(
                "accounts",
                self._accounts.QueryUserDevices(
                    accounts_pb2.QueryUserDevicesRequest(user_id=user_id), timeout=CALL_TIMEOUT
                ),
            )
        else:
            reply = await self._call(
                "accounts",
                self._accounts.QueryRemoteDevices(
                    accounts_pb2.QueryRemoteDevicesRequest(
                        user_id=user_id, force_resync=force_resync
                    ),
                    timeout=CALL_TIMEOUT,
                ),
            )
        return dict(_loads(reply.response_json, {}))

    async def delete_device(self, user_id: str, device_id: str) -> bool:
        reply = await self._call(
            "accounts",
            self._accounts.PerformDeleteDevice(
                accounts_pb2.PerformDeleteDeviceRequest(user_id=user_id, device_id=device_id),
                timeout=CALL_TIMEOUT,
            ),
        )
        return reply.deleted

    async def send_to_device(
        self,
        sender: str,
        event_type: str,
        messages: Mapping[str, Mapping[str, Any]],
        *,
        message_id: str = "",
    ) -> int:
        """Send-to-device messages ``{user_id: {device_id | "*": content}}`` to any users."""
        to_device = sender_pb2.ToDevice(
            sender=sender, type=event_type, message_id=message_id, messages_json=_json(messages)
        )
        return await self._send_edus(to_device=[to_device])

    async def to_device_messages(
        self, user_id: str, device_id: str, *, after: int = 0, limit: int = 100
    ) -> tuple[list[ToDeviceMessage], bool]:
        """A local device's inbox after ``after``; (messages, more after them)."""
        reply = await self._call(
            "accounts",
            self._accounts.QueryToDeviceMessages(
                accounts_pb2.QueryToDeviceMessagesRequest(
                    user_id=user_id, device_id=device_id, after_position=after, limit=limit
                ),
                timeout=CALL_TIMEOUT,
            ),
        )
        return [_to_device(m) for m in reply.messages], reply.more

    async def ack_to_device(self, user_id: str, device_id: str, up_to: int) -> int:
        """Delete the inbox's messages up to ``up_to`` (handled)."""
        reply = await self._call(
            "accounts",
            self._accounts.PerformAckToDeviceMessages(
                accounts_pb2.PerformAckToDeviceMessagesRequest(
                    user_id=user_id, device_id=device_id, up_to_position=up_to
                ),
                timeout=CALL_TIMEOUT,
            ),
        )
        return reply.deleted

    async def stream_to_device(
        self, user_id: str, device_id: str, *, after: int = 0
    ) -> AsyncIterator[ToDeviceMessage]:
        """A local device's inbox, then new messages as they arrive."""
        call = self._accounts.StreamToDeviceMessages(
            accounts_pb2.StreamToDeviceMessagesRequest(
                user_id=user_id, device_id=device_id, after_position=after
            )
        )
        try:
            with self.guarded("accounts"):
                async for message in call:
                    yield _to_device(message)
        finally:
            call.cancel()

    # ------------------------------------------------------------ media

    async def upload(
        self,
        source: BinaryIO,
        *,
        content_type: str = "",
        upload_name: str = "",
        uploader: str = "",
        media_id: str = "",
    ) -> Uploaded:
        """Upload a file (read in chunks, never whole in memory); its ``mxc://`` URI."""

        async def requests() -> AsyncIterator[media_pb2.PerformUploadRequest]:
            yield media_pb2.PerformUploadRequest(
                start=media_pb2.UploadStart(
                    uploader=uploader,
                    content_type=content_type,
                    upload_name=upload_name,
                    media_id=media_id,
                )
            )
            while chunk := await asyncio.to_thread(source.read, CHUNK_BYTES):
                yield media_pb2.PerformUploadRequest(data=chunk)

        reply = await self._call("media", self._media.PerformUpload(requests(), timeout=600))
        return Uploaded(reply.mxc_uri, reply.media_id, reply.size, reply.sha256, reply.content_type)

    async def create_media(self, uploader: str = "") -> tuple[str, int]:
        """Reserve an ``mxc://`` URI to upload to later; (the URI, when the reservation lapses)."""
        reply = await self._call(
            "media",
            self._media.PerformCreateMedia(
                media_pb2.PerformCreateMediaRequest(uploader=uploader), timeout=CALL_TIMEOUT
            ),
        )
        return reply.mxc_uri, reply.unused_expires_at

    async def media_info(self, mxc_uri: str) -> MediaInfo:
        server_name, media_id = parse_mxc(mxc_uri)
        reply = await self._call(
            "media",
            self._media.QueryMedia(
                media_pb2.QueryMediaRequest(server_name=server_name, media_id=media_id),
                timeout=CALL_TIMEOUT,
            ),
        )
        if not reply.found:
            return MediaInfo(found=False)
        return MediaInfo(
            found=True,
            uploaded=reply.uploaded,
            remote=reply.remote,
            content_type=reply.content_type,
            content_disposition=reply.content_disposition,
            upload_name=reply.upload_name,
            size=reply.size,
            sha256=reply.sha256,
            uploader=reply.uploader,
            created_ts=reply.created_ts,
        )

    async def download(
        self,
        mxc_uri: str,
        *,
        thumbnail: tuple[int, int] | None = None,
        crop: bool = False,
        animated: bool = False,
        timeout_ms: int = 0,
        deadline: float = 3600.0,
    ) -> tuple[media_pb2.ContentHead, AsyncIterator[bytes]]:
        """Media (ours, or another server's fetched over federation) as (head, chunks).

        ``thumbnail``: (width, height) of a thumbnail instead (``crop`` to fill
        exactly); ``timeout_ms``: wait that long for content not yet uploaded.
        """
        server_name, media_id = parse_mxc(mxc_uri)
        call: Any
        if thumbnail is None:
            call = self._media.StreamContent(
                media_pb2.StreamContentRequest(
                    server_name=server_name,
                    media_id=media_id,
                    timeout_ms=timeout_ms,
                    allow_remote=True,
                ),
                timeout=deadline,
            )
        else:
            call = self._media.StreamThumbnail(
                media_pb2.StreamThumbnailRequest(
                    server_name=server_name,
                    media_id=media_id,
                    width=thumbnail[0],
                    height=thumbnail[1],
                    method=media_pb2.THUMBNAIL_METHOD_CROP
                    if crop
                    else media_pb2.THUMBNAIL_METHOD_SCALE,
                    animated=animated,
                    timeout_ms=timeout_ms,
                    allow_remote=True,
                ),
                timeout=deadline,
            )
        iterator = call.__aiter__()
        with self.guarded("media"):
            try:
                first = await iterator.__anext__()
            except StopAsyncIteration:
                raise MatrixError("M_UNKNOWN", "the media service sent no content") from None
        if not first.HasField("head"):
            call.cancel()
            raise MatrixError("M_UNKNOWN", "the media service sent no content")

        async def chunks() -> AsyncIterator[bytes]:
            try:
                if first.data:
                    yield first.data
                with self.guarded("media"):
                    async for chunk in iterator:
                        yield chunk.data
            finally:
                call.cancel()

        return first.head, chunks()


class Operator:
    """The operator's calls (``client.operator``): keys, delivery queues, diagnosis.

    Only the operator's certificate is admitted to most of them. They answer
    with the protobuf messages of docs/api.md.
    """

    def __init__(self, client: Client) -> None:
        self.client = client

    async def server_keys(self) -> dict[str, Any]:
        """Our own signed ``/_matrix/key/v2/server`` object."""
        stub = self.client.stub(keys_pb2_grpc.KeysStub)
        reply = await self.client._call(  # noqa: SLF001 - the client's own helper
            "keys", stub.QueryOwnServerKeys(keys_pb2.QueryOwnServerKeysRequest(), timeout=10)
        )
        return dict(_loads(reply.server_keys_json, {}))

    async def rotate_key(self) -> keys_pb2.PerformKeyRotationResponse:
        """Replace our signing key (the old one expires two seconds later)."""
        stub = self.client.stub(keys_pb2_grpc.KeysStub)
        return await self.client._call(  # noqa: SLF001
            "keys", stub.PerformKeyRotation(keys_pb2.PerformKeyRotationRequest(), timeout=30)
        )

    async def destinations(
        self, names: Sequence[str] = (), *, include_idle: bool = False, limit: int = 0
    ) -> sender_pb2.QueryDestinationsResponse:
        """The sender's per-destination queues (``mxfed destinations``)."""
        stub = self.client.stub(sender_pb2_grpc.SenderStub)
        return await self.client._call(  # noqa: SLF001
            "sender",
            stub.QueryDestinations(
                sender_pb2.QueryDestinationsRequest(
                    destinations=list(names), include_idle=include_idle, limit=limit
                ),
                timeout=10,
            ),
        )

    async def federation_report(
        self, server_name: str = "", room_ids: Sequence[str] = (), *, deadline: float = 120.0
    ) -> AsyncIterator[keys_pb2.QueryFederationReportResponse]:
        """``mxfed doctor``: each diagnosis step as it finishes, then the whole report."""
        stub = self.client.stub(keys_pb2_grpc.KeysStub)
        call = stub.QueryFederationReport(
            keys_pb2.QueryFederationReportRequest(server_name=server_name, room_ids=list(room_ids)),
            timeout=deadline,
        )
        try:
            with self.client.guarded("keys"):
                async for item in call:
                    yield item
        finally:
            call.cancel()


def parse_mxc(uri: str) -> tuple[str, str]:
    """(server name, media id) of ``mxc://server/id``."""
    if not uri.startswith("mxc://"):
        raise MatrixError("M_INVALID_PARAM", f"not an mxc:// URI: {uri!r}")
    server_name, _, media_id = uri[len("mxc://") :].partition("/")
    if not server_name or not media_id or "/" in media_id:
        raise MatrixError("M_INVALID_PARAM", f"not an mxc:// URI: {uri!r}")
    return server_name, media_id


def _to_device(message: accounts_pb2.ToDeviceMessage) -> ToDeviceMessage:
    return ToDeviceMessage(
        position=message.position,
        sender=message.sender,
        type=message.type,
        content=_loads(message.content_json, {}),
        origin=message.origin,
        message_id=message.message_id,
        received_ts=message.received_ts,
    )


def _stream_item(reply: events_pb2.StreamEventsResponse) -> StreamItem:
    kind = reply.WhichOneof("item")
    if kind == "event":
        return StreamItem(
            reply.position,
            event=Event.from_record(reply.event),
            relayed_for=reply.relayed_for,
            servers_before=tuple(reply.servers_before),
        )
    if kind == "typing":
        typing = reply.typing
        return StreamItem(
            reply.position, typing=Typing(typing.room_id, typing.user_id, typing.typing)
        )
    receipt = reply.receipt
    return StreamItem(
        reply.position,
        receipt=Receipt(
            receipt.room_id,
            receipt.user_id,
            receipt.receipt_type,
            receipt.event_id,
            _loads(receipt.data_json, {}),
        ),
    )


__all__ = ["Client", "parse_mxc"]
