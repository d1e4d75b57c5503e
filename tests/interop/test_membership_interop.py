"""Membership handshakes with a real Synapse, both ways, room versions 12 (default) and 10.

A whole mxfed runs (``MxfedProcess``); local mxfed users act through the
events and Membership gRPC services. Synapse users act through its client API.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from synapse_harness import SynapseClient, SynapseClientError, SynapseServer, wait_until

from mxfed_api.events.v1 import events_pb2, membership_pb2
from tests.support.mx import Mx

pytestmark = [pytest.mark.interop, pytest.mark.whole_stack]


async def _register(client: SynapseClient, name: str) -> tuple[str, str]:
    return await client.register(f"{name}_{secrets.token_hex(4)}")


def _text(body: str):  # noqa: ANN202
    return lambda ev: ev.get("type") == "m.room.message" and ev["content"].get("body") == body


def _member(user_id: str, membership: str):  # noqa: ANN202
    return lambda ev: (
        ev.get("type") == "m.room.member"
        and ev.get("state_key") == user_id
        and ev["content"].get("membership") == membership
    )


# (1) a Synapse user joins a room hosted by mxfed ----------------------------------------


@pytest.mark.parametrize("version", ["12", "10"])
async def test_synapse_user_joins_mxfed_room_by_id_and_alias(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient, version: str
) -> None:
    alice = mx.user("alice")
    localpart = f"pub{secrets.token_hex(3)}"
    room_id = await mx.create_room(alice, version=version, alias=localpart)
    bob, bob_token = await _register(synapse_client, "bob")
    assert await synapse_client.join(bob_token, room_id, via=[mx.server_name]) == room_id
    assert await mx.membership_of(room_id, bob) == "join"
    # Synapse → mxfed
    await synapse_client.send_message(bob_token, room_id, "hello from synapse")
    await wait_until(lambda: _contains(mx.bodies(room_id), "hello from synapse"), timeout=30)
    # mxfed → Synapse (through the sender service)
    await mx.send_text(room_id, alice, "hello from mxfed")
    await synapse_client.wait_for_event(bob_token, room_id, _text("hello from mxfed"), timeout=30)
    # A second Synapse user joins by alias (Synapse resolves it with query/directory).
    carol, carol_token = await _register(synapse_client, "carol")
    alias = f"#{localpart}:{mx.server_name}"
    assert await synapse_client.join(carol_token, alias) == room_id
    await wait_until(lambda: _is(mx.membership_of(room_id, carol), "join"), timeout=30)
    # (4) leaving: the Synapse user leaves the mxfed room.
    await synapse_client.leave(carol_token, room_id)
    await wait_until(lambda: _is(mx.membership_of(room_id, carol), "leave"), timeout=30)


async def _contains(awaitable: Any, value: Any) -> bool:
    return value in await awaitable


async def _is(awaitable: Any, value: Any) -> bool:
    return await awaitable == value


async def test_synapse_user_joins_by_alias_first(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient
) -> None:
    """The first join of Synapse into the room, by alias: directory query then make_join."""
    alice = mx.user("alice")
    localpart = f"first{secrets.token_hex(3)}"
    room_id = await mx.create_room(alice, alias=localpart)
    dan, dan_token = await _register(synapse_client, "dan")
    assert await synapse_client.join(dan_token, f"#{localpart}:{mx.server_name}") == room_id
    assert await mx.membership_of(room_id, dan) == "join"


# (2) an mxfed user joins a room hosted by Synapse -------------------------------------


async def _mxfed_joins_synapse_room(mx: Mx, client: SynapseClient, synapse: SynapseServer) -> None:
    owner, owner_token = await _register(client, "owner")
    room_id = await client.create_room(owner_token, preset="public_chat", name="Synapse room")
    await client.send_message(owner_token, room_id, "before the join")
    erin = mx.user("erin")
    reply = await mx.join(room_id, erin, [synapse.server_name])
    assert reply.room_id == room_id and reply.remote
    # Synapse serves omit_members: the join may be partial until its resync ends.
    await wait_until(lambda: mx.has_full_state(room_id), timeout=60)
    state = await mx.state(room_id)
    assert ("m.room.create", "") in state
    assert state[("m.room.name", "")]["content"]["name"] == "Synapse room"
    assert state[("m.room.member", erin)]["content"]["membership"] == "join"
    assert state[("m.room.member", owner)]["content"]["membership"] == "join"
    await client.wait_for_event(owner_token, room_id, _member(erin, "join"), timeout=30)
    # new messages flow Synapse → mxfed
    await client.send_message(owner_token, room_id, "after the join")
    await wait_until(lambda: _contains(mx.bodies(room_id), "after the join"), timeout=30)
    # and mxfed → Synapse
    await mx.send_text(room_id, erin, "hi from erin")
    await client.wait_for_event(owner_token, room_id, _text("hi from erin"), timeout=30)
    # (4) the mxfed user leaves the Synapse room
    leave = await mx.membership.PerformLeave(
        membership_pb2.PerformLeaveRequest(room_id=room_id, user_id=erin), timeout=60
    )
    assert leave.event_id
    await client.wait_for_event(owner_token, room_id, _member(erin, "leave"), timeout=30)


async def test_mxfed_user_joins_synapse_room(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient
) -> None:
    await _mxfed_joins_synapse_room(mx, synapse_client, synapse)


async def test_mxfed_user_joins_synapse_room_v10(
    mx: Mx, synapse_v10: SynapseServer, synapse_v10_client: SynapseClient
) -> None:
    await _mxfed_joins_synapse_room(mx, synapse_v10_client, synapse_v10)


async def test_mxfed_user_joins_synapse_room_by_alias(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient
) -> None:
    owner, owner_token = await _register(synapse_client, "owner")
    room_id = await synapse_client.create_room(owner_token, preset="public_chat")
    alias = f"#s{secrets.token_hex(3)}:{synapse.server_name}"
    await synapse_client.put_room_alias(owner_token, alias, room_id)
    frank = mx.user("frank")
    reply = await mx.join(alias, frank, [])
    assert reply.room_id == room_id
    assert await mx.membership_of(room_id, frank) == "join"


# (3) invites both ways ----------------------------------------------------------------


@pytest.mark.parametrize("version", ["12", "10"])
async def test_synapse_invites_mxfed_user_accept_and_reject(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient, version: str
) -> None:
    owner, owner_token = await _register(synapse_client, "owner")
    room_id = await synapse_client.create_room(
        owner_token, preset="private_chat", room_version=version
    )
    gina, hank = mx.user("gina"), mx.user("hank")
    await synapse_client.invite(owner_token, room_id, gina)
    await synapse_client.invite(owner_token, room_id, hank)

    async def invited(user_id: str) -> bool:
        reply = await mx.membership.QueryInvites(
            membership_pb2.QueryInvitesRequest(user_id=user_id)
        )
        return any(m.room_id == room_id and m.membership == "invite" for m in reply.memberships)

    await wait_until(lambda: invited(gina), timeout=30)
    await wait_until(lambda: invited(hank), timeout=30)
    # accepted: join through the inviter's server
    reply = await mx.join(room_id, gina, [])
    assert reply.remote and await mx.membership_of(room_id, gina) == "join"
    await synapse_client.wait_for_event(owner_token, room_id, _member(gina, "join"), timeout=30)
    # rejected: make_leave / send_leave
    # (hank rejects; mxfed is now in the room through gina, so this is a local leave that
    # the sender delivers — either way Synapse must see it)
    leave = await mx.membership.PerformLeave(
        membership_pb2.PerformLeaveRequest(room_id=room_id, user_id=hank), timeout=60
    )
    await synapse_client.wait_for_event(owner_token, room_id, _member(hank, "leave"), timeout=30)
    assert leave is not None


@pytest.mark.parametrize("version", ["12", "10"])
async def test_synapse_invite_rejected_out_of_room(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient, version: str
) -> None:
    owner, owner_token = await _register(synapse_client, "owner")
    room_id = await synapse_client.create_room(
        owner_token, preset="private_chat", room_version=version
    )
    ivan = mx.user("ivan")
    await synapse_client.invite(owner_token, room_id, ivan)

    async def invited() -> bool:
        reply = await mx.membership.QueryInvites(membership_pb2.QueryInvitesRequest(user_id=ivan))
        return any(m.room_id == room_id and m.membership == "invite" for m in reply.memberships)

    await wait_until(invited, timeout=30)
    leave = await mx.membership.PerformLeave(
        membership_pb2.PerformLeaveRequest(room_id=room_id, user_id=ivan), timeout=60
    )
    assert leave.event_id  # federated through make_leave/send_leave
    await synapse_client.wait_for_event(owner_token, room_id, _member(ivan, "leave"), timeout=30)


@pytest.mark.parametrize("version", ["12", "10"])
async def test_mxfed_invites_synapse_user_accept_and_reject(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient, version: str
) -> None:
    alice = mx.user("alice")
    room_id = await mx.create_room(alice, preset="private_chat", version=version)
    jill, jill_token = await _register(synapse_client, "jill")
    kate, kate_token = await _register(synapse_client, "kate")
    for target in (jill, kate):
        await mx.membership.PerformInvite(
            membership_pb2.PerformInviteRequest(room_id=room_id, sender=alice, target=target),
            timeout=60,
        )
        assert await mx.membership_of(room_id, target) == "invite"
    await synapse_client.wait_for_event(jill_token, room_id, _member(jill, "invite"), timeout=30)
    assert await synapse_client.join(jill_token, room_id, via=[mx.server_name]) == room_id
    assert await mx.membership_of(room_id, jill) == "join"
    await synapse_client.wait_for_event(kate_token, room_id, _member(kate, "invite"), timeout=30)
    await synapse_client.leave(kate_token, room_id)
    await wait_until(lambda: _is(mx.membership_of(room_id, kate), "leave"), timeout=30)


# (5) refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["12", "10"])
async def test_synapse_user_refused(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient, version: str
) -> None:
    alice = mx.user("alice")
    private = await mx.create_room(alice, preset="private_chat", version=version)
    leo, leo_token = await _register(synapse_client, "leo")
    with pytest.raises(SynapseClientError) as info:
        await synapse_client.join(leo_token, private, via=[mx.server_name])
    assert (info.value.status, info.value.errcode) == (403, "M_FORBIDDEN")

    banned_room = await mx.create_room(alice, version=version)
    await mx.events.PerformSendEvent(
        events_pb2.PerformSendEventRequest(
            room_id=banned_room,
            sender=alice,
            type="m.room.member",
            state_key=leo,
            content_json=orjson.dumps({"membership": "ban"}),
        ),
        timeout=30,
    )
    with pytest.raises(SynapseClientError) as info:
        await synapse_client.join(leo_token, banned_room, via=[mx.server_name])
    assert (info.value.status, info.value.errcode) == (403, "M_FORBIDDEN")

    acl_room = await mx.create_room(alice, version=version)
    await mx.send_state(
        acl_room, alice, "m.room.server_acl", {"allow": ["*"], "deny": ["127.0.0.1"]}
    )
    with pytest.raises(SynapseClientError) as info:
        await synapse_client.join(leo_token, acl_room, via=[mx.server_name])
    assert (info.value.status, info.value.errcode) == (403, "M_FORBIDDEN")


# (6) knocking both ways (room version 10, join rule "knock") ----------------------------


async def _synapse_knock(client: SynapseClient, token: str, room_id: str, via: str) -> str:
    resp = await client.request(
        "POST",
        f"/_matrix/client/v3/knock/{quote(room_id, safe='')}",
        token,
        json={"reason": "let me in"},
        params=[("via", via), ("server_name", via)],
    )
    return resp["room_id"]


async def test_mxfed_user_knocks_on_synapse_room_and_is_let_in(
    mx: Mx, synapse_v10: SynapseServer, synapse_v10_client: SynapseClient
) -> None:
    client = synapse_v10_client
    owner, owner_token = await _register(client, "owner")
    room_id = await client.create_room(
        owner_token,
        preset="private_chat",
        room_version="10",
        initial_state=[
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
        ],
    )
    lena = mx.user("lena")
    knock = await mx.membership.PerformKnock(
        membership_pb2.PerformKnockRequest(
            room_id_or_alias=room_id,
            user_id=lena,
            servers=[synapse_v10.server_name],
            reason="let me in",
        ),
        timeout=60,
    )
    assert knock.room_id == room_id and knock.event_id
    stripped = orjson.loads(knock.stripped_state_json)
    assert any(s["type"] == "m.room.join_rules" for s in stripped)
    seen = await client.wait_for_event(owner_token, room_id, _member(lena, "knock"), timeout=30)
    assert seen["content"].get("reason") == "let me in"
    # Synapse's user lets the knocker in; the invite reaches mxfed and is accepted.
    await client.invite(owner_token, room_id, lena)

    async def invited() -> bool:
        reply = await mx.membership.QueryInvites(membership_pb2.QueryInvitesRequest(user_id=lena))
        return any(m.room_id == room_id and m.membership == "invite" for m in reply.memberships)

    await wait_until(invited, timeout=30)
    reply = await mx.join(room_id, lena, [])
    assert reply.remote and await mx.membership_of(room_id, lena) == "join"
    await client.wait_for_event(owner_token, room_id, _member(lena, "join"), timeout=30)


async def test_synapse_user_knocks_on_mxfed_room_and_is_let_in(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient
) -> None:
    alice = mx.user("alice")
    room_id = await mx.create_room(alice, preset="private_chat", version="10")
    await mx.send_state(room_id, alice, "m.room.join_rules", {"join_rule": "knock"})
    mona, mona_token = await _register(synapse_client, "mona")
    assert await _synapse_knock(synapse_client, mona_token, room_id, mx.server_name) == room_id
    assert await mx.membership_of(room_id, mona) == "knock"
    await mx.membership.PerformInvite(
        membership_pb2.PerformInviteRequest(room_id=room_id, sender=alice, target=mona),
        timeout=60,
    )
    assert await mx.membership_of(room_id, mona) == "invite"
    await synapse_client.wait_for_event(mona_token, room_id, _member(mona, "invite"), timeout=30)
    assert await synapse_client.join(mona_token, room_id, via=[mx.server_name]) == room_id
    assert await mx.membership_of(room_id, mona) == "join"
