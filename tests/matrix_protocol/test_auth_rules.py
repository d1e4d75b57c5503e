"""Authorization rules v1–v12 (https://spec.matrix.org/v1.19/rooms/v12/#authorisation-rules and the
same section of each older room version).

The cases follow the areas Synapse's tests/test_event_auth.py covers (create
event, auth event list, joins per join rule, invites, leaves/kicks/bans,
power level changes, aliases, v1/v2 redactions), re-expressed with our
RoomBuilder, plus m.federate, knocking, v12 creators and third-party invites.
"""

from __future__ import annotations

import math

import nacl.signing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matrix_protocol.auth_rules import (
    AuthError,
    check_auth_events_structure,
    check_auth_rules,
    create_event_of,
    join_authorised_via_server,
    join_rule_of,
    membership_of,
)
from matrix_protocol.encoding import encode_base64
from matrix_protocol.events import Event
from matrix_protocol.power_levels import (
    named_power_level,
    required_power_level,
    room_creators,
    user_power_level,
)
from matrix_protocol.signing import sign_json
from tests.support.room_builder import RoomBuilder

CREATOR = "@creator:test"
PLEB = "@pleb:test"
KING = "@king:test"
OTHER = "@other:remote"
ALL_VERSIONS = [str(n) for n in range(1, 13)]


def make_room(
    version: str,
    *,
    join_rule: str | None = None,
    users: dict | None = None,
    with_pl: bool = True,
    **levels,
) -> RoomBuilder:
    room = RoomBuilder(version)
    room.create(CREATOR)
    room.join(CREATOR)
    if with_pl:
        all_users = dict(users or {})
        if not room.room_version.privileged_creators:
            all_users.setdefault(CREATOR, 100)
        room.power_levels(users=all_users, **levels)
    if join_rule is not None:
        room.join_rules(join_rule)
    return room


def assert_allowed(room: RoomBuilder, event: Event) -> None:
    """Allowed by its auth events (structure + rules) and by the current state."""
    check_auth_events_structure(event, room.auth_events_of(event))
    check_auth_rules(event, room.auth_state_of(event))
    check_auth_rules(event, room.state)


def assert_rejected(room: RoomBuilder, event: Event, rule: str | None = None) -> AuthError:
    with pytest.raises(AuthError) as info:
        check_auth_rules(event, room.state)
    if rule is not None:
        assert info.value.rule == rule, str(info.value)
    return info.value


def state_event(room: RoomBuilder, sender: str, **kwargs) -> Event:
    return room.event("test.state", sender, "", {"x": 1}, apply=False, **kwargs)


# Helpers ----------------------------------------------------------------------


def test_state_helpers():
    room = make_room("10", join_rule="public")
    assert create_event_of(room.state) is room.create_event
    assert membership_of(CREATOR, room.state) == "join"
    assert membership_of(PLEB, room.state) == "leave"
    assert join_rule_of(room.state) == "public"
    assert join_rule_of({}) == "invite"
    assert str(assert_rejected(room, room.leave(PLEB, apply=False))).startswith("auth rule 5.5.1")


# Rule 3: the auth events list -------------------------------------------------


def test_duplicate_auth_events():
    room = make_room("9")
    first_join = room.state[("m.room.member", CREATOR)]
    second_join = room.join(CREATOR)
    pl = room.state[("m.room.power_levels", "")]
    create = room.create_event
    for auth in ([create, first_join, second_join, pl], [create, second_join, second_join, pl]):
        event = state_event(room, CREATOR, auth=auth)
        with pytest.raises(AuthError) as info:
            check_auth_events_structure(event, room.auth_events_of(event))
        assert info.value.rule == "3.1"
    good = state_event(room, CREATOR, auth=[create, second_join, pl])
    check_auth_events_structure(good, room.auth_events_of(good))


def test_unexpected_auth_event_type():
    room = make_room("9", join_rule="public")
    extra = room.state[("m.room.join_rules", "")]
    event = state_event(room, CREATOR)
    with pytest.raises(AuthError) as info:
        check_auth_events_structure(event, [*room.auth_events_of(event), extra])
    assert info.value.rule == "3.2"


def test_auth_event_from_another_room():
    room = make_room("9")
    other = make_room("9")
    foreign_pl = other.state[("m.room.power_levels", "")]
    event = state_event(room, CREATOR)
    mixed = [e for e in room.auth_events_of(event) if e.type != "m.room.power_levels"]
    with pytest.raises(AuthError) as info:
        check_auth_events_structure(event, [*mixed, foreign_pl])
    assert info.value.rule == "3.4"


@pytest.mark.parametrize("version", ["1", "11"])
def test_create_must_be_cited_before_v12(version):
    room = make_room(version)
    event = state_event(room, CREATOR)
    without_create = [e for e in room.auth_events_of(event) if e.type != "m.room.create"]
    with pytest.raises(AuthError):
        check_auth_events_structure(event, without_create)


def test_v12_create_must_not_be_cited():
    room = make_room("12")
    event = state_event(room, CREATOR)
    check_auth_events_structure(event, room.auth_events_of(event))
    with pytest.raises(AuthError) as info:
        check_auth_events_structure(event, [room.create_event, *room.auth_events_of(event)])
    assert info.value.rule == "3.2"


def test_create_event_cites_nothing():
    room = make_room("10")
    create = room.create_event
    check_auth_events_structure(create, [])
    with pytest.raises(AuthError):
        check_auth_events_structure(create, [room.state[("m.room.member", CREATOR)]])


def test_non_state_auth_event():
    room = make_room("10")
    message = room.event("m.room.message", CREATOR, content={})
    event = state_event(room, CREATOR)
    with pytest.raises(AuthError):
        check_auth_events_structure(event, [*room.auth_events_of(event), message])


# Rule 1: m.room.create --------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_create_event_allowed(version):
    room = RoomBuilder(version)
    check_auth_rules(room.create(CREATOR), {})


@pytest.mark.parametrize("version", ["9", "12"])
def test_create_with_prev_events(version):
    room = RoomBuilder(version)
    bad = room.create(CREATOR, prev=["$fake"], apply=False)
    with pytest.raises(AuthError) as info:
        check_auth_rules(bad, {})
    assert info.value.rule == "1.1"


def test_v12_create_with_room_id():
    room = RoomBuilder("12")
    bad = room.create(CREATOR, extra={"room_id": "!abc"}, apply=False)
    with pytest.raises(AuthError) as info:
        check_auth_rules(bad, {})
    assert info.value.rule == "1.2"


@pytest.mark.parametrize("version", ["1", "11"])
def test_create_room_id_domain_must_match_sender(version):
    room = RoomBuilder(version)
    bad = room.create(OTHER, apply=False)  # room !roomN:test, sender on "remote"
    with pytest.raises(AuthError) as info:
        check_auth_rules(bad, {})
    assert info.value.rule == "1.2"


@pytest.mark.parametrize("room_version_value", ["999", 12, None])
def test_create_unknown_room_version(room_version_value):
    room = RoomBuilder("11")
    bad = room.create(CREATOR, content={"room_version": room_version_value}, apply=False)
    with pytest.raises(AuthError) as info:
        check_auth_rules(bad, {})
    assert info.value.rule == "1.3"


@pytest.mark.parametrize("additional", ["@a:test", ["not a user"], [5], [CREATOR, "@b"]])
def test_v12_additional_creators_must_be_user_ids(additional):
    room = RoomBuilder("12")
    bad = room.create(CREATOR, additional_creators=additional, apply=False)
    with pytest.raises(AuthError) as info:
        check_auth_rules(bad, {})
    assert info.value.rule == "1.4"
    good = RoomBuilder("12").create(CREATOR, additional_creators=["@b:remote"])
    check_auth_rules(good, {})


def test_creator_required_until_v10():
    for version in ("1", "10"):
        bad = RoomBuilder(version).create(CREATOR, content={}, apply=False)
        with pytest.raises(AuthError) as info:
            check_auth_rules(bad, {})
        assert info.value.rule == "1.4 (v1–v10)"
    check_auth_rules(RoomBuilder("11").create(CREATOR, content={}), {})


# Rule 2 (v12) and the create event in the state -------------------------------


def test_v12_room_id_must_come_from_create_event():
    room = make_room("12")
    other = make_room("12")
    event = state_event(room, CREATOR)
    assert_allowed(room, event)
    with pytest.raises(AuthError) as info:
        check_auth_rules(event, {**room.state, ("m.room.create", ""): other.create_event})
    assert info.value.rule == "2"


@pytest.mark.parametrize("version", ["1", "12"])
def test_missing_create_event_in_state(version):
    room = make_room(version)
    event = state_event(room, CREATOR)
    state = {k: v for k, v in room.state.items() if k[0] != "m.room.create"}
    with pytest.raises(AuthError):
        check_auth_rules(event, state)


def test_pre_v12_create_event_of_other_room():
    room = make_room("10")
    other = make_room("10")
    event = state_event(room, CREATOR)
    with pytest.raises(AuthError) as info:
        check_auth_rules(event, {**room.state, ("m.room.create", ""): other.create_event})
    assert info.value.rule == "3.4"


# Rule 4: m.federate -----------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "12"])
def test_m_federate_false(version):
    room = RoomBuilder(version)
    content = {"room_version": version, "m.federate": False}
    if version == "1":
        content["creator"] = CREATOR
    room.create(CREATOR, content=content)
    room.join(CREATOR)
    room.join_rules("public")
    assert_rejected(room, room.join(OTHER, apply=False), "4")
    assert_allowed(room, room.join(PLEB, apply=False))


# Before the first power levels event ------------------------------------------


def test_only_creator_sends_state_before_first_power_levels():
    room = make_room("1", with_pl=False)
    room.join(PLEB, auth=None)  # state setup, not checked
    assert_allowed(room, state_event(room, CREATOR))
    assert_rejected(room, state_event(room, PLEB), "8")


def test_state_default_level():
    room = make_room("1", users={PLEB: "29", KING: "30"}, state_default="30")
    room.join(PLEB)
    room.join(KING)
    assert_rejected(room, state_event(room, PLEB), "8")
    assert_allowed(room, state_event(room, KING))


def test_events_levels_for_messages():
    room = make_room("10", users={KING: 10}, events_default=10, events={"m.custom": 20})
    room.join(PLEB)
    room.join(KING)
    assert_rejected(room, room.event("m.room.message", PLEB, content={}, apply=False), "8")
    assert_allowed(room, room.event("m.room.message", KING, content={}, apply=False))
    assert_rejected(room, room.event("m.custom", KING, content={}, apply=False), "8")


def test_sender_must_be_joined():
    room = make_room("10")
    assert_rejected(room, room.event("m.room.message", PLEB, content={}, apply=False), "6")


def test_state_key_starting_with_at():
    room = make_room("10", users={PLEB: 50})
    room.join(PLEB)
    assert_allowed(room, room.event("m.custom", PLEB, PLEB, {}, apply=False))
    assert_rejected(room, room.event("m.custom", PLEB, KING, {}, apply=False), "9")


def test_third_party_invite_event_needs_invite_level():
    room = make_room("10", invite=10, users={KING: 10})
    room.join(PLEB)
    room.join(KING)
    event = room.event("m.room.third_party_invite", PLEB, "tok", {}, apply=False)
    assert_rejected(room, event, "7")
    assert_allowed(room, room.event("m.room.third_party_invite", KING, "tok", {}, apply=False))


# Aliases (v1–v5) --------------------------------------------------------------


def _alias(room: RoomBuilder, sender: str, state_key: str | None = "test") -> Event:
    return room.event("m.room.aliases", sender, state_key, {"aliases": []}, apply=False)


@pytest.mark.parametrize("version", ["1", "5"])
def test_aliases_special_rule(version):
    room = make_room(version)
    assert_allowed(room, _alias(room, CREATOR))
    assert_rejected(room, _alias(room, CREATOR, state_key=""), "v1–v5 aliases rule")
    assert_rejected(room, _alias(room, CREATOR, state_key="remote"), "v1–v5 aliases rule")
    assert_rejected(room, _alias(room, CREATOR, state_key=None), "v1–v5 aliases rule")
    check_auth_rules(_alias(room, "@nonmember:test"), room.state)  # need not be joined


def test_aliases_ordinary_from_v6():
    room = make_room("6")
    assert_allowed(room, _alias(room, CREATOR, state_key=""))
    assert_allowed(room, _alias(room, CREATOR, state_key="remote"))
    assert_rejected(room, _alias(room, "@nonmember:test"), "6")


# Joins ------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_creator_first_join(version):
    room = RoomBuilder(version)
    room.create(CREATOR)
    assert_allowed(room, room.join(CREATOR, apply=False))
    assert_rejected(room, room.join(PLEB, apply=False), "5.3.4")


def test_first_join_uses_content_creator_until_v10():
    room = RoomBuilder("10")
    room.create(PLEB, content={"creator": CREATOR, "room_version": "10"})
    assert_allowed(room, room.join(CREATOR, apply=False))
    assert_rejected(room, room.join(PLEB, apply=False))
    room11 = RoomBuilder("11")
    room11.create(PLEB, content={"creator": CREATOR})
    assert_allowed(room11, room11.join(PLEB, apply=False))
    assert_rejected(room11, room11.join(CREATOR, apply=False))


def test_join_public():
    room = make_room("6", join_rule="public")
    assert_allowed(room, room.join(PLEB, apply=False))
    assert_rejected(room, room.join(PLEB, sender=CREATOR, apply=False), "5.3.2")
    room.ban(CREATOR, PLEB)
    assert_rejected(room, room.join(PLEB, apply=False), "5.3.3")
    for membership in ("leave", "join", "invite"):
        room.member(PLEB, membership, sender=CREATOR)
        assert_allowed(room, room.join(PLEB, apply=False))


@pytest.mark.parametrize(("version", "join_rule"), [("6", "invite"), ("7", "knock")])
def test_join_invite_only(version, join_rule):
    room = make_room(version, join_rule=join_rule)
    assert_rejected(room, room.join(PLEB, apply=False), "5.3.4")
    assert_rejected(room, room.join(PLEB, sender=CREATOR, apply=False), "5.3.2")
    room.ban(CREATOR, PLEB)
    assert_rejected(room, room.join(PLEB, apply=False), "5.3.3")
    room.leave(PLEB, sender=CREATOR)
    assert_rejected(room, room.join(PLEB, apply=False), "5.3.4")
    room.invite(CREATOR, PLEB)
    assert_allowed(room, room.join(PLEB, apply=False))
    room.join(PLEB)
    assert_allowed(room, room.join(PLEB, apply=False))


def test_knock_join_rule_unknown_before_v7():
    room = make_room("6", join_rule="knock")
    room.invite(CREATOR, PLEB)
    assert_rejected(room, room.join(PLEB, apply=False), "5.3.7")


@pytest.mark.parametrize(("version", "join_rule"), [("6", "restricted"), ("7", "restricted")])
def test_restricted_unknown_before_v8(version, join_rule):
    room = make_room(version, join_rule=join_rule, invite=0)
    join = room.join(PLEB, content={"join_authorised_via_users_server": CREATOR}, apply=False)
    assert_rejected(room, join, "5.3.7")


def test_knock_restricted_unknown_before_v10():
    room = make_room("9", join_rule="knock_restricted")
    join = room.join(PLEB, content={"join_authorised_via_users_server": CREATOR}, apply=False)
    assert_rejected(room, join, "5.3.7")


def _authorised_join(room: RoomBuilder, user: str, authoriser: str) -> Event:
    return room.join(user, content={"join_authorised_via_users_server": authoriser}, apply=False)


@pytest.mark.parametrize(
    ("version", "join_rule"),
    [("8", "restricted"), ("10", "knock_restricted"), ("12", "restricted")],
)
def test_join_restricted(version, join_rule):
    inviter = "@inviter:remote"
    room = make_room(version, join_rule=join_rule, users={inviter: 150}, invite=100)
    assert_allowed(room, _authorised_join(room, PLEB, CREATOR))
    assert_rejected(room, _authorised_join(room, PLEB, inviter), "5.3.5.2")  # not joined
    room.join(inviter)
    assert_allowed(room, _authorised_join(room, PLEB, inviter))
    room.join(KING)
    assert_rejected(room, _authorised_join(room, PLEB, KING), "5.3.5.2")  # level 0 < 100
    assert_rejected(room, room.join(PLEB, apply=False), "5.3.5.2")
    forced = room.member(
        PLEB,
        "join",
        sender=CREATOR,
        content={"join_authorised_via_users_server": CREATOR},
        apply=False,
    )
    assert_rejected(room, forced, "5.3.2")
    room.ban(CREATOR, PLEB)
    assert_rejected(room, _authorised_join(room, PLEB, CREATOR), "5.3.3")
    room.leave(PLEB, sender=CREATOR)
    assert_allowed(room, _authorised_join(room, PLEB, CREATOR))
    room.invite(CREATOR, PLEB)
    assert_allowed(room, room.join(PLEB, apply=False))
    room.join(PLEB)
    assert_allowed(room, room.join(PLEB, apply=False))


def test_join_authoriser_must_be_user_id():
    room = make_room("9", join_rule="restricted")
    bad = _authorised_join(room, PLEB, "creator")
    assert join_authorised_via_server(bad) is None
    assert_rejected(room, bad, "5.2")


def test_join_authorised_via_server():
    room = make_room("9", join_rule="restricted")
    assert join_authorised_via_server(_authorised_join(room, PLEB, OTHER)) == "remote"
    assert join_authorised_via_server(room.join(PLEB, apply=False)) is None
    assert join_authorised_via_server(state_event(room, CREATOR)) is None
    old = make_room("7")
    assert join_authorised_via_server(_authorised_join(old, PLEB, OTHER)) is None


# Knocks -----------------------------------------------------------------------


def test_knock():
    room = make_room("7", join_rule="knock")
    assert_allowed(room, room.knock(PLEB, apply=False))
    assert_rejected(room, room.knock(PLEB, sender=KING, apply=False), "5.7.2")
    for membership in ("ban", "invite", "join"):
        room.member(PLEB, membership, sender=CREATOR)
        assert_rejected(room, room.knock(PLEB, apply=False), "5.7.4")


def test_knock_needs_knock_join_rule():
    room7 = make_room("7", join_rule="public")
    assert_rejected(room7, room7.knock(PLEB, apply=False), "5.7.1")
    room9 = make_room("9", join_rule="knock_restricted")
    assert_rejected(room9, room9.knock(PLEB, apply=False), "5.7.1")
    room10 = make_room("10", join_rule="knock_restricted")
    assert_allowed(room10, room10.knock(PLEB, apply=False))


def test_knock_unknown_before_v7():
    room = make_room("6", join_rule="knock")
    assert_rejected(room, room.knock(PLEB, apply=False), "5.8")


def test_unknown_membership_and_missing_fields():
    room = make_room("10")
    assert_rejected(room, room.member(PLEB, "dance", apply=False), "5.8")
    no_membership = room.event("m.room.member", PLEB, PLEB, {}, apply=False)
    assert_rejected(room, no_membership, "5.1")
    no_state_key = room.event("m.room.member", PLEB, None, {"membership": "join"}, apply=False)
    assert_rejected(room, no_state_key, "5.1")


# Invites ----------------------------------------------------------------------


def test_invites():
    room = make_room("10", users={KING: 10}, invite=10)
    room.join(PLEB)
    room.join(KING)
    assert_allowed(room, room.invite(KING, OTHER, apply=False))
    assert_rejected(room, room.invite(PLEB, OTHER, apply=False), "5.4.5")
    assert_rejected(room, room.invite("@stranger:test", OTHER, apply=False), "5.4.2")
    assert_rejected(room, room.invite(KING, PLEB, apply=False), "5.4.3")  # already joined
    room.ban(CREATOR, OTHER)
    assert_rejected(room, room.invite(KING, OTHER, apply=False), "5.4.3")


# Leaves, kicks, bans, unbans ----------------------------------------------------


@pytest.mark.parametrize("version", ["6", "7"])
def test_self_leave(version):
    room = make_room(version, join_rule="knock" if version == "7" else "invite")
    assert_rejected(room, room.leave(PLEB, apply=False), "5.5.1")  # never a member
    room.invite(CREATOR, PLEB)
    assert_allowed(room, room.leave(PLEB, apply=False))  # reject the invite
    room.join(PLEB)
    assert_allowed(room, room.leave(PLEB, apply=False))
    room.ban(CREATOR, PLEB)
    assert_rejected(room, room.leave(PLEB, apply=False), "5.5.1")
    room.member(PLEB, "knock")
    if version == "7":
        assert_allowed(room, room.leave(PLEB, apply=False))
    else:
        assert_rejected(room, room.leave(PLEB, apply=False), "5.5.1")


def test_kick():
    room = make_room("10", users={KING: 50, PLEB: 10, OTHER: 50})
    for user in (KING, PLEB, OTHER):
        room.join(user)
    assert_allowed(room, room.leave(PLEB, sender=KING, apply=False))
    assert_rejected(room, room.leave(OTHER, sender=KING, apply=False), "5.5.5")  # equal level
    assert_rejected(room, room.leave(KING, sender=PLEB, apply=False), "5.5.5")
    assert_rejected(room, room.leave(PLEB, sender="@gone:test", apply=False), "5.5.2")


def test_unban_needs_ban_and_kick_levels():
    room = make_room("10", users={KING: 60}, kick=50, ban=70)
    room.join(KING)
    room.ban(CREATOR, PLEB)
    assert_rejected(room, room.leave(PLEB, sender=KING, apply=False), "5.5.3")
    assert_allowed(room, room.leave(PLEB, sender=CREATOR, apply=False))


def test_ban():
    room = make_room("10", users={KING: 50, OTHER: 50})
    room.join(KING)
    room.join(OTHER)
    assert_allowed(room, room.ban(KING, PLEB, apply=False))
    assert_rejected(room, room.ban(KING, OTHER, apply=False), "5.6.3")
    assert_rejected(room, room.ban(PLEB, OTHER, apply=False), "5.6.1")
    room.join(PLEB)
    assert_rejected(room, room.ban(PLEB, OTHER, apply=False), "5.6.3")


def test_v12_creators_cannot_be_kicked_or_banned():
    room = RoomBuilder("12")
    room.create(CREATOR, additional_creators=[OTHER])
    room.join(CREATOR)
    room.power_levels(users={KING: 100})
    room.join_rules("public")
    room.join(OTHER)
    room.join(KING)
    assert_rejected(room, room.ban(KING, CREATOR, apply=False), "5.6.3")
    assert_rejected(room, room.ban(OTHER, CREATOR, apply=False), "5.6.3")  # ∞ < ∞ is false
    assert_rejected(room, room.leave(CREATOR, sender=OTHER, apply=False), "5.5.5")
    assert_allowed(room, room.ban(OTHER, KING, apply=False))
    assert_allowed(room, room.leave(KING, sender=CREATOR, apply=False))


# Power level changes ------------------------------------------------------------


def _pl(room: RoomBuilder, sender: str, content: dict) -> Event:
    return room.power_levels(sender, content=content, apply=False)


def test_first_power_levels_event_is_free():
    room = make_room("10", with_pl=False)
    assert_allowed(room, _pl(room, CREATOR, {"users": {CREATOR: 100, PLEB: 1000}}))


def test_power_levels_changes():
    users = {CREATOR: 100, KING: 50, PLEB: 50, OTHER: 10}
    room = make_room("10", users=users, events={"m.room.name": 60})
    room.join(KING)
    base = {"users": users, "events": {"m.room.name": 60}, "state_default": 50}
    assert_allowed(room, _pl(room, KING, {**base, "users": {**users, OTHER: 50}}))
    assert_rejected(room, _pl(room, KING, {**base, "users": {**users, OTHER: 51}}), "10.10")
    assert_rejected(room, _pl(room, KING, {**base, "users": {**users, KING: 51}}), "10.10")
    assert_allowed(room, _pl(room, KING, {**base, "users": {**users, KING: 10}}))  # self-demote
    assert_rejected(room, _pl(room, KING, {**base, "users": {**users, PLEB: 0}}), "10.9")
    no_pleb = {k: v for k, v in users.items() if k != PLEB}
    assert_rejected(room, _pl(room, KING, {**base, "users": no_pleb}), "10.9")
    assert_rejected(room, _pl(room, KING, {**base, "users_default": 60}), "10.6")
    assert_allowed(room, _pl(room, KING, {**base, "users_default": 50}))
    assert_rejected(room, _pl(room, KING, {**base, "events": {}}), "10.7")
    assert_rejected(
        room, _pl(room, KING, {**base, "events": {"m.x": 70, "m.room.name": 60}}), "10.8"
    )
    assert_allowed(room, _pl(room, KING, {**base, "events": {"m.x": 20, "m.room.name": 60}}))
    higher_ban = make_room("10", users={**users}, ban=80)
    higher_ban.join(KING)
    content = {"users": users, "ban": 10, "state_default": 50}
    assert_rejected(higher_ban, _pl(higher_ban, KING, content), "10.6")


def test_notifications_checked_from_v6():
    for version, allowed in (("1", True), ("6", False)):
        room = make_room(version, users={PLEB: "30"}, state_default="30")
        room.join(PLEB)
        event = _pl(
            room,
            PLEB,
            {
                "users": {CREATOR: 100, PLEB: 30},
                "state_default": 30,
                "notifications": {"room": 100},
            },
        )
        if allowed:
            assert_allowed(room, event)
        else:
            assert_rejected(room, event, "10.8")


def test_v10_rejects_string_power_levels():
    room = make_room("10")
    for content in (
        {"users_default": "42"},
        {"events": {"m.room.name": "42", "m.room.power_levels": 42}},
        {"users": {CREATOR: "100"}},
        {"notifications": {"room": None}},
        {"users": {"@alice:wonderland": []}},
        {"users_default": {}},
    ):
        assert_rejected(room, _pl(room, CREATOR, {"users": {CREATOR: 100}, **content}))
    room9 = make_room("9")
    assert_allowed(room9, _pl(room9, CREATOR, {"users": {CREATOR: "100"}, "users_default": "42"}))


def test_v1_float_power_levels():
    room = make_room("1")
    assert_allowed(room, _pl(room, CREATOR, {"users": {CREATOR: 100.0}, "ban": 5.5}))
    assert_rejected(room, _pl(room, CREATOR, {"users": {CREATOR: 100, PLEB: "lots"}}))


@pytest.mark.parametrize("version", [str(v) for v in range(1, 10)])
def test_v1_to_v9_type_check_only_users(version: str) -> None:
    """Rule 10.1 (9.1 from v8) names only ``users``: other values need not be numbers."""
    room = make_room(version, with_pl=False)
    first = {"users": {CREATOR: 100}, "ban": "1e1", "events": {"m.room.name": "high"}}
    assert_allowed(room, _pl(room, CREATOR, first))
    room.power_levels(CREATOR, content=first)
    # A value that is not a number counts as unset: changing it checks only the new value.
    assert named_power_level("ban", room.state[("m.room.power_levels", "")]) == 50
    assert_allowed(room, _pl(room, CREATOR, {**first, "ban": 60}))
    assert_rejected(room, _pl(room, CREATOR, {**first, "ban": 101}), "10.6")


@pytest.mark.parametrize("version", ["10", "11", "12"])
def test_v10_on_every_value_must_be_an_integer(version: str) -> None:
    room = make_room(version, with_pl=False)
    users = {} if version == "12" else {CREATOR: 100}
    assert_rejected(room, _pl(room, CREATOR, {"users": users, "ban": "1e1"}), "10.1–10.3")


@pytest.mark.parametrize("version", ["1", "9", "10", "12"])
def test_user_ids_with_any_five_digit_port_are_valid_in_power_levels(version: str) -> None:
    room = make_room(version, with_pl=False)
    users = {} if version == "12" else {CREATOR: 100}
    content = {"users": {**users, "@bob:a.org:99999": 50, "@carol:b.org:0": 1}}
    assert_allowed(room, _pl(room, CREATOR, content))


def test_v12_additional_creators_may_have_any_five_digit_port() -> None:
    room = RoomBuilder("12")
    create = room.create(CREATOR, additional_creators=["@bob:a.org:99999"])
    check_auth_rules(create, {})
    assert "@bob:a.org:99999" in room_creators(create)


def test_power_levels_users_keys_must_be_user_ids():
    room = make_room("9")
    assert_rejected(room, _pl(room, CREATOR, {"users": {CREATOR: 100, "bob": 1}}), "10.1–10.3")


def test_v12_creators_must_not_be_in_users():
    room = RoomBuilder("12")
    room.create(CREATOR, additional_creators=[OTHER])
    room.join(CREATOR)
    assert_rejected(room, _pl(room, CREATOR, {"users": {CREATOR: 100}}), "10.4")
    assert_rejected(room, _pl(room, CREATOR, {"users": {OTHER: 100}}), "10.4")
    assert_allowed(room, _pl(room, CREATOR, {"users": {PLEB: 100}}))


def test_v12_creator_has_unlimited_power():
    room = make_room("12", users={KING: 100})
    change = {"users": {KING: 2**53 - 1}, "ban": 2**53 - 1, "events": {"m.x": 10**15}}
    assert_allowed(room, _pl(room, CREATOR, change))
    room.join(KING)
    assert_rejected(room, _pl(room, KING, {"users": {KING: 100, PLEB: 101}}), "10.10")


# v1/v2 redaction rule -----------------------------------------------------------


def _redaction(room: RoomBuilder, sender: str, redacts: str) -> Event:
    return room.event(
        "m.room.redaction", sender, content={}, extra={"redacts": redacts}, apply=False
    )


@pytest.mark.parametrize("version", ["1", "2"])
def test_v1_redaction_rule(version):
    room = make_room(version, users={KING: 50})
    room.join(PLEB)
    room.join(KING)
    assert_allowed(room, _redaction(room, PLEB, "$someone:test"))  # same event_id domain
    assert_rejected(room, _redaction(room, PLEB, "$someone:remote"), "v1/v2 redaction rule")
    assert_allowed(room, _redaction(room, KING, "$someone:remote"))


def test_redaction_is_ordinary_from_v3():
    room = make_room("3")
    room.join(PLEB)
    assert_allowed(room, _redaction(room, PLEB, "$abc"))


# Third-party invites (rule 5.4.1) -----------------------------------------------


@pytest.fixture
def third_party_room():
    key = nacl.signing.SigningKey.generate()
    room = make_room("10")
    public_key = encode_base64(bytes(key.verify_key))
    room.event(
        "m.room.third_party_invite", CREATOR, "tok", {"public_keys": [{"public_key": public_key}]}
    )
    return room, key


def _tp_invite(room, key, *, sender=CREATOR, target=OTHER, mxid=OTHER, token="tok", signed=None):
    if signed is None:
        signed = sign_json(
            {"mxid": mxid, "token": token, "sender": sender}, key, "id.test", "ed25519:0"
        )
    content = {"third_party_invite": {"display_name": "o", "signed": signed}}
    return room.invite(sender, target, content=content, apply=False)


def test_third_party_invite_valid(third_party_room):
    room, key = third_party_room
    assert_allowed(room, _tp_invite(room, key))


def test_third_party_invite_wrong_key(third_party_room):
    room, _ = third_party_room
    assert_rejected(room, _tp_invite(room, nacl.signing.SigningKey.generate()), "5.4.1.8")


def test_third_party_invite_wrong_token(third_party_room):
    room, key = third_party_room
    assert_rejected(room, _tp_invite(room, key, token="other"), "5.4.1.5")


def test_third_party_invite_wrong_mxid(third_party_room):
    room, key = third_party_room
    assert_rejected(room, _tp_invite(room, key, mxid="@mallory:remote"), "5.4.1.4")


def test_third_party_invite_sender_mismatch(third_party_room):
    room, key = third_party_room
    room.join(KING)
    assert_rejected(room, _tp_invite(room, key, sender=KING), "5.4.1.6")


def test_third_party_invite_malformed(third_party_room):
    room, key = third_party_room
    assert_rejected(room, _tp_invite(room, key, signed="x"), "5.4.1.2")
    assert_rejected(room, _tp_invite(room, key, signed={"mxid": OTHER}), "5.4.1.3")
    room.ban(CREATOR, OTHER)
    assert_rejected(room, _tp_invite(room, key), "5.4.1.1")


# Properties -------------------------------------------------------------------

_LEVEL = st.integers(min_value=-10, max_value=110)
_TYPES = st.sampled_from(
    [
        "m.room.message",
        "m.room.name",
        "m.room.topic",
        "m.custom",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.reaction",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.sampled_from(["1", "6", "10", "12"]),
    sender_level=_LEVEL,
    events=st.dictionaries(_TYPES, _LEVEL, max_size=4),
    state_default=_LEVEL,
    events_default=_LEVEL,
    event_type=_TYPES,
    is_state=st.booleans(),
)
def test_never_accepts_below_required_level(
    version, sender_level, events, state_default, events_default, event_type, is_state
):
    room = make_room(
        version,
        users={PLEB: sender_level},
        events=events,
        state_default=state_default,
        events_default=events_default,
    )
    room.join(PLEB)
    pl_event = room.state[("m.room.power_levels", "")]
    content = dict(pl_event.content) if event_type == "m.room.power_levels" else {}
    event = room.event(event_type, PLEB, "" if is_state else None, content, apply=False)
    try:
        check_auth_rules(event, room.state)
    except AuthError:
        return
    level = user_power_level(PLEB, pl_event, room.create_event)
    assert level >= required_power_level(event_type, is_state, pl_event)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.sampled_from(["1", "6", "10", "12"]),
    old_users=st.dictionaries(st.sampled_from([PLEB, KING, OTHER]), _LEVEL, min_size=1),
    new_users=st.dictionaries(st.sampled_from([PLEB, KING, OTHER, "@new:test"]), _LEVEL),
)
def test_never_raises_anyone_above_sender(version, old_users, new_users):
    room = make_room(version, users=old_users, state_default=0)
    room.join(PLEB)
    old_pl = room.state[("m.room.power_levels", "")]
    sender_level = user_power_level(PLEB, old_pl, room.create_event)
    content = {**old_pl.content, "users": {**_creator_entry(room), **new_users}}
    event = _pl(room, PLEB, content)
    try:
        check_auth_rules(event, room.state)
    except AuthError:
        return
    old_entries = old_pl.content.get("users", {})
    for user in set(new_users) | set(old_users):
        after = user_power_level(user, event, room.create_event)
        before = user_power_level(user, old_pl, room.create_event)
        if after != before:
            assert after <= sender_level
        # Only an existing entry that is changed or removed must be below the sender's
        # level; a new entry (even one lower than users_default) need not be.
        if after < before and user != PLEB and user in old_entries:
            assert before < sender_level


def _creator_entry(room: RoomBuilder) -> dict:
    if room.room_version.privileged_creators:
        return {}
    return {CREATOR: 100}


def test_infinite_power_compares():
    room = make_room("12")
    assert (
        user_power_level(CREATOR, room.state[("m.room.power_levels", "")], room.create_event)
        == math.inf
    )
