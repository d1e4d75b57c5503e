"""matrix_protocol.membership: templates, signed membership events, basic checks, room state."""

from __future__ import annotations

from typing import Any

import pytest

from matrix_protocol.event_ids import room_id_from_create_event
from matrix_protocol.events import Event
from matrix_protocol.membership import (
    MembershipError,
    build_event_from_template,
    build_template,
    check_membership_event,
    check_room_state_pdus,
    check_user_on_server,
    restricted_allow_rooms,
    stripped_state,
    supported_room_version_requested,
    validate_template,
)
from matrix_protocol.redaction import redact
from matrix_protocol.room_versions import room_version
from matrix_protocol.signing import generate_signing_key, sign_event, verify_json_signature

KEY = generate_signing_key()
KEY_ID = "ed25519:t"
RESIDENT = "resident.test"
REMOTE = "remote.test"
V10 = room_version("10")
V12 = room_version("12")
V1 = room_version("1")


def _signed(pdu: dict[str, Any], version=V10, server=RESIDENT) -> Event:
    signed = sign_event(pdu, KEY, server, KEY_ID, version)
    return Event.from_pdu(signed, version)


def _room(version=V10) -> tuple[str, Event]:
    content = {"room_version": version.identifier}
    pdu: dict[str, Any] = {
        "type": "m.room.create",
        "state_key": "",
        "sender": f"@alice:{RESIDENT}",
        "content": content,
        "prev_events": [],
        "auth_events": [],
        "depth": 1,
        "origin_server_ts": 1,
    }
    if version.room_id_from_create_event:
        create = _signed(pdu, version)
        return create.room_id, create
    if not version.creator_is_sender:
        content["creator"] = f"@alice:{RESIDENT}"
    pdu["room_id"] = f"!room:{RESIDENT}"
    if not version.event_ids_are_computed:
        pdu["event_id"] = f"$create:{RESIDENT}"
    return pdu["room_id"], _signed(pdu, version)


def _template(version=V10, membership="join") -> tuple[str, dict[str, Any], Event]:
    room_id, create = _room(version)
    template = build_template(
        version,
        room_id=room_id,
        user_id=f"@bob:{REMOTE}",
        membership=membership,
        prev_events=[create],
        auth_events=[create] if version.create_event_in_auth_events else [],
        depth=2,
        origin=RESIDENT,
        origin_server_ts=5,
    )
    return room_id, template, create


def test_template_shape() -> None:
    room_id, template, create = _template()
    assert template["type"] == "m.room.member"
    assert template["sender"] == template["state_key"] == f"@bob:{REMOTE}"
    assert template["content"] == {"membership": "join"}
    assert template["prev_events"] == [create.event_id]
    assert template["depth"] == 2 and template["origin"] == RESIDENT


def test_v1_template_cites_reference_hashes() -> None:
    _, template, create = _template(V1)
    entry = template["prev_events"][0]
    assert entry[0] == create.event_id and set(entry[1]) == {"sha256"}


def test_incompatible_version() -> None:
    supported_room_version_requested("10", ["9", "10"])
    with pytest.raises(MembershipError) as info:
        supported_room_version_requested("10", ["1"])
    assert info.value.errcode == "M_INCOMPATIBLE_ROOM_VERSION"
    assert info.value.extra == {"room_version": "10"}


@pytest.mark.parametrize(
    ("change", "ok"),
    [
        ({}, True),
        ({"room_id": "!other:x"}, False),
        ({"sender": "@eve:remote.test"}, False),
        ({"state_key": "@eve:remote.test"}, False),
        ({"type": "m.room.message"}, False),
        ({"content": {"membership": "leave"}}, False),
        ({"prev_events": "nope"}, False),
        ({"depth": -1}, False),
    ],
)
def test_validate_template(change: dict[str, Any], ok: bool) -> None:
    room_id, template, _ = _template()
    template.update(change)
    if ok:
        assert validate_template(
            template, room_id=room_id, user_id=f"@bob:{REMOTE}", membership="join"
        )
    else:
        with pytest.raises(MembershipError):
            validate_template(
                template, room_id=room_id, user_id=f"@bob:{REMOTE}", membership="join"
            )


def test_validate_template_not_an_object() -> None:
    with pytest.raises(MembershipError):
        validate_template([], room_id="!a:b", user_id="@u:b", membership="join")


@pytest.mark.parametrize("version", [V1, V10, V12])
def test_build_event_and_check_it(version) -> None:
    room_id, template, _ = _template(version)
    template["content"]["join_authorised_via_users_server"] = f"@alice:{RESIDENT}"
    event_id, pdu = build_event_from_template(
        template,
        version,
        origin=REMOTE,
        origin_server_ts=10,
        signing_key=KEY,
        key_id=KEY_ID,
        extra_content={"displayname": "Bob", "membership": "ban"},
        event_id_localpart="j1",
    )
    assert pdu["content"]["membership"] == "join"
    assert pdu["content"]["displayname"] == "Bob"
    assert pdu["origin"] == REMOTE
    verify_json_signature(redact(pdu, version), REMOTE, KEY_ID, KEY.verify_key)
    event = check_membership_event(
        pdu, version, origin=REMOTE, room_id=room_id, event_id=event_id, membership="join"
    )
    assert event.event_id == event_id
    with pytest.raises(MembershipError) as info:
        check_membership_event(
            pdu, version, origin=RESIDENT, room_id=room_id, event_id=event_id, membership="join"
        )
    assert info.value.errcode == "M_INVALID_PARAM"
    for kwargs in (
        {"room_id": "!x:y", "event_id": event_id, "membership": "join"},
        {"room_id": room_id, "event_id": "$other", "membership": "join"},
        {"room_id": room_id, "event_id": event_id, "membership": "leave"},
    ):
        with pytest.raises(MembershipError):
            check_membership_event(pdu, version, origin=REMOTE, **kwargs)


def test_v1_build_needs_localpart() -> None:
    _, template, _ = _template(V1)
    with pytest.raises(ValueError):
        build_event_from_template(
            template, V1, origin=REMOTE, origin_server_ts=1, signing_key=KEY, key_id=KEY_ID
        )


def test_check_membership_event_rejects_bad_shapes() -> None:
    with pytest.raises(MembershipError) as info:
        check_membership_event(
            "x", V10, origin=REMOTE, room_id="!a:b", event_id="$x", membership="join"
        )
    assert info.value.errcode == "M_BAD_JSON"
    with pytest.raises(MembershipError):
        check_membership_event(
            {"type": "m.room.member"},
            V10,
            origin=REMOTE,
            room_id="!a:b",
            event_id="$x",
            membership="join",
        )


def test_state_key_must_be_sender() -> None:
    room_id, template, _ = _template()
    template["state_key"] = f"@carol:{REMOTE}"
    event_id, pdu = build_event_from_template(
        template, V10, origin=REMOTE, origin_server_ts=1, signing_key=KEY, key_id=KEY_ID
    )
    with pytest.raises(MembershipError, match="state_key"):
        check_membership_event(
            pdu, V10, origin=REMOTE, room_id=room_id, event_id=event_id, membership="join"
        )


def test_invite_target_must_be_local() -> None:
    room_id, create = _room()
    pdu = {
        "room_id": room_id,
        "sender": f"@alice:{RESIDENT}",
        "state_key": f"@bob:{REMOTE}",
        "type": "m.room.member",
        "content": {"membership": "invite"},
        "prev_events": [create.event_id],
        "auth_events": [create.event_id],
        "depth": 2,
        "origin_server_ts": 3,
    }
    invite = _signed(pdu)
    check_membership_event(
        invite.pdu,
        V10,
        origin=RESIDENT,
        room_id=room_id,
        event_id=invite.event_id,
        membership="invite",
        local_server=REMOTE,
    )
    with pytest.raises(MembershipError, match="not on this server"):
        check_membership_event(
            invite.pdu,
            V10,
            origin=RESIDENT,
            room_id=room_id,
            event_id=invite.event_id,
            membership="invite",
            local_server="elsewhere.test",
        )


def test_user_on_server() -> None:
    check_user_on_server("@a:x.test", "x.test")
    with pytest.raises(MembershipError) as info:
        check_user_on_server("@a:y.test", "x.test")
    assert info.value.status == 403
    with pytest.raises(MembershipError) as info:
        check_user_on_server("nope", "x.test")
    assert info.value.status == 400


@pytest.mark.parametrize("version", [V10, V12])
def test_room_state_pdus(version) -> None:
    room_id, create = _room(version)
    if version.room_id_from_create_event:
        assert room_id == room_id_from_create_event(create.pdu, version)
    name = _signed(
        {
            "room_id": room_id,
            "sender": f"@alice:{RESIDENT}",
            "state_key": "",
            "type": "m.room.name",
            "content": {"name": "N"},
            "prev_events": [create.event_id],
            "auth_events": [] if version.room_id_from_create_event else [create.event_id],
            "depth": 2,
            "origin_server_ts": 3,
        },
        version,
    )
    events = check_room_state_pdus([create.pdu, name.pdu], version, room_id)
    assert [e.type for e in events] == ["m.room.create", "m.room.name"]
    assert stripped_state(events) == [
        {
            "type": "m.room.create",
            "state_key": "",
            "sender": f"@alice:{RESIDENT}",
            "content": create.pdu["content"],
        },
        {
            "type": "m.room.name",
            "state_key": "",
            "sender": f"@alice:{RESIDENT}",
            "content": {"name": "N"},
        },
    ]
    with pytest.raises(MembershipError, match="create"):
        check_room_state_pdus([name.pdu], version, room_id)
    with pytest.raises(MembershipError, match="another room"):
        check_room_state_pdus([create.pdu, name.pdu], version, "!other:x")
    with pytest.raises(MembershipError):
        check_room_state_pdus([{"type": "x"}], version, room_id)
    with pytest.raises(MembershipError):
        check_room_state_pdus("nope", version, room_id)


def test_restricted_allow_rooms() -> None:
    content = {
        "join_rule": "restricted",
        "allow": [
            {"type": "m.room_membership", "room_id": "!a:x"},
            {"type": "m.other", "room_id": "!b:x"},
            "junk",
            {"type": "m.room_membership"},
        ],
    }
    assert restricted_allow_rooms(content) == ["!a:x"]
    assert restricted_allow_rooms({}) == []
