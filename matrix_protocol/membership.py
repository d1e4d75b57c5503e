"""Membership handshakes: make_*/send_* templates and events, invites, stripped state.

Spec: https://spec.matrix.org/v1.19/server-server-api/#joining-rooms,
#knocking-rooms, #inviting-to-a-room and #leaving-rooms-rejecting-invites
(make_*/send_* and v1/v2 invite), #pdus and #auth-events-selection of that page.

Pure: no I/O. Errors carry the Matrix errcode a remote server should get
(:class:`MembershipError`), so the services and the gateway map them without
guessing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import nacl.signing

from matrix_protocol.encoding import encode_base64
from matrix_protocol.event_ids import compute_event_id, room_id_from_create_event
from matrix_protocol.events import Event
from matrix_protocol.hashes import compute_reference_hash
from matrix_protocol.pdu_format import PduFormatError, check_pdu_format
from matrix_protocol.room_versions import EventFormat, RoomVersion
from matrix_protocol.server_names import is_valid_user_id, server_name_of
from matrix_protocol.signing import sign_event

MEMBER = "m.room.member"
CREATE = "m.room.create"
JOIN_AUTHORISER = "join_authorised_via_users_server"

# Kept from a template: what the resident decides. Everything else the
# caller sets (origin, origin_server_ts, hashes, signatures, v1/v2 event_id).
_TEMPLATE_DROPPED = ("signatures", "hashes", "unsigned", "event_id")

# [Synapse] default room state sent with invites and knocks.
INVITE_STATE_TYPES: tuple[str, ...] = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.canonical_alias",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.name",
    "m.room.topic",
)

# Keys of a stripped state event (C-S "stripped state").
_STRIPPED_KEYS = ("type", "state_key", "sender", "content")

JOIN_RULES_WITH_KNOCK = frozenset({"knock", "knock_restricted"})
RESTRICTED_JOIN_RULES = frozenset({"restricted", "knock_restricted"})


class MembershipError(ValueError):
    """Refused with ``errcode`` (and HTTP ``status``); ``extra`` goes into the error body."""

    def __init__(self, status: int, errcode: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.errcode = errcode
        self.message = message
        self.extra = extra


def invalid(message: str) -> MembershipError:
    return MembershipError(400, "M_INVALID_PARAM", message)


def forbidden(message: str) -> MembershipError:
    return MembershipError(403, "M_FORBIDDEN", message)


def incompatible_room_version(version: str) -> MembershipError:
    return MembershipError(
        400,
        "M_INCOMPATIBLE_ROOM_VERSION",
        f"Your homeserver does not support the features required to join this room (v{version})",
        room_version=version,
    )


# ---------------------------------------------------------------- resident side: templates


def event_references(events: Sequence[Event]) -> list[Any]:
    """``prev_events``/``auth_events`` entries for a new event citing ``events``.

    v1/v2 rooms cite ``[event_id, {"sha256": reference hash}]`` pairs; later
    versions cite plain IDs.
    """
    references: list[Any] = []
    for event in events:
        if event.room_version.event_format is EventFormat.V1:
            digest = compute_reference_hash(event.pdu, event.room_version)
            references.append([event.event_id, {"sha256": encode_base64(digest)}])
        else:
            references.append(event.event_id)
    return references


def build_template(
    room_version: RoomVersion,
    *,
    room_id: str,
    user_id: str,
    membership: str,
    prev_events: Sequence[Event],
    auth_events: Sequence[Event],
    depth: int,
    origin: str,
    origin_server_ts: int,
    content: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The unsigned ``m.room.member`` template a ``make_*`` answers with."""
    body = dict(content or {})
    body["membership"] = membership
    return {
        "room_id": room_id,
        "sender": user_id,
        "state_key": user_id,
        "type": MEMBER,
        "content": body,
        "prev_events": event_references(prev_events),
        "auth_events": event_references(auth_events),
        "depth": min(depth, room_version.max_depth),
        "origin": origin,
        "origin_server_ts": origin_server_ts,
    }


def supported_room_version_requested(room_version: str, ver: Iterable[str]) -> None:
    """make_join/make_knock: the caller must list the room's version in ``ver``."""
    if room_version not in set(ver):
        raise incompatible_room_version(room_version)


# ---------------------------------------------------------------- joining side: templates


def validate_template(
    template: Any, *, room_id: str, user_id: str, membership: str
) -> dict[str, Any]:
    """Check a ``make_*`` answer's event before signing it.

    Spec: https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1make_joinroomiduserid

    Returns a copy; raises :class:`MembershipError` (``M_BAD_JSON``) when
    the template is malformed, so the caller can try another server.
    """

    def bad(message: str) -> MembershipError:
        return MembershipError(502, "M_BAD_JSON", f"invalid make_{membership} template: {message}")

    if not isinstance(template, Mapping):
        raise bad("event is not an object")
    if template.get("room_id") != room_id:
        raise bad("room_id does not match")
    if template.get("sender") != user_id:
        raise bad("sender does not match")
    if template.get("state_key") != user_id:
        raise bad("state_key does not match")
    if template.get("type") != MEMBER:
        raise bad("type is not m.room.member")
    content = template.get("content")
    if not isinstance(content, Mapping) or content.get("membership") != membership:
        raise bad(f"content.membership is not {membership!r}")
    for key in ("prev_events", "auth_events"):
        if not isinstance(template.get(key), list):
            raise bad(f"{key} is not a list")
    depth = template.get("depth")
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
        raise bad("depth is not a non-negative integer")
    return copy.deepcopy(dict(template))


def build_event_from_template(
    template: Mapping[str, Any],
    room_version: RoomVersion,
    *,
    origin: str,
    origin_server_ts: int,
    signing_key: nacl.signing.SigningKey,
    key_id: str,
    extra_content: Mapping[str, Any] | None = None,
    event_id_localpart: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Fill in, hash and sign a validated template; returns ``(event_id, pdu)``.

    ``extra_content`` (displayname, reason...) is merged under the template's
    content; ``membership`` and ``join_authorised_via_users_server`` from the
    resident win. v1/v2 rooms need ``event_id_localpart`` for the event ID.
    """
    pdu = {key: value for key, value in template.items() if key not in _TEMPLATE_DROPPED}
    content = dict(extra_content or {})
    content.update(pdu.get("content") or {})
    pdu["content"] = content
    pdu["origin"] = origin
    pdu["origin_server_ts"] = origin_server_ts
    if room_version.event_format is EventFormat.V1:
        if not event_id_localpart:
            raise ValueError("v1/v2 rooms need an event ID localpart")
        pdu["event_id"] = f"${event_id_localpart}:{origin}"
    signed = sign_event(pdu, signing_key, origin, key_id, room_version)
    return compute_event_id(signed, room_version), signed


# ---------------------------------------------------------------- receiving send_* / invite


def check_membership_event(
    pdu: Any,
    room_version: RoomVersion,
    *,
    origin: str,
    room_id: str,
    event_id: str,
    membership: str,
    local_server: str | None = None,
) -> Event:
    """The basic checks of a ``send_join``/``send_leave``/``send_knock``/``invite`` body.

    Format for the room version, the event ID and room ID match the path,
    ``type`` is ``m.room.member``, ``content.membership`` is ``membership``,
    the sender is on ``origin``; ``state_key`` equals the sender — except for
    invites, whose ``state_key`` must be a user of ``local_server``.
    Signatures are the caller's (they need keys). Raises
    :class:`MembershipError` (400 ``M_INVALID_PARAM`` / ``M_BAD_JSON``).
    """
    if not isinstance(pdu, Mapping):
        raise MembershipError(400, "M_BAD_JSON", "the event must be a JSON object")
    try:
        check_pdu_format(pdu, room_version)
    except PduFormatError as error:
        raise MembershipError(400, "M_BAD_JSON", f"malformed event: {error}") from None
    try:
        computed = compute_event_id(pdu, room_version)
    except ValueError as error:
        raise invalid(str(error)) from None
    if computed != event_id:
        raise invalid("the event ID does not match the path")
    if pdu.get("room_id") != room_id:
        raise invalid("the room ID does not match the path")
    event = Event(pdu, room_version, computed)
    if event.type != MEMBER:
        raise invalid("not an m.room.member event")
    if event.membership != membership:
        raise invalid(f"membership is not {membership!r}")
    if server_name_of(event.sender) != origin:
        raise invalid("the sender is not on the requesting server")
    state_key = event.state_key
    if membership == "invite":
        if (
            not isinstance(state_key, str)
            or not is_valid_user_id(state_key)
            or server_name_of(state_key) != local_server
        ):
            raise invalid("the invited user is not on this server")
    elif state_key != event.sender:
        raise invalid("state_key is not the sender")
    return event


def check_user_on_server(user_id: str, server_name: str) -> None:
    """make_* ``userId`` must belong to the requesting server."""
    if not is_valid_user_id(user_id):
        raise MembershipError(400, "M_INVALID_PARAM", "invalid user ID")
    if server_name_of(user_id) != server_name:
        raise forbidden("the user is not on the requesting server")


# ---------------------------------------------------------------- room state with invites / knocks


def check_room_state_pdus(pdus: Any, room_version: RoomVersion, room_id: str) -> list[Event]:
    """Check ``invite_room_state``/``knock_room_state`` entries.

    Spec: https://spec.matrix.org/v1.19/server-server-api/#put_matrixfederationv2inviteroomideventid

    Every entry must be a PDU of the room version, of the room, and the
    room's ``m.room.create`` must be there (for v12 the room ID is computed
    from it). Signatures are the caller's. Raises :class:`MembershipError`.
    """
    if not isinstance(pdus, list):
        raise invalid("room state must be a list of events")
    events: list[Event] = []
    for pdu in pdus:
        if not isinstance(pdu, Mapping):
            raise invalid("room state entries must be objects")
        try:
            check_pdu_format(pdu, room_version)
            event_id = compute_event_id(pdu, room_version)
        except (PduFormatError, ValueError) as error:
            raise invalid(f"room state entry is not a valid PDU: {error}") from None
        event = Event(pdu, room_version, event_id)
        if not event.is_state:
            raise invalid("room state entries must be state events")
        entry_room: str | None
        if event.type == CREATE and room_version.room_id_from_create_event:
            entry_room = room_id_from_create_event(pdu, room_version)
        else:
            entry_room = pdu.get("room_id")
        if entry_room != room_id:
            raise invalid("a room state entry belongs to another room")
        events.append(event)
    if not any(event.type == CREATE and event.state_key == "" for event in events):
        raise invalid("room state must include the m.room.create event")
    return events


def stripped_state(events: Iterable[Event | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The C-S stripped state form (``type``, ``state_key``, ``sender``, ``content``)."""
    stripped = []
    for event in events:
        pdu = event.pdu if isinstance(event, Event) else event
        if not isinstance(pdu, Mapping) or "state_key" not in pdu:
            continue
        stripped.append({key: pdu[key] for key in _STRIPPED_KEYS if key in pdu})
    return stripped


# ---------------------------------------------------------------- restricted rooms


def restricted_allow_rooms(join_rules_content: Mapping[str, Any]) -> list[str]:
    """Room IDs of the ``m.room_membership`` allow conditions (others are unknown to us)."""
    allow = join_rules_content.get("allow")
    rooms: list[str] = []
    if isinstance(allow, list):
        for condition in allow:
            if (
                isinstance(condition, Mapping)
                and condition.get("type") == "m.room_membership"
                and isinstance(condition.get("room_id"), str)
            ):
                rooms.append(condition["room_id"])
    return rooms
