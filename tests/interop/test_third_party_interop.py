"""Third-party (email) invites between mxfed and a real Synapse, through the test
identity server (``tests/support/identity_server.py``, which binds as Sydent
does, without mail).

* Synapse room: a Synapse user invites an email address (Synapse → identity
  server lookup + store-invite); the address binds to an mxfed user; the
  identity server calls mxfed's ``3pid/onbind``; mxfed is not in the room and
  calls Synapse's ``exchange_third_party_invite``; Synapse sends mxfed the
  invite (v2 invite) and the mxfed user joins.
* mxfed room: an mxfed user invites an email address (PerformThirdPartyInvite);
  it binds to a Synapse user; Synapse's onbind calls mxfed's
  ``exchange_third_party_invite``; mxfed checks, builds, has Synapse countersign
  and accepts the invite; the Synapse user joins.

Synapse gets ``use_insecure_ssl_client_just_for_testing_do_not_use`` so that it
talks HTTPS to the self-signed identity server (it always uses https:// for
identity servers).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote

import grpc
import httpx
import orjson
import pytest
from synapse_harness import SynapseClient, SynapseClientError, SynapseServer, wait_until

from mxfed_api.events.v1 import (
    events_pb2,
    events_pb2_grpc,
    membership_pb2,
    membership_pb2_grpc,
    third_party_pb2,
    third_party_pb2_grpc,
)
from tests.support.identity_server import IdentityServer
from tests.support.mxfed_process import MxfedProcess

pytestmark = [pytest.mark.interop, pytest.mark.whole_stack]


@pytest.fixture(scope="module")
def synapse_3pid() -> Iterator[SynapseServer]:
    server = SynapseServer(
        extra_config={"use_insecure_ssl_client_just_for_testing_do_not_use": True}
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def identity() -> AsyncIterator[IdentityServer]:
    async with IdentityServer() as server:
        yield server


@pytest.fixture
async def client(synapse_3pid: SynapseServer) -> AsyncIterator[SynapseClient]:
    async with synapse_3pid.client() as synapse_client:
        yield synapse_client


@pytest.fixture
async def channel(mxfed: MxfedProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with mxfed.channel("events") as events_channel:
        yield events_channel


async def identity_access_token(
    client: SynapseClient, token: str, user_id: str, identity: IdentityServer
) -> str:
    """What a Synapse client does: an OpenID token, registered with the identity server."""
    openid = await client.request(
        "POST", f"/_matrix/client/v3/user/{quote(user_id, safe='')}/openid/request_token",
        token, json={},
    )  # fmt: skip
    async with httpx.AsyncClient(verify=False, timeout=30) as http:
        answer = await http.post(
            identity.base_url + "/_matrix/identity/v2/account/register", json=openid
        )
    assert answer.status_code == 200, answer.text
    return answer.json()["token"]


async def test_synapse_room_email_invite_bound_to_an_mxfed_user(
    client: SynapseClient,
    synapse_3pid: SynapseServer,
    mxfed: MxfedProcess,
    identity: IdentityServer,
    channel: grpc.aio.Channel,
) -> None:
    alice, token = await client.register(f"alice{secrets.token_hex(3)}")
    room_id = await client.create_room(token, preset="private_chat", name="email room")
    id_access_token = await identity_access_token(client, token, alice, identity)
    address = f"bob{secrets.token_hex(3)}@example.org"
    await client.request(
        "POST", f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/invite", token,
        json={"id_server": identity.host, "id_access_token": id_access_token,
              "medium": "email", "address": address},
    )  # fmt: skip
    assert identity.invites and identity.invites[-1].room_id == room_id

    bob = f"@bob{secrets.token_hex(3)}:{mxfed.server_name}"
    response = await identity.bind("email", address, bob)
    assert response.status_code == 200, response.text

    membership = membership_pb2_grpc.MembershipStub(channel)

    async def invited() -> list:
        reply = await membership.QueryInvites(
            membership_pb2.QueryInvitesRequest(user_id=bob), timeout=10
        )
        return [m for m in reply.memberships if m.room_id == room_id and m.membership == "invite"]

    (invite,) = await wait_until(invited, timeout=30)
    assert invite.sender == alice
    event = orjson.loads(invite.event_json)
    assert event["content"]["third_party_invite"]["signed"]["mxid"] == bob
    joined = await membership.PerformJoin(
        membership_pb2.PerformJoinRequest(
            room_id_or_alias=room_id, user_id=bob, servers=[synapse_3pid.server_name]
        ),
        timeout=120,
    )
    assert joined.remote

    async def bob_joined_on_synapse() -> bool:
        state = await client.state(token, room_id)
        return any(
            e["type"] == "m.room.member"
            and e["state_key"] == bob
            and e["content"]["membership"] == "join"
            for e in state
        )

    await wait_until(bob_joined_on_synapse, timeout=30)


async def test_mxfed_room_email_invite_bound_to_a_synapse_user(
    client: SynapseClient,
    synapse_3pid: SynapseServer,
    mxfed: MxfedProcess,
    identity: IdentityServer,
    channel: grpc.aio.Channel,
) -> None:
    events = events_pb2_grpc.EventsStub(channel)
    alice = f"@alice{secrets.token_hex(3)}:{mxfed.server_name}"
    room = await events.PerformCreateRoom(
        events_pb2.PerformCreateRoomRequest(creator=alice, preset="private_chat"), timeout=30
    )
    address = f"carol{secrets.token_hex(3)}@example.org"
    await third_party_pb2_grpc.ThirdPartyInvitesStub(channel).PerformThirdPartyInvite(
        third_party_pb2.PerformThirdPartyInviteRequest(
            room_id=room.room_id,
            sender=alice,
            id_server=identity.host,
            medium="email",
            address=address,
        ),
        timeout=60,
    )
    carol, carol_token = await client.register(f"carol{secrets.token_hex(3)}")
    # Not invited yet: the room is invite-only.
    with pytest.raises(SynapseClientError):
        await client.join(carol_token, room.room_id, via=[mxfed.server_name])

    response = await identity.bind("email", address, carol)
    assert response.status_code == 200, response.text

    async def member() -> dict | None:
        reply = await events.QueryCurrentState(
            events_pb2.QueryCurrentStateRequest(
                room_id=room.room_id,
                filter=[events_pb2.StateKeyFilter(type="m.room.member", state_key=carol)],
            ),
            timeout=10,
        )
        return orjson.loads(reply.events[0].pdu_json) if reply.events else None

    invite = await wait_until(member, timeout=30)
    assert invite["content"]["membership"] == "invite" and invite["sender"] == alice
    assert invite["content"]["third_party_invite"]["signed"]["mxid"] == carol
    assert set(invite["signatures"]) == {mxfed.server_name, synapse_3pid.server_name}

    await client.join(carol_token, room.room_id, via=[mxfed.server_name])

    async def carol_joined() -> bool:
        event = await member()
        return bool(event) and event["content"]["membership"] == "join"

    await wait_until(carol_joined, timeout=30)
