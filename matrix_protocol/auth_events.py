"""Which state events an event must cite as its ``auth_events``.

Spec: https://spec.matrix.org/v1.19/server-server-api/#auth-events-selection

The create event cites nothing; from room v12 on the create
event is never cited (it is implied by the room ID).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matrix_protocol.events import StateKey
from matrix_protocol.room_versions import RoomVersion

CREATE = "m.room.create"
POWER_LEVELS = "m.room.power_levels"
MEMBER = "m.room.member"
JOIN_RULES = "m.room.join_rules"
THIRD_PARTY_INVITE = "m.room.third_party_invite"


def _auth_types_in_order(
    event_type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
    room_version: RoomVersion,
) -> list[StateKey]:
    if event_type == CREATE:
        return []
    wanted: list[StateKey] = []
    if room_version.create_event_in_auth_events:
        wanted.append((CREATE, ""))
    wanted.append((POWER_LEVELS, ""))
    wanted.append((MEMBER, sender))
    if event_type == MEMBER and isinstance(state_key, str):
        wanted.append((MEMBER, state_key))
        membership = content.get("membership")
        if membership in ("join", "invite", "knock"):
            wanted.append((JOIN_RULES, ""))
        if membership == "invite":
            third_party_invite = content.get("third_party_invite")
            if isinstance(third_party_invite, Mapping):
                signed = third_party_invite.get("signed")
                token = signed.get("token") if isinstance(signed, Mapping) else None
                if isinstance(token, str):
                    wanted.append((THIRD_PARTY_INVITE, token))
        if membership == "join" and room_version.restricted_join_rule:
            authoriser = content.get("join_authorised_via_users_server")
            if isinstance(authoriser, str):
                wanted.append((MEMBER, authoriser))
    return list(dict.fromkeys(wanted))


def auth_types_for_event(
    event_type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
    room_version: RoomVersion,
) -> set[StateKey]:
    """The ``(type, state_key)`` pairs an event of this shape may cite."""
    return set(_auth_types_in_order(event_type, sender, state_key, content, room_version))


def select_auth_event_ids(
    event_type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
    room_version: RoomVersion,
    current_state: Mapping[StateKey, str],
) -> list[str]:
    """The event IDs to put in ``auth_events`` when building an event locally.

    ``current_state`` maps ``(type, state_key)`` to the event ID in the state
    the new event is built on; pairs missing from it are skipped. The order is
    create, power levels, sender's membership, then the member-specific
    entries.
    """
    return [
        current_state[key]
        for key in _auth_types_in_order(event_type, sender, state_key, content, room_version)
        if key in current_state
    ]
