"""Verification of a third-party invite's ``signed`` block .

Spec: https://spec.matrix.org/v1.19/server-server-api/#verifying-the-invite
"""

from __future__ import annotations

import nacl.signing
import pytest

from matrix_protocol.encoding import encode_base64
from matrix_protocol.signing import sign_json
from matrix_protocol.third_party_invites import (
    third_party_invite_public_keys,
    verify_third_party_invite_signed,
)
from tests.support.room_builder import RoomBuilder

ALICE, BOB = "@alice:test", "@bob:elsewhere"


@pytest.fixture
def identity_key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


def _invite_event(content):
    room = RoomBuilder("10")
    room.create(ALICE)
    room.join(ALICE)
    return room.event("m.room.third_party_invite", ALICE, "tok", content)


def _signed(key: nacl.signing.SigningKey, mxid: str = BOB, token: str = "tok") -> dict:
    return sign_json({"mxid": mxid, "token": token, "sender": ALICE}, key, "id.test", "ed25519:0")


def _public(key: nacl.signing.SigningKey, *, urlsafe: bool = False) -> str:
    return encode_base64(bytes(key.verify_key), urlsafe=urlsafe)


def test_public_key_verifies(identity_key):
    event = _invite_event({"public_key": _public(identity_key)})
    assert verify_third_party_invite_signed(_signed(identity_key), event)


def test_public_keys_list_verifies(identity_key):
    other = nacl.signing.SigningKey.generate()
    event = _invite_event(
        {
            "public_key": _public(other),
            "public_keys": [{"public_key": "not base64!"}, {"public_key": _public(identity_key)}],
        }
    )
    assert verify_third_party_invite_signed(_signed(identity_key), event)


def test_url_safe_key_verifies():
    # Find a key whose base64 differs between alphabets so the test means something.
    while True:
        key = nacl.signing.SigningKey.generate()
        if _public(key) != _public(key, urlsafe=True):
            break
    event = _invite_event({"public_keys": [{"public_key": _public(key, urlsafe=True)}]})
    assert verify_third_party_invite_signed(_signed(key), event)


def test_wrong_key_fails(identity_key):
    event = _invite_event({"public_key": _public(nacl.signing.SigningKey.generate())})
    assert not verify_third_party_invite_signed(_signed(identity_key), event)


def test_tampered_signed_fails(identity_key):
    event = _invite_event({"public_key": _public(identity_key)})
    signed = _signed(identity_key)
    signed["mxid"] = "@mallory:test"
    assert not verify_third_party_invite_signed(signed, event)


@pytest.mark.parametrize(
    "signatures", [None, "x", {"id.test": "x"}, {"id.test": {"ed25519:0": 5}}, {}]
)
def test_malformed_signatures_fail(identity_key, signatures):
    event = _invite_event({"public_key": _public(identity_key)})
    signed = {"mxid": BOB, "token": "tok", "signatures": signatures}
    assert not verify_third_party_invite_signed(signed, event)


def test_no_keys_fails(identity_key):
    event = _invite_event({"public_keys": "nope"})
    assert third_party_invite_public_keys(event) == []
    assert not verify_third_party_invite_signed(_signed(identity_key), event)


def test_short_key_is_skipped(identity_key):
    event = _invite_event({"public_keys": [{"public_key": "AAAA"}, {}, 7]})
    assert not verify_third_party_invite_signed(_signed(identity_key), event)
