"""Membership handshakes against a whole running mxfed, with a FakeHomeserver as the remote.

make_join/send_join, make_leave/send_leave, make_knock/send_knock, v1/v2
invites, query/directory: the happy paths and their error cases (never 500).
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from typing import Any
from urllib.parse import quote

import grpc
import orjson
import pytest
from aiohttp import web

from matrix_protocol.events import Event
from matrix_protocol.membership import build_event_from_template
from matrix_protocol.room_versions import room_version
from mxfed_api.events.v1 import events_pb2, membership_pb2, membership_pb2_grpc
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.scene import Room, Scene

pytestmark = pytest.mark.whole_stack

V1 = "/_matrix/federation/v1"
V2 = "/_matrix/federation/v2"
ALL_VERSIONS = "&".join(f"ver={v}" for v in range(1, 13))


def q(value: str) -> str:
    return quote(value, safe="")


@pytest.fixture(scope="module")
async def membership(scene: Scene) -> membership_pb2_grpc.MembershipStub:
    return membership_pb2_grpc.MembershipStub(scene.channel)


def user(scene: Scene, name: str | None = None) -> str:
    return scene.remote.user(name or "u" + secrets.token_hex(4))


async def make(scene: Scene, kind: str, room_id: str, user_id: str, query: str = "") -> Any:
    uri = f"{V1}/make_{kind}/{q(room_id)}/{q(user_id)}"
    if query:
        uri += "?" + query
    return await scene.get(uri)


def sign_template(scene: Scene, answer: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    version = room_version(answer["room_version"])
    return build_event_from_template(
        answer["event"],
        version,
        origin=scene.remote.server_name,
        origin_server_ts=scene.remote.next_ts(),
        signing_key=scene.remote.signing_key,
        key_id=scene.remote.key_id,
        event_id_localpart=secrets.token_hex(6),
    )


async def put(scene: Scene, uri: str, body: Any, server: FakeHomeserver | None = None) -> Any:
    server = server or scene.remote
    return await server.federation_request(
        scene.mxfed.federation_url, scene.mxfed.server_name, "PUT", uri, body
    )


async def remote_join(scene: Scene, room: Room, user_id: str, omit: bool = False) -> dict:
    response = await make(scene, "join", room.room_id, user_id, ALL_VERSIONS)
    assert response.status_code == 200, response.text
    event_id, pdu = sign_template(scene, response.json())
    uri = f"{V2}/send_join/{q(room.room_id)}/{q(event_id)}"
    if omit:
        uri += "?omit_members=true"
    response = await put(scene, uri, pdu)
    assert response.status_code == 200, response.text
    return {"event_id": event_id, "pdu": pdu, "answer": response.json()}


# make_join -------------------------------------------------------------------------


async def test_make_join_template(scene: Scene) -> None:
    room = await scene.create_room()
    bob = user(scene)
    response = await make(scene, "join", room.room_id, bob, ALL_VERSIONS)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["room_version"] == room.version.identifier
    event = body["event"]
    assert event["type"] == "m.room.member"
    assert event["sender"] == event["state_key"] == bob
    assert event["room_id"] == room.room_id
    assert event["content"]["membership"] == "join"
    assert event["origin"] == scene.mxfed.server_name
    info = await scene.events.QueryRoomInfo(
        events_pb2.QueryRoomInfoRequest(room_id=room.room_id), timeout=10
    )
    assert set(event["prev_events"]) == set(info.forward_extremities)
    assert event["depth"] == info.max_depth + 1
    state = await scene.current_state(room.room_id)
    assert state[("m.room.join_rules", "")] in event["auth_events"]
    assert state[("m.room.power_levels", "")] in event["auth_events"]


async def test_make_join_default_version_is_1(scene: Scene) -> None:
    room = await scene.create_room()
    response = await make(scene, "join", room.room_id, user(scene))
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_INCOMPATIBLE_ROOM_VERSION"
    assert response.json()["room_version"] == room.version.identifier


async def test_make_join_errors(scene: Scene) -> None:
    room = await scene.create_room()
    other = f"@eve:{scene.mxfed.server_name}"
    response = await make(scene, "join", room.room_id, other, ALL_VERSIONS)
    assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")
    response = await make(scene, "join", "!unknown:nowhere.test", user(scene), ALL_VERSIONS)
    assert (response.status_code, response.json()["errcode"]) == (404, "M_NOT_FOUND")
    response = await make(scene, "join", room.room_id, "not-a-user", ALL_VERSIONS)
    assert response.status_code == 400


async def test_make_join_invite_only_room_is_forbidden(scene: Scene) -> None:
    room = await scene.create_room(preset="private_chat")
    response = await make(scene, "join", room.room_id, user(scene), ALL_VERSIONS)
    assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")


async def test_make_join_banned_and_acl(scene: Scene) -> None:
    room = await scene.create_room()
    banned = user(scene)
    await scene.send_local(room, "m.room.member", {"membership": "ban"}, banned)
    response = await make(scene, "join", room.room_id, banned, ALL_VERSIONS)
    assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")
    await scene.send_local(room, "m.room.server_acl", {"allow": ["*"], "deny": ["127.0.0.1"]}, "")
    response = await make(scene, "join", room.room_id, user(scene), ALL_VERSIONS)
    assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")


async def test_make_join_unauthenticated(scene: Scene) -> None:
    import httpx

    room = await scene.create_room()
    async with httpx.AsyncClient(verify=False, timeout=10) as client:
        response = await client.get(
            f"{scene.mxfed.federation_url}{V1}/make_join/{q(room.room_id)}/{q(user(scene))}"
        )
    assert response.status_code == 401


# send_join -------------------------------------------------------------------------


async def test_send_join_full_handshake(scene: Scene) -> None:
    room = await scene.create_room()
    bob = user(scene)
    joined = await remote_join(scene, room, bob)
    answer = joined["answer"]
    state_types = {(pdu["type"], pdu["state_key"]) for pdu in answer["state"]}
    assert ("m.room.create", "") in state_types
    assert ("m.room.member", bob) not in state_types  # the state *before* the join
    assert ("m.room.member", room.creator) in state_types
    assert "members_omitted" not in answer
    state_ids = {Event.from_pdu(p, room.version).event_id for p in answer["state"]}
    chain_ids = {Event.from_pdu(p, room.version).event_id for p in answer["auth_chain"]}
    for pdu in answer["state"]:
        for auth_id in pdu["auth_events"]:
            assert auth_id in state_ids | chain_ids
    current = await scene.current_state(room.room_id)
    assert current[("m.room.member", bob)] == joined["event_id"]
    record = await scene.record(joined["event_id"])
    assert record is not None and record.status == events_pb2.EVENT_STATUS_ACCEPTED


async def test_send_join_is_idempotent(scene: Scene) -> None:
    room = await scene.create_room()
    joined = await remote_join(scene, room, user(scene))
    uri = f"{V2}/send_join/{q(room.room_id)}/{q(joined['event_id'])}"
    response = await put(scene, uri, joined["pdu"])
    assert response.status_code == 200
    assert len(response.json()["state"]) == len(joined["answer"]["state"])


async def test_send_join_omit_members(scene: Scene) -> None:
    room = await scene.create_room(name="Named")
    await remote_join(scene, room, user(scene))
    joined = await remote_join(scene, room, user(scene), omit=True)
    answer = joined["answer"]
    assert answer["members_omitted"] is True
    assert sorted(answer["servers_in_room"]) == sorted(
        {scene.mxfed.server_name, scene.remote.server_name}
    )
    assert not [p for p in answer["state"] if p["type"] == "m.room.member"]


async def test_send_join_omit_members_keeps_the_heroes_of_an_unnamed_room(scene: Scene) -> None:
    room = await scene.create_room()
    first, second = user(scene), user(scene)
    await remote_join(scene, room, first)
    await remote_join(scene, room, second)
    joined = await remote_join(scene, room, user(scene), omit=True)
    answer = joined["answer"]
    assert answer["members_omitted"] is True
    members = {p["state_key"] for p in answer["state"] if p["type"] == "m.room.member"}
    # Joined members in stream order (the creator first), never the joining user.
    assert members == {room.creator, first, second}


async def _signed_join(scene: Scene, room: Room, user_id: str) -> tuple[str, dict[str, Any]]:
    response = await make(scene, "join", room.room_id, user_id, ALL_VERSIONS)
    return sign_template(scene, response.json())


async def test_send_join_errors(scene: Scene) -> None:
    room = await scene.create_room()
    bob = user(scene)
    event_id, pdu = await _signed_join(scene, room, bob)
    base = f"{V2}/send_join/{q(room.room_id)}"
    # event ID not the path's
    response = await put(scene, f"{base}/{q('$other')}", pdu)
    assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM")
    # tampered: signature no longer verifies (content is hashed, so re-hash but keep signature)
    tampered = dict(pdu, origin_server_ts=pdu["origin_server_ts"] + 1)
    tampered_id = Event.from_pdu(tampered, room.version).event_id
    response = await put(scene, f"{base}/{q(tampered_id)}", tampered)
    assert response.status_code == 400
    # wrong room in the path
    response = await put(scene, f"{V2}/send_join/{q('!x:nowhere.test')}/{q(event_id)}", pdu)
    assert response.status_code == 404
    # not an object / not a join
    response = await put(scene, f"{base}/{q(event_id)}", [1, 2])
    assert response.status_code == 400
    leave_id, leave = sign_template(
        scene,
        {
            "room_version": room.version.identifier,
            "event": dict(pdu, content={"membership": "leave"}),
        },
    )
    response = await put(scene, f"{base}/{q(leave_id)}", leave)
    assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM")
    # garbage omit_members
    response = await put(scene, f"{base}/{q(event_id)}?omit_members=maybe", pdu)
    assert response.status_code == 400
    # none of that stored anything
    assert (await scene.current_state(room.room_id)).get(("m.room.member", bob)) is None


async def test_send_join_sender_from_another_server_is_refused(scene: Scene) -> None:
    other = FakeHomeserver(key_version="other2")
    await other.start()
    try:
        room = await scene.create_room()
        event_id, pdu = await _signed_join(scene, room, user(scene))
        response = await put(scene, f"{V2}/send_join/{q(room.room_id)}/{q(event_id)}", pdu, other)
        assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM")
    finally:
        await other.stop()


async def test_send_join_into_invite_only_room_is_forbidden(scene: Scene) -> None:
    public = await scene.create_room()
    bob = user(scene)
    event_id, pdu = await _signed_join(scene, public, bob)
    # Make the room invite-only between make_join and send_join.
    await scene.send_local(public, "m.room.join_rules", {"join_rule": "invite"}, "")
    response = await put(scene, f"{V2}/send_join/{q(public.room_id)}/{q(event_id)}", pdu)
    assert response.status_code == 403
    assert (await scene.current_state(public.room_id)).get(("m.room.member", bob)) is None


async def test_deprecated_v1_send_join_answers_the_v1_array(scene: Scene) -> None:
    """Older servers still call v1 send_join: same checks and storage, ``[200, {...}]`` back."""
    room = await scene.create_room()
    bob = user(scene)
    event_id, pdu = await _signed_join(scene, room, bob)
    response = await put(scene, f"{V1}/send_join/{q(room.room_id)}/{q(event_id)}", pdu)
    assert response.status_code == 200, response.text
    code, answer = response.json()
    assert code == 200
    state_types = {(p["type"], p["state_key"]) for p in answer["state"]}
    assert ("m.room.create", "") in state_types and ("m.room.member", room.creator) in state_types
    chain_ids = {Event.from_pdu(p, room.version).event_id for p in answer["auth_chain"]}
    state_ids = {Event.from_pdu(p, room.version).event_id for p in answer["state"]}
    for state_pdu in answer["state"]:
        assert set(state_pdu["auth_events"]) <= state_ids | chain_ids
    assert "members_omitted" not in answer  # v1 has no omit_members: always the full state
    assert (await scene.current_state(room.room_id))[("m.room.member", bob)] == event_id
    record = await scene.record(event_id)
    assert record is not None and record.status == events_pb2.EVENT_STATUS_ACCEPTED


async def test_deprecated_v1_send_join_errors_are_matrix_errors(scene: Scene) -> None:
    room = await scene.create_room()
    bob = user(scene)
    event_id, pdu = await _signed_join(scene, room, bob)
    response = await put(scene, f"{V1}/send_join/{q(room.room_id)}/{q('$other')}", pdu)
    assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM")
    response = await put(scene, f"{V1}/send_join/{q('!x:nowhere.test')}/{q(event_id)}", pdu)
    assert (response.status_code, response.json()["errcode"]) == (404, "M_NOT_FOUND")
    await scene.send_local(room, "m.room.server_acl", {"allow": ["*"], "deny": [
        scene.remote.server_name.split(":")[0]]}, "")  # fmt: skip
    response = await put(scene, f"{V1}/send_join/{q(room.room_id)}/{q(event_id)}", pdu)
    assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")
    assert (await scene.current_state(room.room_id)).get(("m.room.member", bob)) is None


# leave -----------------------------------------------------------------------------


async def test_make_and_send_leave(scene: Scene) -> None:
    room = await scene.create_room()
    bob = user(scene)
    await remote_join(scene, room, bob)
    response = await make(scene, "leave", room.room_id, bob)
    assert response.status_code == 200, response.text
    assert response.json()["event"]["content"]["membership"] == "leave"
    event_id, pdu = sign_template(scene, response.json())
    response = await put(scene, f"{V2}/send_leave/{q(room.room_id)}/{q(event_id)}", pdu)
    assert response.status_code == 200, response.text
    assert response.json() == {}
    assert (await scene.current_state(room.room_id))[("m.room.member", bob)] == event_id


async def test_deprecated_v1_send_leave_answers_the_v1_array(scene: Scene) -> None:
    room = await scene.create_room()
    bob = user(scene)
    await remote_join(scene, room, bob)
    response = await make(scene, "leave", room.room_id, bob)
    event_id, pdu = sign_template(scene, response.json())
    response = await put(scene, f"{V1}/send_leave/{q(room.room_id)}/{q(event_id)}", pdu)
    assert response.status_code == 200, response.text
    assert response.json() == [200, {}]
    assert (await scene.current_state(room.room_id))[("m.room.member", bob)] == event_id
    response = await put(scene, f"{V1}/send_leave/{q(room.room_id)}/{q('$other')}", pdu)
    assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM")


async def test_make_leave_when_not_in_room(scene: Scene) -> None:
    room = await scene.create_room()
    response = await make(scene, "leave", room.room_id, user(scene))
    assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")


# knock -----------------------------------------------------------------------------


async def test_knock(scene: Scene) -> None:
    room = await scene.create_room()
    await scene.send_local(room, "m.room.join_rules", {"join_rule": "knock"}, "")
    bob = user(scene)
    response = await make(scene, "knock", room.room_id, bob)
    assert (response.status_code, response.json()["errcode"]) == (400, "M_MISSING_PARAM")
    response = await make(scene, "knock", room.room_id, bob, "ver=6")
    assert response.json()["errcode"] == "M_INCOMPATIBLE_ROOM_VERSION"
    response = await make(scene, "knock", room.room_id, bob, ALL_VERSIONS)
    assert response.status_code == 200, response.text
    event_id, pdu = sign_template(scene, response.json())
    response = await put(scene, f"{V1}/send_knock/{q(room.room_id)}/{q(event_id)}", pdu)
    assert response.status_code == 200, response.text
    state = response.json()["knock_room_state"]
    assert "m.room.create" in {p["type"] for p in state}
    assert all("signatures" in p for p in state)
    assert (await scene.current_state(room.room_id))[("m.room.member", bob)] == event_id


async def test_knock_on_public_room_is_forbidden(scene: Scene) -> None:
    room = await scene.create_room()
    response = await make(scene, "knock", room.room_id, user(scene), ALL_VERSIONS)
    assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")


# invites we receive ----------------------------------------------------------------


def remote_room_invite(
    scene: Scene, target: str, version_id: str = "10"
) -> tuple[str, str, dict[str, Any], list[dict[str, Any]]]:
    """A room on the fake remote (create, join, join rules) and an invite of ``target``."""
    version = room_version(version_id)
    remote = scene.remote
    alice = remote.user("alice")
    room_id = f"!r{secrets.token_hex(6)}:{remote.server_name}"
    create_content: dict[str, Any] = {"room_version": version_id}
    if not version.creator_is_sender:
        create_content["creator"] = alice
    create_id, create = remote.build_pdu(
        version,
        room_id=room_id,
        sender=alice,
        event_type="m.room.create",
        content=create_content,
        prev_events=[],
        auth_events=[],
        depth=1,
        state_key="",
    )
    join_id, join = remote.build_pdu(
        version,
        room_id=room_id,
        sender=alice,
        event_type="m.room.member",
        content={"membership": "join"},
        prev_events=[create_id],
        auth_events=[create_id],
        depth=2,
        state_key=alice,
    )
    rules_id, rules = remote.build_pdu(
        version,
        room_id=room_id,
        sender=alice,
        event_type="m.room.join_rules",
        content={"join_rule": "invite"},
        prev_events=[join_id],
        auth_events=[create_id, join_id],
        depth=3,
        state_key="",
    )
    invite_id, invite = remote.build_pdu(
        version,
        room_id=room_id,
        sender=alice,
        event_type="m.room.member",
        content={"membership": "invite"},
        prev_events=[rules_id],
        auth_events=[create_id, join_id, rules_id],
        depth=4,
        state_key=target,
    )
    return room_id, invite_id, invite, [create, rules]


async def test_receive_invite_v2(
    scene: Scene, membership: membership_pb2_grpc.MembershipStub
) -> None:
    carol = f"@carol{secrets.token_hex(3)}:{scene.mxfed.server_name}"
    room_id, invite_id, invite, state = remote_room_invite(scene, carol)
    body = {"room_version": "10", "event": invite, "invite_room_state": state}
    response = await put(scene, f"{V2}/invite/{q(room_id)}/{q(invite_id)}", body)
    assert response.status_code == 200, response.text
    returned = response.json()["event"]
    assert scene.mxfed.server_name in returned["signatures"]
    assert (
        returned["signatures"][scene.remote.server_name]
        == invite["signatures"][scene.remote.server_name]
    )
    assert {k: v for k, v in returned.items() if k != "signatures"} == {
        k: v for k, v in invite.items() if k != "signatures"
    }
    reply = await membership.QueryInvites(membership_pb2.QueryInvitesRequest(user_id=carol))
    (entry,) = reply.memberships
    assert (entry.room_id, entry.membership, entry.event_id) == (room_id, "invite", invite_id)
    assert entry.via_server == scene.remote.server_name
    stripped = orjson.loads(entry.stripped_state_json)
    assert {s["type"] for s in stripped} == {"m.room.create", "m.room.join_rules", "m.room.member"}
    assert all("signatures" not in s for s in stripped)


async def test_receive_invite_v1(scene: Scene) -> None:
    carol = f"@carol{secrets.token_hex(3)}:{scene.mxfed.server_name}"
    version = room_version("1")
    remote = scene.remote
    alice = remote.user("alice")
    room_id = f"!v1{secrets.token_hex(5)}:{remote.server_name}"
    invite = remote.sign_pdu(
        {
            "room_id": room_id,
            "sender": alice,
            "type": "m.room.member",
            "state_key": carol,
            "content": {"membership": "invite"},
            "prev_events": [],
            "auth_events": [],
            "depth": 4,
            "origin_server_ts": remote.next_ts(),
            "event_id": f"$inv{secrets.token_hex(4)}:{remote.server_name}",
        },
        version,
    )
    invite["unsigned"] = {"invite_room_state": []}
    response = await put(scene, f"{V1}/invite/{q(room_id)}/{q(invite['event_id'])}", invite)
    assert response.status_code == 200, response.text
    status, body = response.json()
    assert status == 200 and scene.mxfed.server_name in body["event"]["signatures"]


async def test_receive_invite_errors(scene: Scene) -> None:
    carol = f"@carol:{scene.mxfed.server_name}"
    room_id, invite_id, invite, state = remote_room_invite(scene, carol)
    uri = f"{V2}/invite/{q(room_id)}/{q(invite_id)}"
    response = await put(scene, uri, {"room_version": "99", "event": invite})
    assert response.status_code == 400
    assert response.json() == {
        "errcode": "M_INCOMPATIBLE_ROOM_VERSION",
        "error": response.json()["error"],
        "room_version": "99",
    }
    response = await put(scene, uri, {"event": invite})
    assert (response.status_code, response.json()["errcode"]) == (400, "M_MISSING_PARAM")
    # invitee not on this server
    room2, invite2_id, invite2, _ = remote_room_invite(scene, scene.remote.user("dave"))
    response = await put(
        scene, f"{V2}/invite/{q(room2)}/{q(invite2_id)}", {"room_version": "10", "event": invite2}
    )
    assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM")
    # bad signature
    forged = dict(invite, signatures={scene.remote.server_name: {scene.remote.key_id: "AAAA"}})
    response = await put(scene, uri, {"room_version": "10", "event": forged})
    assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM")


async def test_reject_invite_through_the_inviter(
    scene: Scene, membership: membership_pb2_grpc.MembershipStub
) -> None:
    """PerformLeave on a received invite: make_leave/send_leave on the inviting server."""
    carol = f"@carol{secrets.token_hex(3)}:{scene.mxfed.server_name}"
    room_id, invite_id, invite, state = remote_room_invite(scene, carol)
    body = {"room_version": "10", "event": invite, "invite_room_state": state}
    assert (await put(scene, f"{V2}/invite/{q(room_id)}/{q(invite_id)}", body)).status_code == 200
    reply = await membership.PerformLeave(
        membership_pb2.PerformLeaveRequest(room_id=room_id, user_id=carol), timeout=60
    )
    # The fake remote serves no make_leave: the rejection is recorded locally.
    assert reply.event_id == ""
    invites = await membership.QueryInvites(membership_pb2.QueryInvitesRequest(user_id=carol))
    assert [m.membership for m in invites.memberships] == ["leave"]


# invites we send -------------------------------------------------------------------


async def test_perform_invite_local_and_errors(
    scene: Scene, membership: membership_pb2_grpc.MembershipStub
) -> None:
    room = await scene.create_room(preset="private_chat")
    dave = f"@dave:{scene.mxfed.server_name}"
    reply = await membership.PerformInvite(
        membership_pb2.PerformInviteRequest(room_id=room.room_id, sender=room.creator, target=dave)
    )
    assert (await scene.current_state(room.room_id))[("m.room.member", dave)] == reply.event_id
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await membership.PerformInvite(
            membership_pb2.PerformInviteRequest(room_id=room.room_id, sender=dave, target="bad")
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# query/directory -------------------------------------------------------------------


async def test_query_directory(scene: Scene) -> None:
    localpart = "room" + secrets.token_hex(3)
    reply = await scene.events.PerformCreateRoom(
        events_pb2.PerformCreateRoomRequest(
            creator=scene.creator, preset="public_chat", alias_localpart=localpart
        ),
        timeout=30,
    )
    alias = f"#{localpart}:{scene.mxfed.server_name}"
    response = await scene.get(f"{V1}/query/directory?room_alias={q(alias)}")
    assert response.status_code == 200, response.text
    assert response.json()["room_id"] == reply.room_id
    assert scene.mxfed.server_name in response.json()["servers"]
    response = await scene.get(
        f"{V1}/query/directory?room_alias={q('#nope:' + scene.mxfed.server_name)}"
    )
    assert (response.status_code, response.json()["errcode"]) == (404, "M_NOT_FOUND")
    response = await scene.get(f"{V1}/query/directory?room_alias={q('#a:elsewhere.test')}")
    assert response.status_code == 404
    response = await scene.get(f"{V1}/query/directory")
    assert (response.status_code, response.json()["errcode"]) == (400, "M_MISSING_PARAM")


# helpers used above ---------------------------------------------------------------


# on-behalf delivery ---------------------------------------------------------------


async def test_a_join_accepted_via_send_join_reaches_the_other_servers(scene: Scene) -> None:
    """A join accepted via send_join reaches the room's other servers through the sender."""
    received: list[dict[str, Any]] = []

    async def on_send(request: web.Request) -> web.Response:
        received.extend((await request.json()).get("pdus", []))
        return web.json_response({"pdus": {}})

    watcher = FakeHomeserver(key_version="watch1")
    watcher.route("PUT", "/_matrix/federation/v1/send/{txn_id}", on_send)
    await watcher.start()
    try:
        room = await scene.create_room()
        await scene.join(room, watcher.user("wendy"), server=watcher)
        joined = await remote_join(scene, room, user(scene))

        async def delivered() -> bool:
            return any(
                Event.from_pdu(pdu, room.version).event_id == joined["event_id"] for pdu in received
            )

        for _ in range(100):
            if await delivered():
                break
            await asyncio.sleep(0.2)
        assert await delivered()
    finally:
        await watcher.stop()


# the mxfed CLI ---------------------------------------------------------------------


async def _cli(scene: Scene, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mxfed.cli", "--config", str(scene.mxfed.config_path), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


async def test_cli_invite_join_leave_and_invites(scene: Scene) -> None:
    room = await scene.create_room(preset="private_chat")
    mia = f"@mia:{scene.mxfed.server_name}"
    code, out, err = await _cli(scene, "invite", room.room_id, mia, "--sender", room.creator)
    assert code == 0, err
    assert "invited" in out
    code, out, err = await _cli(scene, "join", room.room_id, "--user", mia, "--json")
    assert code == 0, err
    assert orjson.loads(out)["remote"] is False
    code, out, err = await _cli(scene, "leave", room.room_id, "--user", mia)
    assert code == 0, err
    assert (await scene.current_state(room.room_id))[("m.room.member", mia)]
    code, out, err = await _cli(scene, "join", "!nowhere:elsewhere.invalid", "--user", mia)
    assert code == 1 and err.startswith("M_")
    code, out, err = await _cli(scene, "invites", "--json")
    assert code == 0, err


# restricted rooms ------------------------------------------------------------------


async def test_restricted_join_is_authorised_and_countersigned(scene: Scene) -> None:
    space = await scene.create_room(room_version="10")
    restricted = await scene.create_room(room_version="10")
    await scene.send_local(
        restricted,
        "m.room.join_rules",
        {
            "join_rule": "restricted",
            "allow": [{"type": "m.room_membership", "room_id": space.room_id}],
        },
        "",
    )
    outsider = user(scene)
    response = await make(scene, "join", restricted.room_id, outsider, ALL_VERSIONS)
    assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")
    unknown = await scene.create_room(room_version="10")
    await scene.send_local(
        unknown,
        "m.room.join_rules",
        {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": "!x:y.z"}]},
        "",
    )
    response = await make(scene, "join", unknown.room_id, outsider, ALL_VERSIONS)
    assert response.json()["errcode"] == "M_UNABLE_TO_AUTHORISE_JOIN"

    member = user(scene)
    await remote_join(scene, space, member)
    response = await make(scene, "join", restricted.room_id, member, ALL_VERSIONS)
    assert response.status_code == 200, response.text
    template = response.json()["event"]
    assert template["content"]["join_authorised_via_users_server"] == restricted.creator
    event_id, pdu = sign_template(scene, response.json())
    response = await put(scene, f"{V2}/send_join/{q(restricted.room_id)}/{q(event_id)}", pdu)
    assert response.status_code == 200, response.text
    returned = response.json()["event"]
    assert scene.mxfed.server_name in returned["signatures"]
    assert Event.from_pdu(returned, restricted.version).event_id == event_id
    assert (await scene.current_state(restricted.room_id))[("m.room.member", member)] == event_id
