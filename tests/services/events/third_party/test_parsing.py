"""Pure parts of the third-party invite service: signed blocks, content, identity answers."""

from __future__ import annotations

import pytest

from matrix_protocol.membership import MembershipError
from services.events.third_party.identity import base_url, key_validity_url, parse_stored_invite
from services.events.third_party.logic import invite_content, invite_keys, parse_signed

SIGNED = {"mxid": "@a:b", "token": "t", "signatures": {"id": {"ed25519:0": "sig"}}}


def test_parse_signed() -> None:
    signed, mxid, token = parse_signed({"display_name": "x", "signed": SIGNED})
    assert (signed, mxid, token) == (SIGNED, "@a:b", "t")


@pytest.mark.parametrize(
    "third_party_invite",
    [
        None,
        {},
        {"signed": []},
        {"signed": {"mxid": "@a:b", "signatures": {}}},
        {"signed": {"token": "t", "signatures": {}}},
        {"signed": {"mxid": "@a:b", "token": "", "signatures": {}}},
        {"signed": {"mxid": "@a:b", "token": "t"}},
    ],
)
def test_parse_signed_refuses(third_party_invite: object) -> None:
    with pytest.raises(MembershipError) as error:
        parse_signed(third_party_invite)
    assert (error.value.status, error.value.errcode) == (400, "M_MISSING_PARAM")


def test_invite_content() -> None:
    assert invite_content("a...@b", SIGNED) == {
        "membership": "invite",
        "third_party_invite": {"display_name": "a...@b", "signed": SIGNED},
    }
    assert "display_name" not in invite_content(None, SIGNED)["third_party_invite"]


def test_base_url() -> None:
    assert base_url("id.example.org") == "https://id.example.org"
    assert base_url("127.0.0.1:8090/") == "https://127.0.0.1:8090"
    assert base_url("http://127.0.0.1:8090") == "http://127.0.0.1:8090"
    for bad in ("", "a/b", "user@host"):
        with pytest.raises(MembershipError):
            base_url(bad)


def test_key_validity_url_is_built_for_the_v2_api() -> None:
    assert key_validity_url("id.example.org") == (
        "https://id.example.org/_matrix/identity/v2/pubkey/isvalid"
    )
    assert key_validity_url("http://127.0.0.1:8090/") == (
        "http://127.0.0.1:8090/_matrix/identity/v2/pubkey/isvalid"
    )


def test_parse_stored_invite() -> None:
    ours = "https://id/_matrix/identity/v2/pubkey/isvalid"
    v1 = "https://id/_matrix/identity/api/v1/pubkey/isvalid"
    stored = parse_stored_invite(
        {
            "token": "tok",
            "display_name": "a...@b",
            "public_key": "long-term",
            "public_keys": [
                {"public_key": "k1", "key_validity_url": v1},
                {"public_key": "k2"},
                {"no": "key"},
            ],
        },
        ours,
    )
    assert stored.token == "tok"
    # The top-level URL is ours (v2), not a copy of one the server handed out.
    assert stored.event_content() == {
        "display_name": "a...@b",
        "public_key": "long-term",
        "key_validity_url": ours,
        "public_keys": [{"public_key": "k1", "key_validity_url": v1}, {"public_key": "k2"}],
    }
    first = parse_stored_invite({"token": "t", "public_keys": [{"public_key": "k1"}]}, ours)
    assert (first.public_key, first.key_validity_url) == ("k1", ours)
    legacy = parse_stored_invite({"token": "t", "public_key": "only"}, ours)
    assert legacy.public_keys == [{"public_key": "only"}]
    for bad in ({"public_key": "k"}, {"token": "t"}):
        with pytest.raises(MembershipError) as error:
            parse_stored_invite(bad, ours)
        assert error.value.status == 502


def test_invite_keys_top_level_first_then_public_keys_without_repeats() -> None:
    content = {
        "public_key": "k1",
        "key_validity_url": "https://id/v2",
        "public_keys": [
            {"public_key": "k1", "key_validity_url": "https://id/v1"},
            {"public_key": "k1", "key_validity_url": "https://id/v2"},
            {"public_key": "k2"},
            {"public_key": 5},
            "junk",
        ],
    }
    assert invite_keys(content) == [
        ("k1", "https://id/v2"),
        ("k1", "https://id/v1"),
        ("k2", ""),
    ]
    assert invite_keys({"public_keys": "junk"}) == []
