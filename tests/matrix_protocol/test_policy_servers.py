"""matrix_protocol.policy_servers: m.room.policy validity, exemptions, signatures."""

from __future__ import annotations

from typing import Any

import pytest

from matrix_protocol.events import Event
from matrix_protocol.policy_servers import (
    POLICY_SERVER_KEY_ID,
    PolicyServer,
    has_valid_policy_signature,
    needs_policy_signature,
    policy_server_from_content,
    with_policy_signature,
)
from matrix_protocol.redaction import redact
from matrix_protocol.room_versions import room_version
from matrix_protocol.signing import encode_verify_key, generate_signing_key, sign_event, sign_json

VERSION = room_version("11")
KEY = generate_signing_key()
PUBLIC = encode_verify_key(KEY.verify_key)
VIA = "policy.example"


def _event(content: dict[str, Any] | None = None) -> dict[str, Any]:
    pdu = {
        "room_id": "!r:origin.example",
        "type": "m.room.message",
        "sender": "@a:origin.example",
        "content": content or {"body": "hi"},
        "depth": 5,
        "origin_server_ts": 1,
        "prev_events": ["$p"],
        "auth_events": ["$a"],
    }
    return sign_event(pdu, generate_signing_key(), "origin.example", "ed25519:o", VERSION)


def _policy_signature(pdu: dict[str, Any], key: Any = KEY) -> str:
    signed = sign_json(redact(pdu, VERSION), key, VIA, POLICY_SERVER_KEY_ID)
    return signed["signatures"][VIA][POLICY_SERVER_KEY_ID]


@pytest.mark.parametrize(
    "content",
    [
        {},
        {"via": VIA},
        {"via": 3, "public_keys": {"ed25519": PUBLIC}},
        {"via": "not a server name", "public_keys": {"ed25519": PUBLIC}},
        {"via": VIA, "public_keys": []},
        {"via": VIA, "public_keys": {"curve25519": PUBLIC}},
        {"via": VIA, "public_keys": {"ed25519": 7}},
        {"via": VIA, "public_keys": {"ed25519": "not-base64!"}},
        {"via": VIA, "public_keys": {"ed25519": "AAAA"}},  # not 32 bytes
    ],
)
def test_invalid_policy_content_means_no_policy_server(content: dict[str, Any]) -> None:
    assert policy_server_from_content(content) is None


def test_valid_policy_content() -> None:
    content = {"via": VIA, "public_keys": {"ed25519": PUBLIC, "other": "x"}, "extra": 1}
    assert policy_server_from_content(content) == PolicyServer(VIA, PUBLIC)


def test_only_the_policy_state_event_itself_is_exempt() -> None:
    assert not needs_policy_signature("m.room.policy", "")
    assert needs_policy_signature("m.room.policy", "other")
    assert needs_policy_signature("m.room.policy", None)
    assert needs_policy_signature("m.room.member", "@a:origin.example")
    assert needs_policy_signature("m.room.message", None)


def test_signature_from_an_answer_is_merged_and_verified() -> None:
    pdu = _event()
    policy = PolicyServer(VIA, PUBLIC)
    event = Event.from_pdu(pdu, VERSION)
    assert not has_valid_policy_signature(event, policy)
    merged = with_policy_signature(
        pdu, {VIA: {POLICY_SERVER_KEY_ID: _policy_signature(pdu)}}, policy
    )
    assert merged is not None
    assert merged["signatures"]["origin.example"] == pdu["signatures"]["origin.example"]
    assert has_valid_policy_signature(Event(merged, VERSION, event.event_id), policy)
    # The event id does not change: signatures are not part of it.
    assert Event.from_pdu(merged, VERSION).event_id == event.event_id


def test_answers_without_a_signature() -> None:
    policy = PolicyServer(VIA, PUBLIC)
    pdu = _event()
    for answer in ({}, [], {VIA: {}}, {VIA: {"ed25519:other": "x"}}, {"else.example": {}}):
        assert with_policy_signature(pdu, answer, policy) is None


def test_wrong_key_or_changed_content_does_not_verify() -> None:
    policy = PolicyServer(VIA, PUBLIC)
    pdu = _event()
    other = _policy_signature(pdu, generate_signing_key())
    forged = with_policy_signature(pdu, {VIA: {POLICY_SERVER_KEY_ID: other}}, policy)
    assert forged is not None
    assert not has_valid_policy_signature(Event.from_pdu(forged, VERSION), policy)
    good = with_policy_signature(pdu, {VIA: {POLICY_SERVER_KEY_ID: _policy_signature(pdu)}}, policy)
    assert good is not None
    changed = {**good, "depth": 6}
    assert not has_valid_policy_signature(Event.from_pdu(changed, VERSION), policy)
    # The content is redacted away before signing, like any event signature.
    redacted_content = {**good, "content": {"body": "edited"}}
    assert has_valid_policy_signature(Event.from_pdu(redacted_content, VERSION), policy)
