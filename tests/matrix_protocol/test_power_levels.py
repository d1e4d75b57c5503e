"""Power level parsing and lookups .

Spec: https://spec.matrix.org/v1.19/server-server-api/#definitions and the
power-level formats of each room version.
"""

from __future__ import annotations

import math

import pytest

from matrix_protocol.power_levels import (
    PowerLevelError,
    named_power_level,
    parse_power_level,
    required_power_level,
    room_creators,
    user_power_level,
    validate_power_levels_content,
)
from matrix_protocol.room_versions import room_version
from tests.support.room_builder import RoomBuilder

V1, V5, V6, V9, V10, V11, V12 = (room_version(v) for v in ("1", "5", "6", "9", "10", "11", "12"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [(100, 100), ("100", 100), ("000100", 100), ("+100", 100), (" -100 ", -100), ("\t7\n", 7)],
)
@pytest.mark.parametrize("version", [V1, V5, V6, V9])
def test_integer_strings_accepted_before_v10(version, value, expected):
    assert parse_power_level(value, version) == expected


@pytest.mark.parametrize("value", ["1_000", "1.5", "", " ", "abc", "0x10", "١٠٠", "+-1", "1 2"])
def test_malformed_strings_rejected(value):
    with pytest.raises(PowerLevelError):
        parse_power_level(value, V1)


@pytest.mark.parametrize(("value", "expected"), [(5.114698e4, 51146), (-3.9, -3), (50.0, 50)])
def test_floats_truncate_in_v1_to_v5(value, expected):
    assert parse_power_level(value, V1) == expected
    assert parse_power_level(value, V5) == expected


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_floats_rejected(value):
    with pytest.raises(PowerLevelError):
        parse_power_level(value, V1)


def test_floats_rejected_from_v6():
    with pytest.raises(PowerLevelError):
        parse_power_level(50.0, V6)


@pytest.mark.parametrize("version", [V10, V11, V12])
@pytest.mark.parametrize("value", ["100", 100.0, None, [], {}, True])
def test_v10_integers_only(version, value):
    with pytest.raises(PowerLevelError):
        parse_power_level(value, version)


@pytest.mark.parametrize("value", [True, False, None, [1]])
def test_non_numbers_rejected_everywhere(value):
    with pytest.raises(PowerLevelError):
        parse_power_level(value, V1)


def test_validate_content():
    validate_power_levels_content({"users": {"@a:test": "50"}, "ban": " 20 "}, V9)
    # v1–v9 type-check only users (rule 10.1 / 9.1): the rest is accepted as it is.
    for version in (V1, V5, V6, V9):
        for content in (
            {"notifications": {"room": "x"}},
            {"events": {"m.room.name": "high"}},
            {"kick": "lots"},
            {"ban": "1e1", "events": [], "notifications": None},
        ):
            validate_power_levels_content(content, version)
    for bad in ({"users": {"not-a-user": 1}}, {"users": []}, {"users": {"@a:test": "1e1"}}):
        with pytest.raises(PowerLevelError):
            validate_power_levels_content(bad, V9)
    for bad in (
        {"users_default": "42"},
        {"events": {"m.room.name": "42"}},
        {"users": {"@a:t": []}},
        {"ban": "1e1"},
        {"notifications": {"room": "x"}},
        {"events": []},
    ):
        with pytest.raises(PowerLevelError):
            validate_power_levels_content(bad, V10)


def test_defaults_without_power_levels_event():
    assert named_power_level("invite", None) == 0
    for name in ("kick", "ban", "redact", "state_default"):
        assert named_power_level(name, None) == 50
    assert required_power_level("m.room.name", True, None) == 50
    assert required_power_level("m.room.message", False, None) == 0


@pytest.mark.parametrize("version", ["1", "10", "11"])
def test_creator_has_100_without_power_levels(version):
    room = RoomBuilder(version)
    create = room.create("@alice:test")
    assert user_power_level("@alice:test", None, create) == 100
    assert user_power_level("@bob:test", None, create) == 0


def test_v1_creator_is_content_creator():
    room = RoomBuilder("1")
    create = room.create("@alice:test", content={"creator": "@carol:test"})
    assert room_creators(create) == {"@carol:test"}
    assert user_power_level("@carol:test", None, create) == 100
    assert user_power_level("@alice:test", None, create) == 0


def test_v11_creator_is_sender_and_ignores_content_creator():
    room = RoomBuilder("11")
    create = room.create("@alice:test", content={"creator": "@carol:test"})
    assert room_creators(create) == {"@alice:test"}


def test_lookups_with_power_levels_event():
    room = RoomBuilder("9")
    create = room.create("@alice:test")
    room.join("@alice:test")
    pl = room.power_levels(
        users={"@alice:test": "100", "@bob:test": 30},
        users_default="5",
        events={"m.room.name": "20"},
        state_default=40,
        events_default=1,
        invite=3,
    )
    assert user_power_level("@alice:test", pl, create) == 100
    assert user_power_level("@bob:test", pl, create) == 30
    assert user_power_level("@carol:test", pl, create) == 5
    assert required_power_level("m.room.name", True, pl) == 20
    assert required_power_level("m.room.topic", True, pl) == 40
    assert required_power_level("m.room.message", False, pl) == 1
    assert named_power_level("invite", pl) == 3
    assert named_power_level("kick", pl) == 50


def test_creator_without_users_entry_gets_users_default():
    room = RoomBuilder("10")
    create = room.create("@alice:test")
    pl = room.power_levels(users={})
    assert user_power_level("@alice:test", pl, create) == 0


def test_v12_creators_are_infinite():
    room = RoomBuilder("12")
    create = room.create("@alice:test", additional_creators=["@bob:other"])
    assert room_creators(create) == {"@alice:test", "@bob:other"}
    assert user_power_level("@alice:test", None, create) == math.inf
    assert user_power_level("@bob:other", None, create) == math.inf
    assert user_power_level("@carol:test", None, create) == 0
    room.join("@alice:test")
    pl = room.power_levels(users={"@carol:test": 99})
    assert user_power_level("@alice:test", pl, create) == math.inf
    assert user_power_level("@carol:test", pl, create) == 99


def test_unparseable_value_in_state_falls_back_to_default():
    room = RoomBuilder("10")
    create = room.create("@alice:test")
    pl = room.power_levels(users={"@bob:test": "9"}, ban="x", users_default=2)
    assert user_power_level("@bob:test", pl, create) == 2
    assert named_power_level("ban", pl) == 50
