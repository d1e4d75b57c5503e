"""Third-party invites between two running mxfed servers and a test identity server.

Alice on A invites an email address; the identity server binds it to Bob on
B and calls B's ``3pid/onbind``; B is not in the room, so it asks A with
``exchange_third_party_invite``; A checks the signed block, builds the
invite, has B countersign it (v2 invite) and accepts it; Bob then joins.
A replayed onbind (the same signed token) is refused by A: a token is
consumed once (a service-level check; the auth rules allow the reuse).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
import pytest

from mxfed_api.events.v1 import (
    events_pb2,
    events_pb2_grpc,
    membership_pb2,
    membership_pb2_grpc,
    third_party_pb2,
    third_party_pb2_grpc,
)
from tests.support.databases import create_database, drop_database
from tests.support.identity_server import IdentityServer
from tests.support.mxfed_process import MxfedProcess
from tests.support.polling import wait_until

pytestmark = pytest.mark.whole_stack


@dataclass
class Server:
    process: MxfedProcess
    channel: grpc.aio.Channel

    @property
    def name(self) -> str:
        return self.process.server_name

    def user(self, localpart: str) -> str:
        return f"@{localpart}:{self.name}"

    @property
    def events(self) -> events_pb2_grpc.EventsStub:
        return events_pb2_grpc.EventsStub(self.channel)

    @property
    def membership(self) -> membership_pb2_grpc.MembershipStub:
        return membership_pb2_grpc.MembershipStub(self.channel)

    @property
    def third_party(self) -> third_party_pb2_grpc.ThirdPartyInvitesStub:
        return third_party_pb2_grpc.ThirdPartyInvitesStub(self.channel)

    async def member(self, room_id: str, user_id: str) -> dict[str, Any] | None:
        reply = await self.events.QueryCurrentState(
            events_pb2.QueryCurrentStateRequest(
                room_id=room_id,
                filter=[events_pb2.StateKeyFilter(type="m.room.member", state_key=user_id)],
            ),
            timeout=10,
        )
        return orjson.loads(reply.events[0].pdu_json) if reply.events else None


@dataclass
class Pair:
    a: Server
    b: Server
    identity: IdentityServer


@pytest.fixture(scope="module")
async def pair(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pair]:
    urls = [await create_database("mxfed_3pid_a"), await create_database("mxfed_3pid_b")]
    identity = IdentityServer()
    await identity.start()
    processes = [
        MxfedProcess(tmp_path_factory.mktemp(f"3pid-{n}") / "mxfed", url)
        for n, url in zip("ab", urls, strict=True)
    ]
    started: list[MxfedProcess] = []
    try:
        for process in processes:
            await asyncio.to_thread(process.start)
            started.append(process)
        channels = [p.channel("events") for p in processes]
        yield Pair(Server(processes[0], channels[0]), Server(processes[1], channels[1]), identity)
        for channel in channels:
            await channel.close()
    finally:
        for process in started:
            await asyncio.to_thread(process.stop)
        await identity.stop()
        for url in urls:
            await drop_database(url)


async def test_email_invite_bound_on_another_server_is_exchanged(pair: Pair) -> None:
    a, b, identity = pair.a, pair.b, pair.identity
    alice, bob = a.user("alice"), b.user("bob")
    room = await a.events.PerformCreateRoom(
        events_pb2.PerformCreateRoomRequest(creator=alice, preset="private_chat", name="3pid"),
        timeout=30,
    )
    room_id = room.room_id
    invite = await a.third_party.PerformThirdPartyInvite(
        third_party_pb2.PerformThirdPartyInviteRequest(
            room_id=room_id,
            sender=alice,
            id_server=identity.host,
            medium="email",
            address="bob@example.org",
        ),
        timeout=60,
    )
    assert invite.token and invite.display_name == "bo...@example.org"
    assert identity.invites[-1].request["room_name"] == "3pid"
    body = identity.onbind_body("email", "bob@example.org", bob)

    # The identity server binds the address: onbind on B → exchange on A → v2 invite to B.
    response = await identity.bind("email", "bob@example.org", bob)
    assert response.status_code == 200, response.text

    member = await a.member(room_id, bob)
    assert member is not None and member["sender"] == alice
    assert member["content"]["membership"] == "invite"
    assert member["content"]["third_party_invite"]["signed"]["token"] == invite.token
    assert set(member["signatures"]) == {a.name, b.name}
    invites = await b.membership.QueryInvites(
        membership_pb2.QueryInvitesRequest(user_id=bob), timeout=10
    )
    ours = [m for m in invites.memberships if m.room_id == room_id]
    assert len(ours) == 1 and ours[0].membership == "invite" and ours[0].sender == alice
    stored = orjson.loads(ours[0].event_json)
    assert stored["content"]["third_party_invite"]["display_name"] == "bo...@example.org"

    # Bob accepts: an ordinary join through A.
    joined = await b.membership.PerformJoin(
        membership_pb2.PerformJoinRequest(room_id_or_alias=room_id, user_id=bob, servers=[a.name]),
        timeout=60,
    )
    assert joined.remote

    async def bob_joined() -> bool:
        event = await a.member(room_id, bob)
        return bool(event) and event["content"]["membership"] == "join"

    await wait_until(bob_joined, 20, 0.2, what="A has bob joined")

    # The same signed token replayed through B's onbind: A refuses it (consumed),
    # B reports it as refused (permanent, so the HTTP answer stays 200).
    replay = await b.third_party.ReceiveOnBind(
        third_party_pb2.ReceiveOnBindRequest(body_json=orjson.dumps(body)), timeout=60
    )
    assert [o.result for o in replay.outcomes] == ["refused"]
    assert "already used" in replay.outcomes[0].error
    assert (await a.member(room_id, bob))["content"]["membership"] == "join"


async def test_onbind_when_the_inviter_server_is_unreachable_is_retryable(pair: Pair) -> None:
    b, identity = pair.b, pair.identity
    carol = b.user("carol")
    body = {
        "medium": "email",
        "address": "carol@example.org",
        "mxid": carol,
        "invites": [
            {
                "medium": "email",
                "address": "carol@example.org",
                "mxid": carol,
                "room_id": "!room:127.0.0.1:1",
                "sender": "@inviter:127.0.0.1:1",
                "signed": identity.sign_for(carol, "tok"),
            }
        ],
    }
    reply = await b.third_party.ReceiveOnBind(
        third_party_pb2.ReceiveOnBindRequest(body_json=orjson.dumps(body)), timeout=90
    )
    assert [o.result for o in reply.outcomes] == ["failed"]


async def test_onbind_for_another_servers_user_is_refused(pair: Pair) -> None:
    a, b, identity = pair.a, pair.b, pair.identity
    dave = a.user("dave")  # not B's user
    body = identity.onbind_body("email", "nobody@example.org", dave)
    body["invites"] = [
        {
            "medium": "email",
            "address": "nobody@example.org",
            "mxid": dave,
            "room_id": "!x:" + b.name,
            "sender": b.user("x"),
            "signed": identity.sign_for(dave, "t"),
        }
    ]
    reply = await b.third_party.ReceiveOnBind(
        third_party_pb2.ReceiveOnBindRequest(body_json=orjson.dumps(body)), timeout=30
    )
    assert [o.result for o in reply.outcomes] == ["refused"]
    assert reply.outcomes[0].error.startswith("M_INVALID_PARAM")
