"""Auth events selection.

Spec: https://spec.matrix.org/v1.19/server-server-api/#auth-events-selection
"""

from __future__ import annotations

import pytest

from matrix_protocol.auth_events import auth_types_for_event, select_auth_event_ids
from matrix_protocol.room_versions import room_version

V1, V7, V8, V11, V12 = (room_version(v) for v in ("1", "7", "8", "11", "12"))
CREATE = ("m.room.create", "")
PL = ("m.room.power_levels", "")
JR = ("m.room.join_rules", "")
ALICE, BOB = "@alice:test", "@bob:test"


@pytest.mark.parametrize("version", [V1, V12])
def test_create_cites_nothing(version):
    assert auth_types_for_event("m.room.create", ALICE, "", {}, version) == set()


def test_message_pre_v12():
    assert auth_types_for_event("m.room.message", ALICE, None, {}, V11) == {
        CREATE,
        PL,
        ("m.room.member", ALICE),
    }


def test_v12_never_includes_create():
    for event_type, state_key, content in (
        ("m.room.message", None, {}),
        ("m.room.member", BOB, {"membership": "join"}),
        ("m.room.power_levels", "", {}),
    ):
        assert CREATE not in auth_types_for_event(event_type, ALICE, state_key, content, V12)


@pytest.mark.parametrize("membership", ["join", "invite", "knock"])
def test_member_with_join_rules(membership):
    assert auth_types_for_event("m.room.member", ALICE, BOB, {"membership": membership}, V7) == {
        CREATE,
        PL,
        ("m.room.member", ALICE),
        ("m.room.member", BOB),
        JR,
    }


@pytest.mark.parametrize("membership", ["leave", "ban"])
def test_member_without_join_rules(membership):
    types = auth_types_for_event("m.room.member", ALICE, BOB, {"membership": membership}, V7)
    assert JR not in types
    assert ("m.room.member", BOB) in types


def test_third_party_invite_token():
    content = {
        "membership": "invite",
        "third_party_invite": {"signed": {"token": "tok", "mxid": BOB}},
    }
    types = auth_types_for_event("m.room.member", ALICE, BOB, content, V1)
    assert ("m.room.third_party_invite", "tok") in types
    content["third_party_invite"] = {"signed": {"token": 5}}
    types = auth_types_for_event("m.room.member", ALICE, BOB, content, V1)
    assert not any(t == "m.room.third_party_invite" for t, _ in types)


def test_join_authorised_via_users_server_only_from_v8():
    content = {"membership": "join", "join_authorised_via_users_server": "@carol:test"}
    assert ("m.room.member", "@carol:test") in auth_types_for_event(
        "m.room.member", BOB, BOB, content, V8
    )
    assert ("m.room.member", "@carol:test") not in auth_types_for_event(
        "m.room.member", BOB, BOB, content, V7
    )
    content["membership"] = "invite"
    assert ("m.room.member", "@carol:test") not in auth_types_for_event(
        "m.room.member", ALICE, BOB, content, V8
    )


def test_select_auth_event_ids_in_order_and_skips_missing():
    state = {
        CREATE: "$c",
        PL: "$pl",
        JR: "$jr",
        ("m.room.member", ALICE): "$a",
        ("m.room.name", ""): "$name",
    }
    ids = select_auth_event_ids("m.room.member", BOB, BOB, {"membership": "join"}, V11, state)
    assert ids == ["$c", "$pl", "$jr"]
    ids = select_auth_event_ids("m.room.member", ALICE, BOB, {"membership": "invite"}, V12, state)
    assert ids == ["$pl", "$a", "$jr"]
    assert select_auth_event_ids("m.room.create", ALICE, "", {}, V11, state) == []


def test_self_membership_listed_once():
    ids = select_auth_event_ids(
        "m.room.member",
        ALICE,
        ALICE,
        {"membership": "leave"},
        V11,
        {CREATE: "$c", ("m.room.member", ALICE): "$a"},
    )
    assert ids == ["$c", "$a"]
