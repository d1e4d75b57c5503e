"""The authorization rules of room versions 1–12.

Spec: https://spec.matrix.org/v1.19/rooms/v12/#authorisation-rules (the complete v12
rules) and the "Authorisation rules" section of each older room version
(https://spec.matrix.org/v1.19/rooms/v1/#authorisation-rules …
https://spec.matrix.org/v1.19/rooms/v11/#authorisation-rules).
Rule numbers in :class:`AuthError` messages follow the v12 rendering on
spec.matrix.org; rules that only older versions have are named ("v1–v5 aliases
rule", "v1/v2 redaction rule").

The rules are split in three pure functions:

* :func:`check_auth_events_structure` — rule 3 (the ``auth_events`` list
  itself: duplicates, unexpected types, wrong room, create event present in
  v1–v11 / absent in v12). Rule 3.3 ("an auth event was rejected") needs
  storage and is the caller's job.
* :func:`check_auth_rules` — everything else, against a state map.
* :func:`join_authorised_via_server` — rule 5.2 names a server whose
  signature the caller must check (signature checks need keys, so they are
  not done here).

The events service (its ``RoomBatch``) calls :func:`check_auth_rules` three
times for a received PDU (https://spec.matrix.org/v1.19/server-server-api/#checks-performed-on-receipt-of-a-pdu):

1. against the event's own ``auth_events`` (as a ``(type, state_key)`` map;
   for v12 the caller adds the create event, which is implied by the room ID
   and never listed) — failure ⇒ **reject**;
2. against the state before the event (resolved over its ``prev_events``) —
   failure ⇒ **reject**;
3. against the current state of the room — failure ⇒ **soft fail**.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matrix_protocol.auth_events import (
    CREATE,
    JOIN_RULES,
    MEMBER,
    POWER_LEVELS,
    THIRD_PARTY_INVITE,
    auth_types_for_event,
)
from matrix_protocol.events import Event, StateKey, server_of
from matrix_protocol.power_levels import (
    NAMED_LEVELS,
    PowerLevelError,
    named_power_level,
    parse_power_level,
    required_power_level,
    room_creators,
    user_power_level,
    validate_power_levels_content,
)
from matrix_protocol.room_versions import KNOWN_ROOM_VERSIONS
from matrix_protocol.server_names import is_valid_user_id
from matrix_protocol.third_party_invites import verify_third_party_invite_signed

ALIASES = "m.room.aliases"
REDACTION = "m.room.redaction"
JOIN_AUTHORISER = "join_authorised_via_users_server"


class AuthError(Exception):
    """The event is not allowed; ``rule`` names the rule that refused it."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"auth rule {rule}: {reason}")
        self.rule = rule
        self.reason = reason


def create_event_of(auth_state: Mapping[StateKey, Event]) -> Event | None:
    """The ``m.room.create`` event of a state map, if it has one."""
    return auth_state.get((CREATE, ""))


def membership_of(user_id: str, auth_state: Mapping[StateKey, Event]) -> str:
    """``user_id``'s membership in ``auth_state``; ``leave`` when absent."""
    member = auth_state.get((MEMBER, user_id))
    membership = member.membership if member is not None else None
    return membership if membership is not None else "leave"


def join_rule_of(auth_state: Mapping[StateKey, Event]) -> str:
    """The room's join rule; ``invite`` when there is no join rules event."""
    join_rules = auth_state.get((JOIN_RULES, ""))
    rule = join_rules.content.get("join_rule") if join_rules is not None else None
    return rule if isinstance(rule, str) else "invite"


def join_authorised_via_server(event: Event) -> str | None:
    """The server that must also have signed ``event`` (rule 5.2), if any.

    That is the server of ``content.join_authorised_via_users_server`` on an
    ``m.room.member`` event in a room version with restricted joins (v8+).
    A malformed value yields ``None`` here; :func:`check_auth_rules` rejects it.
    """
    if not event.room_version.restricted_join_rule or event.type != MEMBER:
        return None
    authoriser = event.content.get(JOIN_AUTHORISER)
    if isinstance(authoriser, str) and is_valid_user_id(authoriser):
        return server_of(authoriser)
    return None


def check_auth_events_structure(event: Event, auth_events: Sequence[Event]) -> None:
    """Rule 3: the events ``event`` cites as ``auth_events`` fit the selection rules.

    ``auth_events`` are the events whose IDs ``event`` lists (for v12 without
    the implied create event). Raises :class:`AuthError`.
    """
    version = event.room_version
    expected = auth_types_for_event(
        event.type, event.sender, event.state_key, event.content, version
    )
    seen: set[StateKey] = set()
    for auth_event in auth_events:
        if not auth_event.is_state:
            raise AuthError("3.2", f"auth event {auth_event.event_id} is not a state event")
        key = auth_event.state_tuple
        if key in seen:
            raise AuthError("3.1", f"duplicate auth event for {key}")
        seen.add(key)
        if key not in expected:
            raise AuthError("3.2", f"auth event {auth_event.event_id} {key} is not expected")
        if auth_event.room_id != event.room_id:
            raise AuthError("3.4", f"auth event {auth_event.event_id} is in another room")
    if event.type != CREATE and version.create_event_in_auth_events and (CREATE, "") not in seen:
        raise AuthError("3 (v1–v11)", "no m.room.create event among the auth events")


def check_auth_rules(event: Event, auth_state: Mapping[StateKey, Event]) -> None:
    """Apply the authorization rules of ``event``'s room version.

    ``auth_state`` maps ``(type, state_key)`` to the event to use for that
    key; for v12 it must contain the create event. Raises :class:`AuthError`.
    """
    if event.type == CREATE:
        _check_create(event)
        return
    create = create_event_of(auth_state)
    if create is None:
        raise AuthError("2", "no m.room.create event in the auth state")
    if event.room_version.room_id_from_create_event:
        if event.room_id != "!" + create.event_id[1:]:
            raise AuthError("2", "room_id is not derived from the create event")
    elif create.room_id != event.room_id:
        raise AuthError("3.4", "the m.room.create event is in another room")
    if create.content.get("m.federate") is False and server_of(event.sender) != server_of(
        create.sender
    ):
        raise AuthError("4", "the room does not federate with the sender's server")
    if event.room_version.special_case_aliases_auth and event.type == ALIASES:
        _check_aliases(event)
        return
    if event.type == MEMBER:
        _check_membership(event, auth_state, create)
        return
    if membership_of(event.sender, auth_state) != "join":
        raise AuthError("6", "the sender is not joined to the room")

    power_levels = auth_state.get((POWER_LEVELS, ""))
    sender_level = user_power_level(event.sender, power_levels, create)
    if event.type == THIRD_PARTY_INVITE:
        if sender_level < named_power_level("invite", power_levels):
            raise AuthError("7", "the sender's power level is below the invite level")
        return
    if required_power_level(event.type, event.is_state, power_levels) > sender_level:
        raise AuthError("8", f"the sender's power level is too low to send {event.type}")
    state_key = event.state_key
    if state_key is not None and state_key.startswith("@") and state_key != event.sender:
        raise AuthError("9", "state_key starting with '@' must be the sender")
    if event.type == POWER_LEVELS:
        _check_power_levels(event, power_levels, sender_level, create)
    elif event.type == REDACTION and event.room_version.redaction_auth_rule:
        _check_v1_redaction(event, power_levels, sender_level)


def _check_create(event: Event) -> None:
    version = event.room_version
    content = event.content
    if event.prev_event_ids:
        raise AuthError("1.1", "m.room.create has previous events")
    if version.room_id_from_create_event:
        if "room_id" in event.pdu:
            raise AuthError("1.2", "m.room.create has a room_id")
    else:
        room_id = event.pdu.get("room_id")
        if not isinstance(room_id, str) or ":" not in room_id:
            raise AuthError("1.2", "m.room.create has no room_id with a server name")
        if server_of(room_id) != server_of(event.sender):
            raise AuthError("1.2", "room_id and sender of m.room.create have different servers")
    if "room_version" in content and content["room_version"] not in KNOWN_ROOM_VERSIONS:
        raise AuthError("1.3", f"unknown room version {content['room_version']!r}")
    if version.privileged_creators and "additional_creators" in content:
        additional = content["additional_creators"]
        if not isinstance(additional, list) or not all(
            isinstance(user, str) and is_valid_user_id(user) for user in additional
        ):
            raise AuthError("1.4", "additional_creators is not a list of user IDs")
    if not version.creator_is_sender and "creator" not in content:
        raise AuthError("1.4 (v1–v10)", "m.room.create has no content.creator")


def _check_aliases(event: Event) -> None:
    if event.state_key is None:
        raise AuthError("v1–v5 aliases rule", "m.room.aliases has no state_key")
    if event.state_key != server_of(event.sender):
        raise AuthError("v1–v5 aliases rule", "m.room.aliases state_key is not the sender's server")


def _first_joiner(create: Event) -> object:
    """Who may join right after the create event: the (original) creator."""
    if create.room_version.creator_is_sender:
        return create.sender
    return create.content.get("creator")


def _check_membership(event: Event, auth_state: Mapping[StateKey, Event], create: Event) -> None:
    version = event.room_version
    content = event.content
    target = event.state_key
    membership = content.get("membership")
    if target is None or not isinstance(membership, str):
        raise AuthError("5.1", "m.room.member needs a state_key and content.membership")
    if version.restricted_join_rule and JOIN_AUTHORISER in content:
        authoriser = content[JOIN_AUTHORISER]
        if not (isinstance(authoriser, str) and is_valid_user_id(authoriser)):
            raise AuthError("5.2", f"{JOIN_AUTHORISER} is not a user ID")

    sender = event.sender
    sender_membership = membership_of(sender, auth_state)
    target_membership = membership_of(target, auth_state)
    join_rule = join_rule_of(auth_state)
    power_levels = auth_state.get((POWER_LEVELS, ""))
    sender_level = user_power_level(sender, power_levels, create)
    target_level = user_power_level(target, power_levels, create)

    if membership == "join":
        if event.prev_event_ids == [create.event_id] and target == _first_joiner(create):
            return
        if sender != target:
            raise AuthError("5.3.2", "a join must be sent by the joining user")
        if sender_membership == "ban":
            raise AuthError("5.3.3", "the sender is banned")
        invite_rules = {"invite", "knock"} if version.knock_join_rule else {"invite"}
        restricted_rules: set[str] = set()
        if version.restricted_join_rule:
            restricted_rules.add("restricted")
        if version.knock_restricted_join_rule:
            restricted_rules.add("knock_restricted")
        if join_rule in invite_rules:
            if target_membership in ("invite", "join"):
                return
            raise AuthError("5.3.4", f"join rule {join_rule!r} needs an invite")
        if join_rule in restricted_rules:
            if target_membership in ("invite", "join"):
                return
            authoriser = content.get(JOIN_AUTHORISER)
            if not isinstance(authoriser, str):
                raise AuthError("5.3.5.2", f"join rule {join_rule!r} needs {JOIN_AUTHORISER}")
            if membership_of(authoriser, auth_state) != "join":
                raise AuthError("5.3.5.2", "the authorising user is not joined")
            if user_power_level(authoriser, power_levels, create) < named_power_level(
                "invite", power_levels
            ):
                raise AuthError("5.3.5.2", "the authorising user cannot invite")
            return
        if join_rule == "public":
            return
        raise AuthError("5.3.7", f"join rule {join_rule!r} does not allow joining")

    if membership == "invite":
        if "third_party_invite" in content:
            _check_third_party_invite(event, auth_state, target_membership)
            return
        if sender_membership != "join":
            raise AuthError("5.4.2", "the inviter is not joined")
        if target_membership in ("join", "ban"):
            raise AuthError("5.4.3", f"the invitee's membership is {target_membership!r}")
        if sender_level < named_power_level("invite", power_levels):
            raise AuthError("5.4.5", "the inviter's power level is below the invite level")
        return

    if membership == "leave":
        if sender == target:
            can_leave = (
                {"invite", "join", "knock"} if version.knock_join_rule else {"invite", "join"}
            )
            if target_membership in can_leave:
                return
            raise AuthError("5.5.1", f"cannot leave from membership {target_membership!r}")
        if sender_membership != "join":
            raise AuthError("5.5.2", "the sender is not joined")
        if target_membership == "ban" and sender_level < named_power_level("ban", power_levels):
            raise AuthError("5.5.3", "unbanning needs the ban level")
        if sender_level < named_power_level("kick", power_levels) or target_level >= sender_level:
            raise AuthError("5.5.5", "the sender may not kick the target")
        return

    if membership == "ban":
        if sender_membership != "join":
            raise AuthError("5.6.1", "the sender is not joined")
        if sender_level < named_power_level("ban", power_levels) or target_level >= sender_level:
            raise AuthError("5.6.3", "the sender may not ban the target")
        return

    if membership == "knock" and version.knock_join_rule:
        knock_rules = (
            {"knock", "knock_restricted"} if version.knock_restricted_join_rule else {"knock"}
        )
        if join_rule not in knock_rules:
            raise AuthError("5.7.1", f"join rule {join_rule!r} does not allow knocking")
        if sender != target:
            raise AuthError("5.7.2", "a knock must be sent by the knocking user")
        if sender_membership in ("ban", "invite", "join"):
            raise AuthError("5.7.4", f"cannot knock with membership {sender_membership!r}")
        return

    raise AuthError("5.8", f"unknown membership {membership!r}")


def _check_third_party_invite(
    event: Event, auth_state: Mapping[StateKey, Event], target_membership: str
) -> None:
    if target_membership == "ban":
        raise AuthError("5.4.1.1", "the invitee is banned")
    third_party_invite = event.content["third_party_invite"]
    signed = third_party_invite.get("signed") if isinstance(third_party_invite, Mapping) else None
    if not isinstance(signed, Mapping):
        raise AuthError("5.4.1.2", "third_party_invite has no signed object")
    mxid, token = signed.get("mxid"), signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise AuthError("5.4.1.3", "third_party_invite.signed needs mxid and token")
    if mxid != event.state_key:
        raise AuthError("5.4.1.4", "third_party_invite.signed.mxid is not the invitee")
    invite_event = auth_state.get((THIRD_PARTY_INVITE, token))
    if invite_event is None:
        raise AuthError("5.4.1.5", "no m.room.third_party_invite for the token")
    if invite_event.sender != event.sender:
        raise AuthError("5.4.1.6", "the sender did not send the m.room.third_party_invite")
    if not verify_third_party_invite_signed(signed, invite_event):
        raise AuthError("5.4.1.8", "no signature in signed verifies with the invite's keys")


def _level_or_none(mapping: object, key: str, event: Event) -> int | None:
    if not isinstance(mapping, Mapping) or key not in mapping:
        return None
    try:
        return parse_power_level(mapping[key], event.room_version)
    except PowerLevelError:
        return None


def _level_map(content: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    mapping = content.get(key)
    return mapping if isinstance(mapping, Mapping) else {}


def _check_power_levels(
    event: Event, current: Event | None, sender_level: int | float, create: Event
) -> None:
    version = event.room_version
    new = event.content
    try:
        validate_power_levels_content(new, version)
    except PowerLevelError as error:
        raise AuthError("10.1–10.3", str(error)) from None
    if version.privileged_creators:
        creators_listed = room_creators(create) & set(_level_map(new, "users"))
        if creators_listed:
            raise AuthError("10.4", f"creators {sorted(creators_listed)} must not be in users")
    if current is None:
        return
    old = current.content

    for name in NAMED_LEVELS:
        old_level, new_level = _level_or_none(old, name, current), _level_or_none(new, name, event)
        if old_level == new_level:
            continue
        if old_level is not None and old_level > sender_level:
            raise AuthError("10.6", f"cannot change {name!r} from above own level")
        if new_level is not None and new_level > sender_level:
            raise AuthError("10.6", f"cannot set {name!r} above own level")

    maps = ["events", "notifications"] if version.limit_notifications_power_levels else ["events"]
    for map_name in maps:
        old_map, new_map = _level_map(old, map_name), _level_map(new, map_name)
        for key in set(old_map) | set(new_map):
            old_level = _level_or_none(old_map, key, current)
            new_level = _level_or_none(new_map, key, event)
            if old_level == new_level:
                continue
            if old_level is not None and old_level > sender_level:
                raise AuthError("10.7", f"cannot change {map_name}[{key!r}] from above own level")
            if new_level is not None and new_level > sender_level:
                raise AuthError("10.8", f"cannot set {map_name}[{key!r}] above own level")

    old_users, new_users = _level_map(old, "users"), _level_map(new, "users")
    for user in set(old_users) | set(new_users):
        old_level = _level_or_none(old_users, user, current)
        new_level = _level_or_none(new_users, user, event)
        if old_level == new_level:
            continue
        if user != event.sender and old_level is not None and old_level >= sender_level:
            raise AuthError("10.9", f"cannot change the level of {user}, not below own level")
        if new_level is not None and new_level > sender_level:
            raise AuthError("10.10", f"cannot raise {user} above own level")


def _check_v1_redaction(
    event: Event, power_levels: Event | None, sender_level: int | float
) -> None:
    if sender_level >= named_power_level("redact", power_levels):
        return
    redacts = event.redacts
    if (
        redacts is not None
        and ":" in redacts
        and ":" in event.event_id
        and server_of(redacts) == server_of(event.event_id)
    ):
        return
    raise AuthError(
        "v1/v2 redaction rule",
        "redacting another server's event needs the redact level",
    )
