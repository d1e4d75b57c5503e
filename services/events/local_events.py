"""Events built here: room creation, events sent by local users, room aliases.

Spec: https://spec.matrix.org/v1.19/server-server-api/#auth-events-selection and
https://spec.matrix.org/v1.19/server-server-api/#adding-hashes-and-signatures-to-outgoing-events;
[Synapse] up to 10 most recent forward extremities as ``prev_events``, depth =
max prev depth + 1. Every event built here goes
through the same :class:`RoomBatch` path as received ones; anything that does
not pass auth against the current state is refused with M_FORBIDDEN and not
stored.

In a room that uses a policy server
(https://spec.matrix.org/v1.19/server-server-api/#asking-for-a-policy-server-signature-on-an-event)
an event is built on the room's head, then the room's lock is let go while
the policy server is asked to sign it (:mod:`services.events.policy`), and
the signed event is stored in a second transaction; a refusal or an
unavailable policy server reaches the caller as a typed error and nothing is
stored or sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from matrix_protocol.auth_events import select_auth_event_ids
from matrix_protocol.canonical_json import CanonicalJsonError, validate_canonical_json
from matrix_protocol.encoding import encode_base64
from matrix_protocol.event_ids import event_id_of_reference_json, room_id_from_create_event
from matrix_protocol.events import Event
from matrix_protocol.hashes import compute_reference_hash
from matrix_protocol.pdu_format import PduFormatError, PduTooLarge, check_pdu_format
from matrix_protocol.policy_servers import PolicyServer, needs_policy_signature
from matrix_protocol.room_versions import (
    DEFAULT_ROOM_VERSION,
    EventFormat,
    RoomVersion,
    UnsupportedRoomVersion,
    room_version,
)
from matrix_protocol.server_names import is_valid_room_alias, is_valid_user_id
from matrix_protocol.signing import sign_event, sign_new_event
from mxfed import tracing
from mxfed.clock import now_ms
from mxfed.identity_files import ServerSigningKey
from mxfed.service_errors import BadRequest, Conflict, Forbidden, NotFound, Unavailable
from services.events import metrics, storage
from services.events.cache import LruCache
from services.events.policy import PolicyServers, PolicyServerUnavailable
from services.events.room_batch import RoomBatch, RoomsCore, StaleHead
from services.events.storage import RoomHead, Status

log = logging.getLogger(__name__)

_ROOM_ID_ALPHABET = string.ascii_letters + string.digits


# Sends into one room written together at most (one database transaction).
MAX_SEND_GROUP = 100
# Rooms whose groups of sends share one database transaction at most (their locks are
# held until its commit).
MAX_ROOMS_TOGETHER = 32
# Sends into one room at most for its group to open on a kept head (the checked insert
# takes few events per room).
MAX_CHECKED_GROUP = storage.INSERT_FEW_AT_MOST
# Rooms whose head this process keeps from its last local send (the room ids are callers').
ROOM_HEADS_KEPT = 10_000


@dataclass
class _Send:
    """A local send waiting for its room's writer."""

    sender: str
    event_type: str
    state_key: str | None
    content: Mapping[str, Any]
    redacts: str
    txn_id: str
    reply: asyncio.Future[tuple[str, int]]

    @property
    def needs_no_state_group(self) -> bool:
        """Whether its event leaves the room's state as it is (neither a state event nor
        a redaction), so it may be built on a head this process kept."""
        return self.state_key is None and self.event_type != "m.room.redaction"


class _Stages:
    """Where a local send's time goes (:data:`metrics.LOCAL_SEND_STAGE_SECONDS`): each
    :meth:`mark` ends a stage begun at the one before."""

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        metrics.LOCAL_SEND_STAGE_SECONDS.labels(stage).observe(now - self._last)
        self._last = now


class _NotTogether(Exception):
    """A group of sends that must go one at a time (a policy server signs each)."""


# Per send of a group: its event id, and whether it was sent before (its position as
# stored then).
_Outcomes = list[tuple[str, bool, int | None]]
# A group written: its room's batch, its sends' outcomes, its stages from the commit on.
_Written = tuple[RoomBatch, _Outcomes, _Stages]


@dataclass
class _Group:
    """A room's group of sends waiting for the next transaction of groups
    (:meth:`LocalEvents._write_groups`), and what it is told once that committed: the
    batch with, per send, its event id and whether it was sent before (its position as
    stored), or why the group was not written."""

    sends: Sequence[_Send]
    written: asyncio.Future[_Written]


@dataclass
class CreateRoomRequest:
    creator: str
    room_version: str = ""
    preset: str = ""
    name: str = ""
    topic: str = ""
    alias_localpart: str = ""
    invite: Sequence[str] = ()
    creation_content: Mapping[str, Any] = field(default_factory=dict)
    initial_state: Sequence[Mapping[str, Any]] = ()
    power_level_overrides: Mapping[str, Any] = field(default_factory=dict)
    additional_creators: Sequence[str] = ()


def default_power_levels(
    version: RoomVersion, creator: str, preset: str, invite: Sequence[str]
) -> dict[str, Any]:
    users: dict[str, int] = {}
    if not version.privileged_creators:
        users[creator] = 100
    if preset == "trusted_private_chat":
        for user in invite:
            users.setdefault(user, 100)
    return {
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 50 if preset == "public_chat" else 0,
        "historical": 100,
    }


class LocalEvents:
    def __init__(
        self,
        pool: asyncpg.Pool,
        core: RoomsCore,
        signing_key: Callable[[], ServerSigningKey],
        policy: PolicyServers | None = None,
    ) -> None:
        self.pool = pool
        self.core = core
        self.server_name = core.server_name
        self.signing_key = signing_key
        self.policy = policy
        # Per room: sends waiting for the room's writer task, and that task.
        self._waiting: dict[str, list[_Send]] = {}
        self._writers: dict[str, asyncio.Task[Any]] = {}
        self._replying: set[asyncio.Task[None]] = set()  # written groups awaiting positions
        # Rooms' groups waiting for the next transaction of groups, and its writer task.
        self._groups: dict[str, _Group] = {}
        self._group_writer: asyncio.Task[None] | None = None
        # Per room: its head as this process's last send into it left it. Sends open on
        # it without a round trip; their write checks it is still the room's.
        self._heads: LruCache[str, RoomHead] = LruCache("events_local_room_heads", ROOM_HEADS_KEPT)

    def _require_local_user(self, user_id: str) -> None:
        if not is_valid_user_id(user_id) or user_id.split(":", 1)[1] != self.server_name:
            raise Forbidden(f"{user_id!r} is not a user of this server")

    # ------------------------------------------------------------ building

    def build(
        self,
        batch_or_version: RoomBatch | RoomVersion,
        room_id: str | None,
        event_type: str,
        sender: str,
        state_key: str | None,
        content: Mapping[str, Any],
        redacts: str | None = None,
    ) -> tuple[Event, dict[str, Any]]:
        """A signed event on top of the batch's room head (or a create event)."""
        if isinstance(batch_or_version, RoomBatch):
            batch = batch_or_version
            version = batch.version
            prev_ids, depth = batch.prev_events_for_new_event()
            current = batch.current.state if batch.current else {}
            auth_ids = select_auth_event_ids(
                event_type, sender, state_key, content, version, current
            )
            known = {**batch.pending}
        else:
            version, prev_ids, depth, auth_ids, known = batch_or_version, [], 1, [], {}
        content = dict(content)
        pdu: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "content": content,
            "depth": depth,
            "origin_server_ts": now_ms(),
        }
        if room_id is not None:
            pdu["room_id"] = room_id
        if state_key is not None:
            pdu["state_key"] = state_key
        if redacts is not None:
            if version.redacts_in_content:
                content["redacts"] = redacts
            else:
                pdu["redacts"] = redacts
        if version.event_format is EventFormat.V1:
            pdu["event_id"] = f"${secrets.token_urlsafe(18)}:{self.server_name}"
            pdu["prev_events"] = [self._v1_reference(i, known, version) for i in prev_ids]
            pdu["auth_events"] = [self._v1_reference(i, known, version) for i in auth_ids]
        else:
            pdu["prev_events"] = prev_ids
            pdu["auth_events"] = auth_ids
        key = self.signing_key()
        try:
            if version.strict_canonical_json:
                # Checked once, then encoded once for the signature and the event ID.
                try:
                    validate_canonical_json(pdu)
                except CanonicalJsonError as error:
                    raise PduFormatError(f"not canonical JSON: {error}") from None
                signed, reference = sign_new_event(
                    pdu, key.signing_key, self.server_name, key.key_id, version
                )
                event = Event(signed, version, event_id_of_reference_json(reference, version))
            else:
                signed = sign_event(pdu, key.signing_key, self.server_name, key.key_id, version)
                event = Event.from_pdu(signed, version)
            # Our events obey the same limits as everyone's (size, canonical JSON, ids).
            check_pdu_format(signed, version, validated=version.strict_canonical_json)
        except PduTooLarge as error:
            raise BadRequest(f"the event is not valid: {error}", "M_TOO_LARGE") from None
        except PduFormatError as error:
            raise BadRequest(f"the event is not valid: {error}", "M_BAD_JSON") from None
        return event, signed

    def _v1_reference(
        self, event_id: str, known: Mapping[str, Any], version: RoomVersion
    ) -> list[Any]:
        stored = known.get(event_id) or self.core.event_cache.get(event_id)
        digest = compute_reference_hash(stored.event.pdu, version) if stored else b""
        return [event_id, {"sha256": encode_base64(digest)}]

    async def _add(
        self,
        batch: RoomBatch,
        event_type: str,
        sender: str,
        state_key: str | None,
        content: Mapping[str, Any],
        redacts: str | None = None,
    ) -> Event:
        event, pdu = self.build(
            batch, batch.room_id, event_type, sender, state_key, content, redacts
        )
        return await self._store(batch, event, pdu)

    async def _store(
        self,
        batch: RoomBatch,
        event: Event,
        pdu: Mapping[str, Any],
        policy_signed_by: PolicyServer | None = None,
    ) -> Event:
        outcome = await batch.add_local(event, pdu, policy_signed_by=policy_signed_by)
        if outcome.status is not Status.ACCEPTED:
            raise Forbidden(outcome.error or "not allowed")
        metrics.LOCAL_EVENTS.labels(event.type).inc()
        tracing.note_event(event.event_id)  # its delivery joins this trace (when tracing)
        return event

    # ------------------------------------------------------------ policy servers

    async def policy_server_for(self, batch: RoomBatch, event: Event) -> PolicyServer | None:
        """The policy server whose signature ``event`` needs before it is stored, if any."""
        if not needs_policy_signature(event.type, event.state_key):
            return None
        return await batch.policy_server()

    async def policy_sign(
        self, policy: PolicyServer, event: Event, pdu: dict[str, Any]
    ) -> tuple[Event, dict[str, Any]]:
        """``event`` signed by the room's policy server (call without holding the room's lock).

        Raises the policy server's refusal or unavailability as typed errors.
        """
        if self.policy is None:
            raise PolicyServerUnavailable("this process cannot reach policy servers")
        return await self.policy.sign(policy, event, pdu)

    # ------------------------------------------------------------ rooms

    async def create_room(self, request: CreateRoomRequest) -> tuple[str, str]:
        creator = request.creator
        self._require_local_user(creator)
        try:
            version = room_version(request.room_version or DEFAULT_ROOM_VERSION)
        except UnsupportedRoomVersion as error:
            raise BadRequest(str(error), "M_UNSUPPORTED_ROOM_VERSION") from None
        for user in request.invite:
            if not is_valid_user_id(user):
                raise BadRequest(f"invalid user id {user!r}")

        create_content: dict[str, Any] = dict(request.creation_content)
        create_content["room_version"] = version.identifier
        if not version.creator_is_sender:
            create_content["creator"] = creator
        if request.additional_creators:
            if not version.privileged_creators:
                raise BadRequest("additional_creators needs room version 12 or later")
            create_content["additional_creators"] = list(request.additional_creators)
        if version.room_id_from_create_event:
            create, create_pdu = self.build(
                version, None, "m.room.create", creator, "", create_content
            )
            room_id = room_id_from_create_event(create_pdu, version)
        else:
            room_id = "!" + "".join(secrets.choice(_ROOM_ID_ALPHABET) for _ in range(18))
            room_id += f":{self.server_name}"
            create, create_pdu = self.build(
                version, room_id, "m.room.create", creator, "", create_content
            )

        alias = f"#{request.alias_localpart}:{self.server_name}" if request.alias_localpart else ""
        if alias and not is_valid_room_alias(alias):
            raise BadRequest(
                f"invalid alias localpart {request.alias_localpart!r}: give the part between "
                "'#' and ':' (no ':', at most 255 bytes in all)",
                "M_INVALID_PARAM",
            )
        preset = request.preset or "private_chat"
        plan: list[tuple[str, str | None, Mapping[str, Any]]] = [
            ("m.room.member", creator, {"membership": "join"}),
        ]
        power_levels = default_power_levels(version, creator, preset, request.invite)
        power_levels.update(request.power_level_overrides)
        plan.append(("m.room.power_levels", "", power_levels))
        if alias:
            plan.append(("m.room.canonical_alias", "", {"alias": alias}))
        plan.append(
            (
                "m.room.join_rules",
                "",
                {"join_rule": "public" if preset == "public_chat" else "invite"},
            )
        )
        plan.append(("m.room.history_visibility", "", {"history_visibility": "shared"}))
        plan.append(
            (
                "m.room.guest_access",
                "",
                {"guest_access": "forbidden" if preset == "public_chat" else "can_join"},
            )
        )
        if request.name:
            plan.append(("m.room.name", "", {"name": request.name}))
        if request.topic:
            plan.append(("m.room.topic", "", {"topic": request.topic}))
        for entry in request.initial_state:
            if not isinstance(entry.get("type"), str) or not isinstance(
                entry.get("content"), Mapping
            ):
                raise BadRequest("initial_state entries need 'type' and 'content'")
            state_key = entry.get("state_key", "")
            if not isinstance(state_key, str):
                raise BadRequest("initial_state state_key must be a string")
            plan.append((entry["type"], state_key, entry["content"]))
        for user in request.invite:
            plan.append(("m.room.member", user, {"membership": "invite"}))

        async with self.pool.acquire() as conn, conn.transaction():
            if not await storage.insert_room(conn, room_id, version.identifier):
                raise Conflict("room id already exists")
            if alias and not await storage.create_alias(
                conn, alias, room_id, creator, [self.server_name]
            ):
                raise Conflict(f"alias {alias} is taken")
            batch = RoomBatch(self.core, conn, room_id)
            await batch.open(len(plan) + 1)
            outcome = await batch.add_local(create, create_pdu)
            if outcome.status is not Status.ACCEPTED:
                raise Forbidden(outcome.error or "create event refused")
            for event_type, state_key, content in plan:
                await self._add(batch, event_type, creator, state_key, content)
            await batch.write()
        await batch.committed()
        return room_id, alias

    async def send_event(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        state_key: str | None,
        content: Mapping[str, Any],
        redacts: str = "",
        txn_id: str = "",
        *,
        together: bool = False,
    ) -> tuple[str, int]:
        """Send an event as a local user; (event id, stream position).

        A send goes alone (:meth:`_write_first`) only while no other local send is being
        written here: one that comes while any is waits, then goes as its room's group
        (:meth:`_write_room`: the sends into that room meanwhile, built one after another
        on the room's head), in one database transaction with the groups of the other
        rooms that wait at that moment (:meth:`_write_groups`): a bridge's many senders in
        many rooms cost one BEGIN, head read and commit per transaction of groups, not
        per event or room, and the more sends come, the more each transaction takes
        (sends spread over idle rooms went each alone, all at once: at 500 sends/s over
        ten rooms, call p50 33 → 14 ms in ``bench/bench_local_sends.py``).
        ``together``: the caller made other sends at the same moment (a message of
        StreamSendEvents), so even the first into a room nobody writes waits for
        them in a writer task instead of going alone.
        """
        self._require_local_user(sender)
        if event_type == "m.room.redaction" and not redacts:
            redacts = content.get("redacts", "") if isinstance(content.get("redacts"), str) else ""
            if not redacts:
                raise BadRequest("a redaction needs 'redacts'")
        send = _Send(
            sender,
            event_type,
            state_key,
            content,
            redacts,
            txn_id,
            asyncio.get_running_loop().create_future(),
        )
        if not self._writers and not together:
            return await self._write_first(room_id, send)
        self._waiting.setdefault(room_id, []).append(send)
        if room_id in self._writers:
            metrics.LOCAL_SENDS_WAITING.inc()
        else:
            self._writers[room_id] = asyncio.create_task(
                self._write_room(room_id), name="events:local-sends"
            )
        return await send.reply

    async def _write_first(self, room_id: str, send: _Send) -> tuple[str, int]:
        """A send while no other local send is being written: written by its own call (a
        writer task to start and to answer through cost two turns of the event loop).
        Sends into its room that come meanwhile wait, then go together in a writer task,
        started once this one's transaction is over (not after its stream round); those
        into other rooms go as their rooms' groups (:meth:`send_event`)."""
        task = asyncio.current_task()
        assert task is not None
        self._writers[room_id] = task
        metrics.LOCAL_SEND_GROUPS.observe(1)
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            del self._writers[room_id]
            if self._waiting.get(room_id):
                self._writers[room_id] = asyncio.create_task(
                    self._write_room(room_id), name="events:local-sends"
                )

        try:
            return await self._send_alone(room_id, send, release)
        finally:
            release()

    async def _write_room(self, room_id: str) -> None:
        """Write the room's waiting sends, a group at a time, until none is left."""
        group: list[_Send] = []  # the sends being written
        try:
            while True:
                waiting = [s for s in self._waiting.pop(room_id, []) if not s.reply.done()]
                if not waiting:
                    return
                group, rest = waiting[:MAX_SEND_GROUP], waiting[MAX_SEND_GROUP:]
                if rest:
                    self._waiting[room_id] = rest
                metrics.LOCAL_SENDS_WAITING.set(sum(len(w) for w in self._waiting.values()))
                metrics.LOCAL_SEND_GROUPS.observe(len(group))
                try:
                    finish = await self._send_group(room_id, group)
                except _NotTogether:
                    pass
                except Exception as error:  # noqa: BLE001 - each send alone says which failed
                    log.info(
                        "local sends written together failed; each goes alone",
                        extra={"room_id": room_id, "sends": len(group), "error": str(error)},
                    )
                else:
                    # The next group is written while this one's stream positions are
                    # given (the room's lock went with the commit).
                    task = asyncio.create_task(self._reply(group, finish))
                    self._replying.add(task)
                    task.add_done_callback(self._replying.discard)
                    group = []
                    continue
                for send in group:
                    try:
                        result = await self._send_alone(room_id, send)
                    except Exception as error:  # noqa: BLE001 - the caller's to handle
                        if not send.reply.done():
                            send.reply.set_exception(error)
                    else:
                        if not send.reply.done():
                            send.reply.set_result(result)
                group = []
        finally:
            del self._writers[room_id]
            # Cancelled (the service stops): nobody is left waiting forever.
            for send in [*group, *self._waiting.pop(room_id, [])]:
                if not send.reply.done():
                    send.reply.set_exception(Unavailable("the events service is stopping"))

    @staticmethod
    async def _reply(group: Sequence[_Send], finish: Awaitable[list[tuple[str, int]]]) -> None:
        try:
            results = await finish
        except Exception as error:  # noqa: BLE001 - stored, but their positions are not known
            for send in group:
                if not send.reply.done():
                    send.reply.set_exception(error)
            return
        for send, result in zip(group, results, strict=True):
            if not send.reply.done():
                send.reply.set_result(result)

    async def _send_group(
        self, room_id: str, group: Sequence[_Send]
    ) -> Awaitable[list[tuple[str, int]]]:
        """Several sends in one transaction, in order (each on the one before), with the
        groups of other rooms that wait at the same moment (:meth:`_write_groups`); once it
        committed, what gives their (event id, stream position) results. Raises
        :class:`_NotTogether` for a room that uses a policy server, and any send's error
        (nothing of this room is stored then)."""
        waiting = _Group(group, asyncio.get_running_loop().create_future())
        self._groups[room_id] = waiting
        metrics.LOCAL_SEND_GROUPS_WAITING.set(len(self._groups))
        if self._group_writer is None:
            self._group_writer = asyncio.create_task(
                self._write_groups(), name="events:local-send-groups"
            )
        return self._results(*await waiting.written)

    async def _write_groups(self) -> None:
        """Write the rooms' waiting groups until none is left, all those waiting at once
        (up to :data:`MAX_ROOMS_TOGETHER` rooms) in one database transaction
        (:meth:`_write_rooms`): rooms written together share its BEGIN with their locks,
        head read, insert and commit. One such transaction at a time; the groups that
        come meanwhile go in the next."""
        groups: dict[str, _Group] = {}
        try:
            while self._groups:
                # One turn of the event loop: room writers ready at this moment join.
                await asyncio.sleep(0)
                rooms = list(self._groups)[:MAX_ROOMS_TOGETHER]
                groups = {room_id: self._groups.pop(room_id) for room_id in rooms}
                metrics.LOCAL_SEND_GROUPS_WAITING.set(len(self._groups))
                try:
                    written = await self._write_rooms(
                        {room_id: group.sends for room_id, group in groups.items()}
                    )
                except Exception as error:  # noqa: BLE001 - each room's writer handles it
                    written = dict.fromkeys(groups, error)
                for room_id, group in groups.items():
                    outcome = written[room_id]
                    if group.written.done():
                        continue
                    if isinstance(outcome, Exception):
                        group.written.set_exception(outcome)
                    else:
                        group.written.set_result(outcome)
                groups = {}
        finally:
            self._group_writer = None
            # Cancelled (the service stops): no room's writer is left waiting forever.
            for group in [*groups.values(), *self._groups.values()]:
                if not group.written.done():
                    group.written.set_exception(Unavailable("the events service is stopping"))
            self._groups = {}
            metrics.LOCAL_SEND_GROUPS_WAITING.set(0)

    async def _write_rooms(
        self, groups: Mapping[str, Sequence[_Send]]
    ) -> dict[str, _Written | Exception]:
        """Rooms' groups of sends in one database transaction: per room, its batch with
        each send's outcome (:class:`_Group`), or why nothing of that room was stored
        (unknown room, a send refused, :class:`_NotTogether`); the other rooms' sends are
        stored all the same.

        Rooms whose head this process kept are opened on it, their groups built without
        a round trip for their heads; if any of those heads moved (another writer, or a
        transaction id used before), nothing is stored and all go again on heads read
        under the locks."""
        kept = self._kept_heads(groups)
        while True:
            try:
                return await self._write_rooms_on(groups, kept)
            except StaleHead:
                metrics.LOCAL_SEND_STALE_HEADS.inc()
                for room_id in kept:
                    self._heads.pop(room_id)
                kept = {}

    def _kept_heads(self, groups: Mapping[str, Sequence[_Send]]) -> dict[str, RoomHead]:
        """The kept heads the rooms' groups may open on: those of groups that need no new
        state group (no state events, no redactions), when every group is small enough for
        the checked insert."""
        if any(len(group) > MAX_CHECKED_GROUP for group in groups.values()):
            return {}
        kept = {}
        for room_id, group in groups.items():
            head = self._heads.get(room_id)
            if head is not None and all(send.needs_no_state_group for send in group):
                kept[room_id] = head
        return kept

    async def _write_rooms_on(
        self, groups: Mapping[str, Sequence[_Send]], kept: Mapping[str, RoomHead]
    ) -> dict[str, _Written | Exception]:
        """:meth:`_write_rooms` with ``kept`` heads; raises :class:`StaleHead` (nothing
        stored) if one of them moved, or a send was refused on one (which may predate a
        join written elsewhere: only the head read can refuse)."""
        stages = _Stages()
        written: dict[str, tuple[RoomBatch, _Outcomes]] = {}
        refused: dict[str, Exception] = {}
        local_transactions: dict[str, list[tuple[str, str, str]]] = {}
        async with RoomBatch.together(
            self.core,
            self.pool,
            dict.fromkeys(groups, ()),
            streamed=True,
            local_sends={
                room_id: [(send.sender, send.txn_id) for send in group]
                for room_id, group in groups.items()
            },
            known_heads=kept,
        ) as batches:
            stages.mark("room_open")
            for room_id, group in groups.items():
                batch = batches.get(room_id)
                if batch is None:
                    refused[room_id] = NotFound(f"unknown room {room_id}")
                    continue
                try:
                    outcome, fresh = await self._build_group(batch, group)
                except Exception as error:  # noqa: BLE001 - that room's writer handles it
                    if isinstance(error, Forbidden) and room_id in kept:
                        raise StaleHead(room_id) from None
                    refused[room_id] = error
                    continue
                written[room_id] = (batch, outcome)
                local_transactions[room_id] = [
                    (sender, txn, sent) for (sender, txn), sent in fresh.items()
                ]
            stages.mark("build")
            await RoomBatch.write_together(
                [batch for batch, _ in written.values()], local_transactions
            )
            stages.mark("write")
        stages.mark("commit")
        for batch, _ in written.values():
            self._keep_head(batch)
        # Each room's stream round is timed from the commit (its own stages from here).
        return {
            **{room_id: (*room, _Stages()) for room_id, room in written.items()},
            **refused,
        }

    async def _build_group(
        self, batch: RoomBatch, group: Sequence[_Send]
    ) -> tuple[_Outcomes, dict[tuple[str, str], str]]:
        """The group's events built and added to ``batch`` one after another: per send its
        event id and whether it was sent before (its position as stored), and the
        transaction ids this group used first → their event ids."""
        fresh: dict[tuple[str, str], str] = {}
        outcome: _Outcomes = []
        done = batch.sent_before
        for send in group:
            key = (send.sender, send.txn_id)
            if send.txn_id and key in done:
                outcome.append((done[key][0], True, done[key][1]))
                continue
            if send.txn_id and key in fresh:
                outcome.append((fresh[key], False, None))
                continue
            event, pdu = self.build(
                batch,
                batch.room_id,
                send.event_type,
                send.sender,
                send.state_key,
                send.content,
                send.redacts or None,
            )
            if await self.policy_server_for(batch, event) is not None:
                raise _NotTogether
            await self._store(batch, event, pdu)
            if send.txn_id:
                fresh[key] = event.event_id
            outcome.append((event.event_id, False, None))
        return outcome, fresh

    async def _results(
        self, batch: RoomBatch, outcome: Sequence[tuple[str, bool, int | None]], stages: _Stages
    ) -> list[tuple[str, int]]:
        await batch.committed()
        stages.mark("stream_round")
        results = []
        for event_id, sent_before, position in outcome:
            if sent_before:
                results.append(await self._repeated(event_id, position))
            else:
                results.append((event_id, batch.positions.get(event_id, 0)))
        return results

    async def _send_alone(
        self, room_id: str, send: _Send, written: Callable[[], None] | None = None
    ) -> tuple[str, int]:
        """One send in a transaction of its own; ``written`` is called once that is over
        (before the stream round its answer waits for)."""
        sender, event_type, state_key, content = (
            send.sender,
            send.event_type,
            send.state_key,
            send.content,
        )
        redacts, txn_id = send.redacts, send.txn_id
        # Built on the room's head; in a room that uses a policy server the
        # transaction ends without writing, the policy server signs (the
        # room's lock let go meanwhile), and a second one stores the signed event.
        signed: tuple[Event, dict[str, Any], PolicyServer] | None = None
        stages = _Stages()
        # Events that need no new state group may open on the head kept from the last send.
        may_use_kept = send.needs_no_state_group
        while True:
            to_sign: tuple[Event, dict[str, Any], PolicyServer] | None = None
            kept = self._heads.get(room_id) if may_use_kept and signed is None else None
            try:
                async with self._room(room_id, [send], kept) as (batch, sent_before):
                    stages.mark("room_open")
                    done = sent_before.get((sender, txn_id)) if txn_id else None
                    if done is None:
                        if signed is None:
                            event, pdu = self.build(
                                batch,
                                room_id,
                                event_type,
                                sender,
                                state_key,
                                content,
                                redacts or None,
                            )
                            stages.mark("build")
                            policy = await self.policy_server_for(batch, event)
                            if policy is not None:
                                if kept is not None:
                                    # Signed, it is stored as built: build it on a head read.
                                    raise StaleHead(room_id)
                                to_sign = (event, pdu, policy)
                            elif kept is not None:
                                try:
                                    await self._store(batch, event, pdu)
                                except Forbidden:
                                    # Refused on a kept head, which may predate a join
                                    # written elsewhere: only the head read can refuse.
                                    raise StaleHead(room_id) from None
                            else:
                                await self._store(batch, event, pdu)
                        else:
                            event, pdu, policy = signed
                            await self._store(batch, event, pdu, policy)
                        if to_sign is None:
                            stages.mark("store")
                            await batch.write([(sender, txn_id, event.event_id)] if txn_id else [])
                            stages.mark("write")
            except StaleHead:
                # Another writer moved the head (or a transaction id was used): again, on
                # the head read under the lock.
                metrics.LOCAL_SEND_STALE_HEADS.inc()
                self._heads.pop(room_id)
                may_use_kept = False
                continue
            except BaseException:
                self._heads.pop(room_id)
                raise
            if done is None and to_sign is None and signed is None:
                # Not in a room using a policy server: the next send there would build
                # on the kept head only to find it needs the signature first.
                self._keep_head(batch)
            if done is not None:
                if written is not None:
                    written()
                return await self._repeated(*done)
            if to_sign is None:
                stages.mark("commit")
                if written is not None:
                    written()
                await batch.committed()
                stages.mark("stream_round")
                return event.event_id, batch.positions.get(event.event_id, 0)
            event, pdu, policy = to_sign
            event, pdu = await self.policy_sign(policy, event, pdu)
            stages.mark("policy_server")
            signed = (event, pdu, policy)

    def _keep_head(self, batch: RoomBatch) -> None:
        """After a commit: the room's head as ``batch`` left it, for the next send."""
        head = batch.known_head()
        if head is None:
            self._heads.pop(batch.room_id)
        else:
            self._heads.put(batch.room_id, head)

    @contextlib.asynccontextmanager
    async def _room(
        self, room_id: str, sends: Sequence[_Send], kept: RoomHead | None = None
    ) -> AsyncIterator[tuple[RoomBatch, Mapping[tuple[str, str], tuple[str, int | None]]]]:
        """A transaction on the room for ``sends``: the batch opened on the room's head, and
        which of their transaction ids were used before (event id, position). Begun in two
        round trips: BEGIN with the room's lock, then the head with the sends' places in the
        stream queue and their transaction ids; on ``kept`` (a head this process kept), in
        none and with no transaction: the write is one statement that takes the lock and
        checks the head (:class:`StaleHead` if another writer moved it)."""
        async with RoomBatch.transaction(
            self.core,
            self.pool,
            room_id,
            len(sends),
            stream_orders=len(sends),
            local_transactions=[(s.sender, s.txn_id) for s in sends if s.txn_id],
            known_head=kept,
        ) as opened:
            if opened is None:
                raise NotFound(f"unknown room {room_id}")
            batch, head = opened
            yield batch, head.sent_before

    async def _repeated(self, event_id: str, position: int | None) -> tuple[str, int]:
        """A transaction id's event again, with its position (its round may not have run:
        the first call still waits for it, or its replica died after the commit)."""
        if position is None:
            position = (await self.core.stream_positions.assign([event_id])).get(event_id, 0)
        return event_id, position

    # ------------------------------------------------------------ aliases

    def _check_alias(self, alias: str) -> None:
        if not alias.startswith("#") or ":" not in alias:
            raise BadRequest(f"invalid alias {alias!r}")
        if alias.split(":", 1)[1] != self.server_name:
            raise BadRequest(f"alias {alias!r} is not on this server")

    async def create_alias(
        self, alias: str, room_id: str, creator: str, servers: Sequence[str]
    ) -> None:
        self._check_alias(alias)
        async with self.pool.acquire() as conn:
            if not await storage.get_rooms(conn, [room_id]):
                raise NotFound(f"unknown room {room_id}")
            if not await storage.create_alias(
                conn, alias, room_id, creator, list(servers) or [self.server_name]
            ):
                raise Conflict(f"alias {alias} already exists", "M_UNKNOWN")

    async def delete_alias(self, alias: str) -> None:
        self._check_alias(alias)
        async with self.pool.acquire() as conn:
            if not await storage.delete_alias(conn, alias):
                raise NotFound(f"alias {alias} not found")

    async def query_alias(self, alias: str) -> tuple[str, list[str]] | None:
        async with self.pool.acquire() as conn:
            row = await storage.get_alias(conn, alias)
            if row is None:
                return None
            servers = list(row["servers"])
            joined = await storage.joined_servers(conn, row["room_id"])
            return row["room_id"], list(dict.fromkeys([*servers, *joined]))
