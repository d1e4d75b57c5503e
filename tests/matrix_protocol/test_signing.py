"""JSON and event signing, incl. every spec test vector.

Spec: https://spec.matrix.org/v1.19/appendices/#signing-json, https://spec.matrix.org/v1.19/server-server-api/#signing-events
and https://spec.matrix.org/v1.19/appendices/#cryptographic-test-vectors
"""

from __future__ import annotations

import copy
from typing import Any

import nacl.signing
import pytest
import signedjson.key
import signedjson.sign
from hypothesis import given
from hypothesis import strategies as st

from matrix_protocol.encoding import decode_base64, encode_base64
from matrix_protocol.event_ids import event_id_of_reference_json
from matrix_protocol.events import Event
from matrix_protocol.hashes import content_hash_matches, reference_json
from matrix_protocol.redaction import redact
from matrix_protocol.room_versions import room_version
from matrix_protocol.signing import (
    KEY_ID_PATTERN,
    POLICY_SERVER_KEY_ID,
    SignatureError,
    decode_verify_key,
    encode_verify_key,
    generate_signing_key,
    is_valid_key_id,
    sign_event,
    sign_json,
    sign_new_event,
    signatures_required_for_event,
    signing_payload,
    verifiable_key_ids,
    verify_json_signature,
)

SEED = decode_base64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
SIGNING_KEY = nacl.signing.SigningKey(SEED)
VERIFY_KEY = SIGNING_KEY.verify_key
SERVER = "domain"
KEY_ID = "ed25519:1"

MINIMAL_EVENT: dict[str, Any] = {
    "room_id": "!x:domain",
    "sender": "@a:domain",
    "origin": "domain",
    "origin_server_ts": 1000000,
    "signatures": {},
    "hashes": {},
    "type": "X",
    "content": {},
    "prev_events": [],
    "auth_events": [],
    "depth": 3,
    "unsigned": {"age_ts": 1000000},
}
MINIMAL_EVENT_SIGNED: dict[str, Any] = {
    "auth_events": [],
    "content": {},
    "depth": 3,
    "hashes": {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},
    "origin": "domain",
    "origin_server_ts": 1000000,
    "prev_events": [],
    "room_id": "!x:domain",
    "sender": "@a:domain",
    "signatures": {
        "domain": {
            "ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"  # noqa: E501 - exact vector
        }
    },
    "type": "X",
    "unsigned": {"age_ts": 1000000},
}
REDACTABLE_EVENT: dict[str, Any] = {
    "content": {"body": "Here is the message content"},
    "event_id": "$0:domain",
    "origin": "domain",
    "origin_server_ts": 1000000,
    "type": "m.room.message",
    "room_id": "!r:domain",
    "sender": "@u:domain",
    "signatures": {},
    "unsigned": {"age_ts": 1000000},
}


def test_spec_key() -> None:
    assert encode_verify_key(VERIFY_KEY) == "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"
    assert bytes(decode_verify_key("XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI")) == bytes(
        VERIFY_KEY
    )


def test_spec_vector_empty_object() -> None:
    signed = sign_json({}, SIGNING_KEY, SERVER, KEY_ID)
    assert signed == {
        "signatures": {
            "domain": {
                "ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"  # noqa: E501 - exact vector
            }
        }
    }
    verify_json_signature(signed, SERVER, KEY_ID, VERIFY_KEY)


def test_spec_vector_simple_object() -> None:
    obj = {"one": 1, "two": "Two"}
    signed = sign_json(obj, SIGNING_KEY, SERVER, KEY_ID)
    assert signed == {
        "one": 1,
        "signatures": {
            "domain": {
                "ed25519:1": "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"  # noqa: E501 - exact vector
            }
        },
        "two": "Two",
    }
    assert obj == {"one": 1, "two": "Two"}  # input untouched
    verify_json_signature(signed, SERVER, KEY_ID, VERIFY_KEY)


@pytest.mark.parametrize("version", ["1", "3", "4", "10"])
def test_spec_vector_minimal_event(version: str) -> None:
    original = copy.deepcopy(MINIMAL_EVENT)
    signed = sign_event(MINIMAL_EVENT, SIGNING_KEY, SERVER, KEY_ID, room_version(version))
    assert signed == MINIMAL_EVENT_SIGNED
    assert original == MINIMAL_EVENT
    assert content_hash_matches(signed)
    verify_json_signature(redact(signed, room_version(version)), SERVER, KEY_ID, VERIFY_KEY)


def test_spec_vector_redactable_event() -> None:
    signed = sign_event(REDACTABLE_EVENT, SIGNING_KEY, SERVER, KEY_ID, room_version("1"))
    assert signed == {
        **REDACTABLE_EVENT,
        "hashes": {"sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"},
        "signatures": {
            "domain": {
                "ed25519:1": "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"  # noqa: E501 - exact vector
            }
        },
    }
    # The signature covers the redacted form only: the body can go.
    redacted = redact(signed, room_version("1"))
    assert redacted["content"] == {}
    verify_json_signature(redacted, SERVER, KEY_ID, VERIFY_KEY)
    verify_json_signature(signed | {"content": {}}, SERVER, KEY_ID, VERIFY_KEY)


@pytest.mark.parametrize("version", ["11", "12"])
def test_derived_vector_minimal_event_v11_rules(version: str) -> None:
    signed = sign_event(MINIMAL_EVENT, SIGNING_KEY, SERVER, KEY_ID, room_version(version))
    assert signed["hashes"] == {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"}
    assert signed["signatures"] == {
        "domain": {
            "ed25519:1": "Jxp+1glFcZM+nnHpY0EkedRR7u0VmKsJYGnQqIvqus3UvL5X/p1y6wSkLhGoTBel6MZ9lrMIzUqrjqFquWJKBw"  # noqa: E501 - exact vector
        }
    }


def test_sign_event_keeps_other_signatures_and_hashes() -> None:
    other = generate_signing_key()
    pdu = sign_event(MINIMAL_EVENT, other, "other.example", "ed25519:o", room_version("10"))
    pdu["hashes"]["sha512"] = "x"
    signed = sign_event(pdu, SIGNING_KEY, SERVER, KEY_ID, room_version("10"))
    assert set(signed["signatures"]) == {"other.example", "domain"}
    assert signed["hashes"]["sha512"] == "x"
    assert "domain" not in pdu["signatures"]  # input untouched


@pytest.mark.parametrize("version", ["6", "10", "11", "12"])
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"state_key": "", "type": "m.room.join_rules", "content": {"join_rule": "public"}},
        {"content": {"body": "é \U0001f600", "n": [1, {"b": None, "a": True}]}},
        {"redacts": "$target", "type": "m.room.redaction"},
        {"unsigned": {"age": 5}, "hashes": {"sha512": "x"}},
    ],
)
def test_signing_a_new_event_once_gives_what_sign_event_and_the_event_id_give(
    version: str, extra: dict[str, Any]
) -> None:
    pdu = {key: value for key, value in MINIMAL_EVENT.items() if key != "signatures"}
    pdu.update(extra)
    pdu["prev_events"] = ["$prev"]
    original = copy.deepcopy(pdu)
    signed, reference = sign_new_event(pdu, SIGNING_KEY, SERVER, KEY_ID, room_version(version))
    assert signed == sign_event(pdu, SIGNING_KEY, SERVER, KEY_ID, room_version(version))
    assert pdu == original  # input untouched
    assert reference == reference_json(signed, room_version(version))
    assert Event.from_pdu(signed, room_version(version)).event_id == event_id_of_reference_json(
        reference, room_version(version)
    )


def test_signing_a_new_event_once_needs_a_strict_room_and_no_signatures() -> None:
    pdu = {key: value for key, value in MINIMAL_EVENT.items() if key != "signatures"}
    with pytest.raises(ValueError, match="room version 6"):
        sign_new_event(pdu, SIGNING_KEY, SERVER, KEY_ID, room_version("5"))
    with pytest.raises(ValueError, match="room version 6"):
        sign_new_event(MINIMAL_EVENT, SIGNING_KEY, SERVER, KEY_ID, room_version("10"))


def test_matches_signedjson() -> None:
    key = signedjson.key.decode_signing_key_base64("ed25519", "1", encode_base64(SEED))
    obj = {"b": [1, "é", {"\U0001f600": None}], "a": True, "unsigned": {"x": 1}}
    ours = sign_json(obj, SIGNING_KEY, SERVER, KEY_ID)
    theirs = signedjson.sign.sign_json(copy.deepcopy(obj), SERVER, key)
    assert ours == theirs
    assert ours["unsigned"] == {"x": 1}


def test_signing_payload_excludes_signatures_and_unsigned() -> None:
    payload = signing_payload({"b": 1, "a": 2, "signatures": {"x": {}}, "unsigned": {"y": 1}})
    assert payload == b'{"a":2,"b":1}'
    # Old rooms: floats and big ints are still signable.
    assert signing_payload({"f": 1.5, "i": 2**60}) == b'{"f":1.5,"i":1152921504606846976}'


def test_verify_failures() -> None:
    signed = sign_json({"a": 1}, SIGNING_KEY, SERVER, KEY_ID)
    with pytest.raises(SignatureError, match="no signature from other"):
        verify_json_signature(signed, "other", KEY_ID, VERIFY_KEY)
    with pytest.raises(SignatureError, match="no signature"):
        verify_json_signature(signed, SERVER, "ed25519:2", VERIFY_KEY)
    with pytest.raises(SignatureError, match="no signature"):
        verify_json_signature({"a": 1}, SERVER, KEY_ID, VERIFY_KEY)
    with pytest.raises(SignatureError, match="no signature"):
        verify_json_signature({"a": 1, "signatures": []}, SERVER, KEY_ID, VERIFY_KEY)
    with pytest.raises(SignatureError, match="bad signature"):
        verify_json_signature(signed | {"a": 2}, SERVER, KEY_ID, VERIFY_KEY)
    with pytest.raises(SignatureError, match="bad signature"):
        verify_json_signature(signed, SERVER, KEY_ID, generate_signing_key().verify_key)
    for garbage in ("!!!", 12, "AAAA"):
        bad = signed | {"signatures": {SERVER: {KEY_ID: garbage}}}
        with pytest.raises(SignatureError, match="not base64|wrong length"):
            verify_json_signature(bad, SERVER, KEY_ID, VERIFY_KEY)
    with pytest.raises(SignatureError, match="no canonical form"):
        verify_json_signature(signed | {"a": float("nan")}, SERVER, KEY_ID, VERIFY_KEY)


def test_unsigned_may_change() -> None:
    signed = sign_json({"a": 1}, SIGNING_KEY, SERVER, KEY_ID)
    verify_json_signature(signed | {"unsigned": {"age": 5}}, SERVER, KEY_ID, VERIFY_KEY)


@given(st.data())
def test_any_changed_byte_breaks_the_signature(data: st.DataObject) -> None:
    obj = {
        "type": "m.room.message",
        "content": {"body": data.draw(st.text(min_size=1), label="body")},
        "sender": "@alice:example.org",
    }
    signed = sign_json(obj, SIGNING_KEY, SERVER, KEY_ID)
    body = obj["content"]["body"]
    position = data.draw(st.integers(0, len(body) - 1), label="position")
    replacement = data.draw(
        st.characters(codec="utf-8").filter(lambda c: c != body[position]), label="char"
    )
    tampered = copy.deepcopy(signed)
    tampered["content"]["body"] = body[:position] + replacement + body[position + 1 :]
    with pytest.raises(SignatureError):
        verify_json_signature(tampered, SERVER, KEY_ID, VERIFY_KEY)
    verify_json_signature(signed, SERVER, KEY_ID, VERIFY_KEY)


def test_key_ids() -> None:
    assert KEY_ID_PATTERN.pattern == "ed25519:[a-zA-Z0-9_]+"
    for good in ("ed25519:1", "ed25519:a_B9", POLICY_SERVER_KEY_ID):
        assert is_valid_key_id(good)
    for bad in ("ed25519:", "ed25519:a-b", "curve25519:1", "ed25519:1\n", "1", None, "ed25519:é"):
        assert not is_valid_key_id(bad)
    with pytest.raises(ValueError, match="invalid key ID"):
        sign_json({}, SIGNING_KEY, SERVER, "ed25519:bad key")


def test_verifiable_key_ids_skip_policy_server_and_unknown_algorithms() -> None:
    obj = {
        "signatures": {
            "a.example": {
                "ed25519:1": "x",
                POLICY_SERVER_KEY_ID: "y",
                "rsa:2": "z",
                "ed25519:k_2": "",
            }
        }
    }
    assert verifiable_key_ids(obj, "a.example") == ["ed25519:1", "ed25519:k_2"]
    assert verifiable_key_ids(obj, "b.example") == []
    assert verifiable_key_ids({}, "a.example") == []


def test_verify_key_encoding() -> None:
    key = generate_signing_key()
    assert decode_verify_key(encode_verify_key(key.verify_key)) == key.verify_key
    assert len(encode_verify_key(key.verify_key)) == 43
    for bad in ("not base64!", "AAAA"):
        with pytest.raises(SignatureError):
            decode_verify_key(bad)


# Servers that must have signed (https://spec.matrix.org/v1.19/server-server-api/#validating-hashes-and-signatures-on-received-events)


def _event(version: str, pdu: dict[str, Any], event_id: str = "$e:ev.example") -> Event:
    return Event(pdu, room_version(version), event_id)


def test_required_sender_server() -> None:
    event = _event("10", {"type": "m.room.message", "sender": "@a:s.example", "content": {}})
    assert signatures_required_for_event(event) == {"s.example"}


def test_required_event_id_server_v1_v2_only() -> None:
    pdu = {"type": "m.room.message", "sender": "@a:s.example:8448", "content": {}}
    assert signatures_required_for_event(_event("1", pdu)) == {"s.example:8448", "ev.example"}
    assert signatures_required_for_event(_event("2", pdu)) == {"s.example:8448", "ev.example"}
    assert signatures_required_for_event(_event("3", pdu)) == {"s.example:8448"}


def test_required_authorising_server_for_restricted_joins() -> None:
    pdu = {
        "type": "m.room.member",
        "state_key": "@a:s.example",
        "sender": "@a:s.example",
        "content": {"membership": "join", "join_authorised_via_users_server": "@b:auth.example"},
    }
    assert signatures_required_for_event(_event("8", pdu)) == {"s.example", "auth.example"}
    assert signatures_required_for_event(_event("12", pdu)) == {"s.example", "auth.example"}
    assert signatures_required_for_event(_event("7", pdu)) == {"s.example"}
    leave = {**pdu, "content": {**pdu["content"], "membership": "leave"}}
    assert signatures_required_for_event(_event("9", leave)) == {"s.example"}


def test_required_third_party_invite_exception() -> None:
    pdu = {
        "type": "m.room.member",
        "state_key": "@c:t.example",
        "sender": "@a:s.example",
        "content": {"membership": "invite", "third_party_invite": {"signed": {}}},
    }
    assert signatures_required_for_event(_event("10", pdu)) == set()
    assert signatures_required_for_event(_event("1", pdu)) == {"ev.example"}
    plain_invite = {**pdu, "content": {"membership": "invite"}}
    assert signatures_required_for_event(_event("10", plain_invite)) == {"s.example"}


def test_required_malformed_sender() -> None:
    event = _event("10", {"type": "m.room.message", "sender": "nocolon", "content": {}})
    with pytest.raises(ValueError, match="no server name"):
        signatures_required_for_event(event)
