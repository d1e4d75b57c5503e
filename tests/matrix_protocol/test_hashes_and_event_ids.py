"""Content hashes, reference hashes, event IDs and v12 room IDs .

Spec: https://spec.matrix.org/v1.19/server-server-api/#signing-events and https://spec.matrix.org/v1.19/appendices/#room-ids
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matrix_protocol.canonical_json import encode_canonical_json
from matrix_protocol.encoding import decode_base64, encode_base64
from matrix_protocol.event_ids import compute_event_id, room_id_from_create_event
from matrix_protocol.events import Event
from matrix_protocol.hashes import (
    compute_content_hash,
    compute_reference_hash,
    content_hash_matches,
)
from matrix_protocol.redaction import redact
from matrix_protocol.room_versions import KNOWN_ROOM_VERSIONS, room_version
from matrix_protocol.signing import sign_event, verify_json_signature

SIGNING_KEY = nacl.signing.SigningKey(decode_base64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"))

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
V12_CREATE: dict[str, Any] = {
    "auth_events": [],
    "content": {"room_version": "12"},
    "depth": 1,
    "origin_server_ts": 1000000,
    "prev_events": [],
    "sender": "@a:domain",
    "state_key": "",
    "type": "m.room.create",
}
V12 = room_version("12")


def _b64(data: bytes) -> str:
    return encode_base64(data)


def test_content_hash_spec_vectors() -> None:
    assert _b64(compute_content_hash(MINIMAL_EVENT)) == (
        "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"
    )
    redactable = {
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
    assert _b64(compute_content_hash(redactable)) == "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"


def test_content_hash_ignores_unsigned_signatures_and_hashes() -> None:
    changed = MINIMAL_EVENT | {
        "unsigned": {"x": 1},
        "signatures": {"a": {}},
        "hashes": {"sha256": "x"},
    }
    assert compute_content_hash(changed) == compute_content_hash(MINIMAL_EVENT)
    assert compute_content_hash(MINIMAL_EVENT | {"depth": 4}) != compute_content_hash(MINIMAL_EVENT)


def test_content_hash_matches() -> None:
    signed = sign_event(MINIMAL_EVENT, SIGNING_KEY, "domain", "ed25519:1", room_version("10"))
    assert content_hash_matches(signed)
    assert content_hash_matches(signed | {"unsigned": {"changed": True}})
    assert not content_hash_matches(signed | {"content": {"body": "tampered"}})
    assert not content_hash_matches(MINIMAL_EVENT)  # hashes is {}
    no_hashes = {k: v for k, v in signed.items() if k != "hashes"}
    assert not content_hash_matches(no_hashes)
    for bad in ("not base64!", 5, None, "AAAA"):
        assert not content_hash_matches(signed | {"hashes": {"sha256": bad}})
    assert not content_hash_matches(signed | {"hashes": "sha256"})


def test_content_hash_of_old_room_floats() -> None:
    pdu = MINIMAL_EVENT | {"content": {"f": 1.5, "big": 2**64}}
    expected = hashlib.sha256(
        b'{"auth_events":[],"content":{"big":18446744073709551616,"f":1.5},"depth":3,'
        b'"origin":"domain","origin_server_ts":1000000,"prev_events":[],"room_id":"!x:domain",'
        b'"sender":"@a:domain","type":"X"}'
    ).digest()
    assert compute_content_hash(pdu) == expected


SIGNED_V10 = sign_event(MINIMAL_EVENT, SIGNING_KEY, "domain", "ed25519:1", room_version("10"))
SIGNED_V11 = sign_event(MINIMAL_EVENT, SIGNING_KEY, "domain", "ed25519:1", room_version("11"))


@pytest.mark.parametrize("version", ["3", "4", "5", "10"])
def test_derived_event_id_pre_v11_rules(version: str) -> None:
    event_id = compute_event_id(SIGNED_V10, room_version(version))
    assert event_id == "$8yif6p8EqgoSten2BLje9ntKm720NyFLWQv9tn8memc"


@pytest.mark.parametrize("version", ["11", "12"])
def test_derived_event_id_v11_rules(version: str) -> None:
    event_id = compute_event_id(SIGNED_V11, room_version(version))
    assert event_id == "$70O_oKlXzFbkfu0KE88USi98DjSWrOELrPj-8tisl8I"


def test_derived_v12_create_event_and_room_id() -> None:
    signed = sign_event(V12_CREATE, SIGNING_KEY, "domain", "ed25519:1", V12)
    assert signed["hashes"] == {"sha256": "ccqBumrNf46eCfIkdZSYW9RNafS0xFYYDm5rnZBSVJU"}
    assert signed["signatures"] == {
        "domain": {
            "ed25519:1": "0iTJ32BZFymf41Y7UBttP2wZ0JTo6UjsLDQuf+79LB+WeKVfoLyR2I8RF23ZdFgCuxtjVBl5MKXIOWP+ocELDw"  # noqa: E501 - exact vector
        }
    }
    assert compute_event_id(signed, V12) == "$P5-6WTYQ_woy6f4nmleE0XqxjtZcyKGza5_gDN-KAdM"
    assert room_id_from_create_event(signed, V12) == "!P5-6WTYQ_woy6f4nmleE0XqxjtZcyKGza5_gDN-KAdM"
    event = Event.from_pdu(signed, V12)
    assert event.room_id == room_id_from_create_event(signed, V12)
    verify_json_signature(redact(signed, V12), "domain", "ed25519:1", SIGNING_KEY.verify_key)


def test_room_id_from_create_event_needs_v12() -> None:
    with pytest.raises(ValueError, match="not derived"):
        room_id_from_create_event(V12_CREATE, room_version("11"))


@pytest.mark.parametrize("version", ["1", "2"])
def test_v1_v2_event_id_is_carried(version: str) -> None:
    pdu = MINIMAL_EVENT | {"event_id": "$abc:domain"}
    assert compute_event_id(pdu, room_version(version)) == "$abc:domain"
    with pytest.raises(ValueError, match="no string event_id"):
        compute_event_id(MINIMAL_EVENT, room_version(version))
    with pytest.raises(ValueError, match="no string event_id"):
        compute_event_id(MINIMAL_EVENT | {"event_id": 5}, room_version(version))


def test_v3_uses_standard_and_v4_url_safe_base64() -> None:
    for depth in range(200):
        pdu = MINIMAL_EVENT | {"depth": depth}
        v3_id = compute_event_id(pdu, room_version("3"))
        if "+" in v3_id or "/" in v3_id:
            break
    else:
        pytest.fail("no reference hash with '+' or '/' found")
    reference_hash = compute_reference_hash(pdu, room_version("3"))
    assert v3_id == "$" + encode_base64(reference_hash)
    v4_id = compute_event_id(pdu, room_version("4"))
    assert v4_id == "$" + encode_base64(reference_hash, urlsafe=True)
    assert v4_id == v3_id.replace("+", "-").replace("/", "_")


def test_reference_hash_definition() -> None:
    pdu = SIGNED_V10 | {"unsigned": {"age": 3}, "age_ts": 5, "content": {"body": "x"}}
    redacted = {k: v for k, v in redact(pdu, room_version("10")).items() if k != "signatures"}
    expected = hashlib.sha256(encode_canonical_json(redacted)).digest()
    assert compute_reference_hash(pdu, room_version("10")) == expected
    # Signatures, unsigned data and a local age_ts never change the ID.
    assert compute_reference_hash(pdu, room_version("10")) == compute_reference_hash(
        SIGNED_V10, room_version("10")
    )
    assert compute_reference_hash(
        SIGNED_V10 | {"signatures": {}}, room_version("10")
    ) == compute_reference_hash(SIGNED_V10, room_version("10"))


def test_event_id_in_v3_pdu_changes_the_id() -> None:
    # Why event_id must never be sent for v3+: redaction keeps it.
    with_id = SIGNED_V10 | {"event_id": "$8yif6p8EqgoSten2BLje9ntKm720NyFLWQv9tn8memc"}
    assert compute_event_id(with_id, room_version("10")) != compute_event_id(
        SIGNED_V10, room_version("10")
    )


content_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
event_types = st.sampled_from(
    [
        "m.room.member",
        "m.room.create",
        "m.room.join_rules",
        "m.room.power_levels",
        "m.room.aliases",
        "m.room.history_visibility",
        "m.room.redaction",
        "m.room.message",
    ]
)
content_keys = st.sampled_from(
    [
        "membership",
        "join_authorised_via_users_server",
        "third_party_invite",
        "creator",
        "join_rule",
        "allow",
        "users",
        "invite",
        "aliases",
        "history_visibility",
        "redacts",
        "body",
    ]
)


@given(
    st.sampled_from(sorted(KNOWN_ROOM_VERSIONS)),
    event_types,
    st.dictionaries(content_keys | st.text(max_size=5), content_values, max_size=6),
    st.dictionaries(st.sampled_from(["redacts", "membership", "prev_state", "x"]), content_values),
)
def test_event_id_equals_id_of_redacted_copy(
    version_id: str, event_type: str, content: dict[str, Any], extra: dict[str, Any]
) -> None:
    version = room_version(version_id)
    pdu = MINIMAL_EVENT | extra | {"type": event_type, "content": content, "state_key": ""}
    if not version.event_ids_are_computed:
        pdu["event_id"] = "$e:domain"
    signed = sign_event(pdu, SIGNING_KEY, "domain", "ed25519:1", version)
    redacted = redact(signed, version)
    assert compute_event_id(redacted, version) == compute_event_id(signed, version)
    assert redact(redacted, version) == redacted
    # Event signatures are always checked on the redacted copy.
    verify_json_signature(redacted, "domain", "ed25519:1", SIGNING_KEY.verify_key)


@given(
    st.sampled_from(sorted(KNOWN_ROOM_VERSIONS)),
    event_types,
    st.dictionaries(content_keys | st.text(max_size=5), content_values, max_size=6),
    st.dictionaries(st.sampled_from(["redacts", "membership", "prev_state", "x"]), content_values),
)
def test_hashes_of_a_validated_pdu_skip_only_the_validation(
    version_id: str, event_type: str, content: dict[str, Any], extra: dict[str, Any]
) -> None:
    """``validated=True`` (the format check validated the PDU) gives the same hashes and id."""
    version = room_version(version_id)
    pdu = MINIMAL_EVENT | extra | {"type": event_type, "content": content, "state_key": ""}
    if not version.event_ids_are_computed:
        pdu["event_id"] = "$e:domain"
    signed = sign_event(pdu, SIGNING_KEY, "domain", "ed25519:1", version)
    assert compute_event_id(signed, version, validated=True) == compute_event_id(signed, version)
    assert compute_content_hash(signed, validated=True) == compute_content_hash(signed)
    assert content_hash_matches(signed, validated=True)
    tampered = signed | {"content": {**content, "not generated": 1}}
    assert not content_hash_matches(tampered, validated=True)


# No deadline: the first example imports Synapse, which takes far longer
# than one example on a busy machine.
@settings(deadline=None)
@given(
    st.sampled_from([v for v in sorted(KNOWN_ROOM_VERSIONS) if v not in ("1", "2")]),
    event_types,
    st.dictionaries(content_keys | st.text(max_size=5), content_values, max_size=6),
    st.dictionaries(st.sampled_from(["redacts", "membership", "prev_state", "x"]), content_values),
)
def test_event_id_matches_synapse(
    version_id: str, event_type: str, content: dict[str, Any], extra: dict[str, Any]
) -> None:
    # Synapse (a test dependency) as an independent oracle for redaction and
    # reference hashing; it is only imported, never copied.
    synapse_events = pytest.importorskip("synapse.events")
    synapse_versions = pytest.importorskip("synapse.api.room_versions")
    pdu = MINIMAL_EVENT | extra | {"type": event_type, "content": content, "state_key": ""}
    if version_id == "12" and event_type == "m.room.create":
        del pdu["room_id"]  # v12 create events carry no room id
    theirs = synapse_events.make_event_from_dict(
        copy.deepcopy(pdu), synapse_versions.KNOWN_ROOM_VERSIONS[version_id]
    )
    assert compute_event_id(pdu, room_version(version_id)) == theirs.event_id
