"""PDU format checks.

Spec: https://spec.matrix.org/v1.19/server-server-api/#pdus,
https://spec.matrix.org/v1.19/client-server-api/#size-limits and step 1 of
https://spec.matrix.org/v1.19/server-server-api/#checks-performed-on-receipt-of-a-pdu
"""

from __future__ import annotations

import copy

import pytest

from matrix_protocol.canonical_json import encode_canonical_json
from matrix_protocol.pdu_format import PduFormatError, check_pdu_format
from matrix_protocol.room_versions import KNOWN_ROOM_VERSIONS, room_version
from tests.support.room_builder import RoomBuilder

ALICE = "@alice:test"


def _message_pdu(version: str) -> dict:
    room = RoomBuilder(version)
    room.create(ALICE)
    room.join(ALICE)
    return copy.deepcopy(dict(room.event("m.room.message", ALICE, content={"body": "hi"}).pdu))


def _rejects(pdu, version: str, **kwargs) -> None:
    with pytest.raises(PduFormatError):
        check_pdu_format(pdu, room_version(version), **kwargs)


@pytest.mark.parametrize("version", sorted(KNOWN_ROOM_VERSIONS))
def test_builder_events_are_well_formed(version):
    room = RoomBuilder(version)
    events = [room.create(ALICE), room.join(ALICE), room.power_levels(), room.join_rules("public")]
    events.append(room.event("m.room.message", ALICE, content={"body": "hi"}))
    for event in events:
        check_pdu_format(event.pdu, room.room_version)


@pytest.mark.parametrize(
    "key",
    [
        "type",
        "room_id",
        "sender",
        "content",
        "depth",
        "origin_server_ts",
        "hashes",
        "signatures",
        "prev_events",
        "auth_events",
    ],
)
@pytest.mark.parametrize("version", ["1", "4", "12"])
def test_missing_required_field(version, key):
    pdu = _message_pdu(version)
    del pdu[key]
    _rejects(pdu, version)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("type", 5),
        ("room_id", None),
        ("sender", "alice"),
        ("sender", "@alice"),
        ("content", []),
        ("depth", "1"),
        ("depth", True),
        ("depth", -1),
        ("origin_server_ts", "now"),
        ("origin_server_ts", False),
        ("hashes", {}),
        ("hashes", {"sha256": 1}),
        ("signatures", []),
        ("signatures", {"test": "sig"}),
        ("signatures", {"test": {"ed25519:a": 1}}),
        ("state_key", 1),
        ("unsigned", "x"),
        ("prev_events", "$x"),
    ],
)
def test_wrong_types(key, value):
    pdu = _message_pdu("10")
    pdu[key] = value
    _rejects(pdu, "10")


def test_v1_needs_event_id_and_pairs():
    pdu = _message_pdu("1")
    check_pdu_format(pdu, room_version("1"))
    no_id = dict(pdu)
    del no_id["event_id"]
    _rejects(no_id, "1")
    for bad in (
        ["$a:test"],
        [["$a:test"]],
        [["$a:test", "hash"]],
        [[1, {}]],
        [["$a", {"sha256": 1}]],
    ):
        _rejects({**pdu, "prev_events": bad}, "1")
    check_pdu_format({**pdu, "prev_events": [["$a:test", {}]]}, room_version("1"))


def test_v3_plus_uses_plain_id_lists():
    pdu = _message_pdu("4")
    _rejects({**pdu, "auth_events": [["$a", {"sha256": "x"}]]}, "4")


def test_redacts_must_be_string_before_v11():
    pdu = _message_pdu("10")
    _rejects({**pdu, "type": "m.room.redaction", "redacts": 5}, "10")
    pdu11 = _message_pdu("11")
    check_pdu_format({**pdu11, "redacts": 5}, room_version("11"))


def test_v12_create_has_no_room_id():
    room = RoomBuilder("12")
    create = dict(room.create(ALICE).pdu)
    check_pdu_format(create, room.room_version)
    _rejects({**create, "room_id": room.room_id}, "12")


def test_v12_create_event_not_listed_in_auth_events():
    room = RoomBuilder("12")
    create = room.create(ALICE)
    join = dict(room.join(ALICE).pdu)
    _rejects({**join, "auth_events": [create.event_id]}, "12")


def test_event_count_limits():
    pdu = _message_pdu("10")
    check_pdu_format({**pdu, "prev_events": [f"$p{i}" for i in range(20)]}, room_version("10"))
    too_many_prev = {**pdu, "prev_events": [f"$p{i}" for i in range(21)]}
    _rejects(too_many_prev, "10")
    check_pdu_format(too_many_prev, room_version("10"), backfilled=True)
    too_many_auth = {**pdu, "auth_events": [f"$a{i}" for i in range(11)]}
    _rejects(too_many_auth, "10")
    check_pdu_format(too_many_auth, room_version("10"), backfilled=True)


def test_depth_limits():
    pdu = _message_pdu("5")
    check_pdu_format({**pdu, "depth": 2**63 - 1}, room_version("5"))
    _rejects({**pdu, "depth": 2**63}, "5")
    pdu6 = _message_pdu("6")
    check_pdu_format({**pdu6, "depth": 2**53 - 1}, room_version("6"))
    _rejects({**pdu6, "depth": 2**53}, "6")


@pytest.mark.parametrize("key", ["type", "state_key", "sender", "room_id", "event_id"])
def test_255_byte_limits(key):
    pdu = _message_pdu("1")
    if key == "sender":
        long_value, ok_value = "@" + "a" * 250 + ":test", "@" + "a" * 249 + ":test"
    else:
        long_value, ok_value = "é" * 128, "é" * 127  # 256 vs 254 bytes, < 255 code points
    check_pdu_format({**pdu, key: ok_value}, room_version("1"))
    _rejects({**pdu, key: long_value}, "1")


def test_whole_event_size_limit_counts_signatures():
    pdu = _message_pdu("10")
    base = len(encode_canonical_json(pdu))  # body "hi" is 2 bytes
    fits = {**pdu, "content": {"body": "x" * (65536 - base + 2)}}
    assert len(encode_canonical_json(fits)) == 65536
    check_pdu_format(fits, room_version("10"))
    fits["signatures"] = {**fits["signatures"], "other": {"ed25519:x": "sig"}}
    _rejects(fits, "10")


def test_strict_canonical_json_from_v6():
    pdu = _message_pdu("5")
    check_pdu_format({**pdu, "content": {"n": 1.5, "big": 2**60}}, room_version("5"))
    pdu6 = _message_pdu("6")
    _rejects({**pdu6, "content": {"n": 1.5}}, "6")
    _rejects({**pdu6, "content": {"big": 2**60}}, "6")


def test_not_an_object():
    _rejects([], "10")
