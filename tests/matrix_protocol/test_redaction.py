"""The redaction algorithm per room version .

Spec: https://spec.matrix.org/v1.19/rooms/v11/#redactions and the same section of each room version.
"""

from __future__ import annotations

from typing import Any

import pytest

from matrix_protocol.redaction import redact
from matrix_protocol.room_versions import KNOWN_ROOM_VERSIONS, room_version

ALL_VERSIONS = sorted(KNOWN_ROOM_VERSIONS, key=int)
PRE_V11 = [v for v in ALL_VERSIONS if int(v) <= 10]
V11_ON = ["11", "12"]

TOP_LEVEL_V1 = {
    "event_id",
    "type",
    "room_id",
    "sender",
    "state_key",
    "content",
    "hashes",
    "signatures",
    "depth",
    "prev_events",
    "prev_state",
    "auth_events",
    "origin",
    "origin_server_ts",
    "membership",
}
TOP_LEVEL_V11 = TOP_LEVEL_V1 - {"origin", "membership", "prev_state"}
POWER_LEVEL_KEYS = {
    "ban",
    "events",
    "events_default",
    "kick",
    "redact",
    "state_default",
    "users",
    "users_default",
}


def _pdu(event_type: str, content: dict[str, Any]) -> dict[str, Any]:
    pdu = {key: f"value of {key}" for key in TOP_LEVEL_V1}
    pdu |= {
        "type": event_type,
        "content": content,
        "unsigned": {"age": 1},
        "age_ts": 5,
        "redacts": "$x",
        "outlier": True,
        "destinations": ["a"],
        "custom": 1,
    }
    return pdu


def _content(version: str, event_type: str, content: dict[str, Any]) -> dict[str, Any]:
    return redact(_pdu(event_type, content), room_version(version))["content"]


@pytest.mark.parametrize("version", PRE_V11)
def test_top_level_keys_v1_to_v10(version: str) -> None:
    redacted = redact(_pdu("m.room.message", {"body": "x"}), room_version(version))
    assert set(redacted) == TOP_LEVEL_V1
    assert redacted["origin"] == "value of origin"
    assert redacted["content"] == {}


@pytest.mark.parametrize("version", V11_ON)
def test_top_level_keys_v11_on(version: str) -> None:
    redacted = redact(_pdu("m.room.message", {"body": "x"}), room_version(version))
    assert set(redacted) == TOP_LEVEL_V11


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_member(version: str) -> None:
    content = {
        "membership": "join",
        "join_authorised_via_users_server": "@a:b",
        "displayname": "A",
        "third_party_invite": {"signed": {"token": "t"}, "display_name": "x"},
    }
    expected: dict[str, Any] = {"membership": "join"}
    if int(version) >= 9:
        expected["join_authorised_via_users_server"] = "@a:b"
    if int(version) >= 11:
        expected["third_party_invite"] = {"signed": {"token": "t"}}
    assert _content(version, "m.room.member", content) == expected


@pytest.mark.parametrize(
    ("third_party_invite", "expected"),
    [({"display_name": "x"}, {"third_party_invite": {}}), ("not an object", {})],
)
def test_member_v11_third_party_invite_without_signed(
    third_party_invite: Any, expected: dict[str, Any]
) -> None:
    content = {"membership": "invite", "third_party_invite": third_party_invite}
    assert _content("11", "m.room.member", content) == {"membership": "invite", **expected}


def test_member_v8_drops_join_authorised_via_users_server() -> None:
    # The v8 bug that v9 fixed.
    content = {"membership": "join", "join_authorised_via_users_server": "@a:b"}
    assert _content("8", "m.room.member", content) == {"membership": "join"}
    assert _content("9", "m.room.member", content) == content


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_create(version: str) -> None:
    content = {"creator": "@a:b", "room_version": version, "m.federate": False, "other": [1]}
    expected = content if int(version) >= 11 else {"creator": "@a:b"}
    assert _content(version, "m.room.create", content) == expected


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_join_rules(version: str) -> None:
    content = {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}], "x": 1}
    expected: dict[str, Any] = {"join_rule": "restricted"}
    if int(version) >= 8:
        expected["allow"] = [{"type": "m.room_membership"}]
    assert _content(version, "m.room.join_rules", content) == expected


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_power_levels(version: str) -> None:
    content = {key: 50 for key in POWER_LEVEL_KEYS | {"invite", "notifications", "x"}}
    expected_keys = POWER_LEVEL_KEYS | ({"invite"} if int(version) >= 11 else set())
    assert _content(version, "m.room.power_levels", content) == dict.fromkeys(expected_keys, 50)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_aliases(version: str) -> None:
    content = {"aliases": ["#a:b"], "x": 1}
    expected = {"aliases": ["#a:b"]} if int(version) <= 5 else {}
    assert _content(version, "m.room.aliases", content) == expected


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_history_visibility(version: str) -> None:
    content = {"history_visibility": "shared", "x": 1}
    assert _content(version, "m.room.history_visibility", content) == {
        "history_visibility": "shared"
    }


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_redaction_event(version: str) -> None:
    pdu = _pdu("m.room.redaction", {"redacts": "$x", "reason": "spam"})
    redacted = redact(pdu, room_version(version))
    assert redacted["content"] == ({"redacts": "$x"} if int(version) >= 11 else {})
    # The top-level `redacts` of v1–v10 is not a kept key in any version.
    assert "redacts" not in redacted


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_unlisted_type_loses_all_content(version: str) -> None:
    assert _content(version, "m.room.topic", {"topic": "x"}) == {}
    assert _content(version, "m.room.name", {"membership": "join"}) == {}


def test_missing_or_malformed_content_becomes_empty() -> None:
    pdu = {"type": "m.room.member", "sender": "@a:b"}
    assert redact(pdu, room_version("10")) == pdu | {"content": {}}
    assert redact(pdu | {"content": "x"}, room_version("11"))["content"] == {}
    assert redact({"type": 5, "content": {"a": 1}}, room_version("11"))["content"] == {}


def test_input_untouched_and_result_independent_at_top_level() -> None:
    pdu = _pdu("m.room.member", {"membership": "join", "displayname": "A"})
    before = {**pdu, "content": dict(pdu["content"])}
    redacted = redact(pdu, room_version("11"))
    redacted["content"]["membership"] = "leave"
    redacted["type"] = "changed"
    assert pdu == before


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_idempotent(version: str) -> None:
    pdu = _pdu(
        "m.room.member",
        {"membership": "invite", "third_party_invite": {"signed": {"a": 1}, "x": 2}, "d": 1},
    )
    once = redact(pdu, room_version(version))
    assert redact(once, room_version(version)) == once
