"""``PUT 3pid/onbind`` and ``PUT exchange_third_party_invite`` against a whole
running mxfed: a test identity server stores the invite (registering with an
OpenID token mxfed mints), a FakeHomeserver plays the invitee's server (it
signs the X-Matrix exchange requests and countersigns the v2 invite)."""

from __future__ import annotations

import asyncio
import copy
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import grpc
import httpx
import orjson
import pytest
from aiohttp import web

from matrix_protocol.redaction import redact
from matrix_protocol.room_versions import room_version
from matrix_protocol.signing import generate_signing_key, sign_json
from mxfed_api.events.v1 import (
    events_pb2,
    events_pb2_grpc,
    third_party_pb2,
    third_party_pb2_grpc,
)
from tests.support.databases import create_database, drop_database
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.identity_server import KEY_ID, IdentityServer
from tests.support.mxfed_process import MxfedProcess

pytestmark = pytest.mark.whole_stack

V1 = "/_matrix/federation/v1"


@dataclass
class World:
    mxfed: MxfedProcess
    remote: FakeHomeserver
    identity: IdentityServer
    # Like Sydent with enable_v1_access = false: hands out v1 key validity URLs, which 404.
    picky: IdentityServer
    invites_received: list[Any]
    events: events_pb2_grpc.EventsStub
    third_party: third_party_pb2_grpc.ThirdPartyInvitesStub

    @property
    def alice(self) -> str:
        return f"@alice:{self.mxfed.server_name}"

    async def request(self, method: str, uri: str, content: Any = None) -> httpx.Response:
        return await self.remote.federation_request(
            self.mxfed.federation_url, self.mxfed.server_name, method, uri, content
        )

    async def create_room(self, creator: str = "") -> str:
        reply = await self.events.PerformCreateRoom(
            events_pb2.PerformCreateRoomRequest(
                creator=creator or self.alice, preset="private_chat"
            ),
            timeout=30,
        )
        return reply.room_id

    async def invite_email(
        self, room_id: str, address: str, sender: str = "", identity: IdentityServer | None = None
    ) -> str:
        reply = await self.third_party.PerformThirdPartyInvite(
            third_party_pb2.PerformThirdPartyInviteRequest(
                room_id=room_id,
                sender=sender or self.alice,
                id_server=(identity or self.identity).host,
                medium="email",
                address=address,
            ),
            timeout=60,
        )
        return reply.token

    async def state(self, room_id: str, event_type: str, state_key: str) -> dict | None:
        reply = await self.events.QueryCurrentState(
            events_pb2.QueryCurrentStateRequest(
                room_id=room_id,
                filter=[events_pb2.StateKeyFilter(type=event_type, state_key=state_key)],
            ),
            timeout=10,
        )
        if not reply.events:
            return None
        return {**orjson.loads(reply.events[0].pdu_json), "event_id": reply.events[0].event_id}

    def partial(
        self,
        room_id: str,
        target: str,
        token: str,
        sender: str = "",
        identity: IdentityServer | None = None,
    ) -> dict:
        return {
            "type": "m.room.member",
            "room_id": room_id,
            "sender": sender or self.alice,
            "state_key": target,
            "content": {
                "membership": "invite",
                "third_party_invite": {
                    "display_name": "forged",
                    "signed": (identity or self.identity).sign_for(target, token),
                },
            },
        }


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    database_url = await create_database("mxfed_third_party_routes")
    remote = FakeHomeserver(key_version="tp1")
    received: list[Any] = []

    async def invite(request: web.Request) -> web.Response:
        body = await request.json()
        event = body["event"]
        received.append(body)
        version = room_version(body["room_version"])
        signature = sign_json(
            redact(event, version), remote.signing_key, remote.server_name, remote.key_id
        )["signatures"][remote.server_name]
        event["signatures"][remote.server_name] = signature
        return web.json_response({"event": event})

    remote.route("PUT", "/_matrix/federation/v2/invite/{room_id}/{event_id}", invite)
    await remote.start()
    identity = IdentityServer()
    await identity.start()
    picky = IdentityServer(v1_disabled=True)
    await picky.start()
    mxfed = MxfedProcess(tmp_path_factory.mktemp("third-party-routes") / "mxfed", database_url)
    try:
        await asyncio.to_thread(mxfed.start)
    except BaseException:
        await remote.stop()
        await identity.stop()
        await picky.stop()
        await drop_database(database_url)
        raise
    channel = mxfed.channel("events")
    yield World(
        mxfed,
        remote,
        identity,
        picky,
        received,
        events_pb2_grpc.EventsStub(channel),
        third_party_pb2_grpc.ThirdPartyInvitesStub(channel),
    )
    await channel.close()
    await asyncio.to_thread(mxfed.stop)
    await remote.stop()
    await identity.stop()
    await picky.stop()
    await drop_database(database_url)


def assert_error(response: httpx.Response, status: int, errcode: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["errcode"] == errcode, response.text


def exchange_uri(room_id: str) -> str:
    return f"{V1}/exchange_third_party_invite/{quote(room_id, safe='')}"


# ---------------------------------------------------------------- the inviting side


async def test_third_party_invite_event_from_store_invite(world: World) -> None:
    room_id = await world.create_room()
    token = await world.invite_email(room_id, "someone@example.org")
    event = await world.state(room_id, "m.room.third_party_invite", token)
    assert event is not None and event["sender"] == world.alice
    content = event["content"]
    assert content["display_name"] == "so...@example.org"
    assert content["public_key"] == world.identity.public_key
    assert content["public_keys"] == [
        {
            "public_key": world.identity.public_key,
            "key_validity_url": f"{world.identity.base_url}/_matrix/identity/v2/pubkey/isvalid",
        }
    ]
    assert content["key_validity_url"] == (
        f"{world.identity.base_url}/_matrix/identity/v2/pubkey/isvalid"
    )
    # The v2 API was used, with an access token obtained through account/register.
    assert ("POST", "/_matrix/identity/v2/account/register") in world.identity.requests
    stored = world.identity.invites[-1]
    assert stored.token == token and stored.sender == world.alice
    assert stored.request["room_join_rules"] == "invite"


async def test_third_party_invite_refused_before_the_identity_server(world: World) -> None:
    room_id = await world.create_room()
    before = len(world.identity.requests)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await world.invite_email(room_id, "x@example.org", sender=f"@bob:{world.mxfed.server_name}")
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await world.invite_email("!nope:" + world.mxfed.server_name, "x@example.org")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(world.identity.requests) == before


async def test_cli_invite_3pid(world: World) -> None:
    room_id = await world.create_room()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mxfed.cli", "--config", str(world.mxfed.config_path),
        "invite-3pid", room_id, "--medium", "email", "--address", "cli@example.org",
        "--id-server", world.identity.host, "--sender", world.alice, "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    answer = orjson.loads(out)
    assert answer["display_name"] == "cl...@example.org"
    assert await world.state(room_id, "m.room.third_party_invite", answer["token"]) is not None
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mxfed.cli", "--config", str(world.mxfed.config_path),
        "invite-3pid", "!unknown:x", "--address", "a@b", "--id-server", world.identity.host,
        "--sender", world.alice,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    assert process.returncode == 1 and err.decode().startswith("M_NOT_FOUND")


# ---------------------------------------------------------------- 3pid/onbind


async def test_onbind_body_validation(world: World) -> None:
    url = world.mxfed.federation_url + V1 + "/3pid/onbind"
    good_invite = {
        "medium": "email", "address": "a@b", "mxid": f"@a:{world.mxfed.server_name}",
        "room_id": f"!r:{world.mxfed.server_name}", "sender": f"@s:{world.mxfed.server_name}",
        "signed": {"mxid": f"@a:{world.mxfed.server_name}", "token": "t", "signatures": {}},
    }  # fmt: skip
    body = {"medium": "email", "address": "a@b", "mxid": good_invite["mxid"]}
    cases: list[tuple[Any, int, str]] = [
        (b"{not json", 400, "M_NOT_JSON"),
        ([], 400, "M_BAD_JSON"),
        (body, 400, "M_MISSING_PARAM"),
        ({**body, "invites": {}}, 400, "M_BAD_JSON"),
        ({**body, "invites": ["x"]}, 400, "M_BAD_JSON"),
        ({**body, "mxid": 3, "invites": []}, 400, "M_BAD_JSON"),
    ]
    for field in ("medium", "address", "mxid", "room_id", "sender", "signed"):
        invite = {k: v for k, v in good_invite.items() if k != field}
        cases.append(({**body, "invites": [invite]}, 400, "M_MISSING_PARAM"))
    for field in ("mxid", "token", "signatures"):
        invite = copy.deepcopy(good_invite)
        del invite["signed"][field]
        cases.append(({**body, "invites": [invite]}, 400, "M_MISSING_PARAM"))
    invite = copy.deepcopy(good_invite)
    invite["signed"]["signatures"] = []
    cases.append(({**body, "invites": [invite]}, 400, "M_BAD_JSON"))
    async with httpx.AsyncClient(verify=False, timeout=30) as client:
        for content, status, errcode in cases:
            raw = content if isinstance(content, bytes) else orjson.dumps(content)
            response = await client.put(url, content=raw)
            assert_error(response, status, errcode)
        empty = await client.put(url, json={**body, "invites": []})
        assert empty.status_code == 200 and empty.json() == {}
        # A permanently refused invite (unknown room) is logged, not an error.
        refused = await client.put(url, json={**body, "invites": [good_invite]})
        assert refused.status_code == 200, refused.text


async def test_onbind_for_a_local_room_invites_and_is_idempotent(world: World) -> None:
    room_id = await world.create_room()
    address = f"{uuid.uuid4().hex[:6]}@example.org"
    token = await world.invite_email(room_id, address)
    carol = f"@carol:{world.mxfed.server_name}"
    body = world.identity.onbind_body("email", address, carol)
    response = await world.identity.bind(
        "email", address, carol, homeserver_url=world.mxfed.federation_url
    )
    assert response.status_code == 200, response.text
    member = await world.state(room_id, "m.room.member", carol)
    assert member is not None and member["sender"] == world.alice
    assert member["content"]["membership"] == "invite"
    assert member["content"]["third_party_invite"]["display_name"].endswith("@example.org")
    assert member["content"]["third_party_invite"]["signed"]["token"] == token
    # The same onbind again (an identity server retrying): done already, nothing new.
    reply = await world.third_party.ReceiveOnBind(
        third_party_pb2.ReceiveOnBindRequest(body_json=orjson.dumps(body)), timeout=30
    )
    assert [o.result for o in reply.outcomes] == ["already_done"]
    assert (await world.state(room_id, "m.room.member", carol))["event_id"] == member["event_id"]


# ---------------------------------------------------------------- exchange_third_party_invite


@pytest.fixture
async def invited(world: World) -> tuple[str, str, str]:
    """(room id, token, remote invitee) with an m.room.third_party_invite in place."""
    room_id = await world.create_room()
    token = await world.invite_email(room_id, f"{uuid.uuid4().hex[:6]}@example.org")
    return room_id, token, world.remote.user(f"d{uuid.uuid4().hex[:6]}")


async def assert_not_invited(world: World, room_id: str, target: str) -> None:
    assert await world.state(room_id, "m.room.member", target) is None


async def test_exchange_accepts_then_refuses_the_replay(
    world: World, invited: tuple[str, str, str]
) -> None:
    room_id, token, target = invited
    before = len(world.invites_received)
    partial = world.partial(room_id, target, token)
    response = await world.request("PUT", exchange_uri(room_id), partial)
    assert response.status_code == 200, response.text
    assert response.json() == {}
    # The invitee's server was asked to countersign, through the normal v2 invite.
    sent = world.invites_received[before]
    assert sent["event"]["state_key"] == target
    assert any(s["type"] == "m.room.create" for s in sent["invite_room_state"])
    member = await world.state(room_id, "m.room.member", target)
    assert member is not None and member["sender"] == world.alice
    assert set(member["signatures"]) == {world.mxfed.server_name, world.remote.server_name}
    # The display name comes from the room's m.room.third_party_invite, not the request.
    third_party_invite = member["content"]["third_party_invite"]
    assert third_party_invite["display_name"].endswith("@example.org")
    assert third_party_invite["signed"] == partial["content"]["third_party_invite"]["signed"]
    # The same token again (even for the same invitee): refused, nothing new.
    again = await world.request("PUT", exchange_uri(room_id), partial)
    assert_error(again, 403, "M_FORBIDDEN")
    assert "already used" in again.json()["error"]
    assert (await world.state(room_id, "m.room.member", target))["event_id"] == member["event_id"]
    assert len(world.invites_received) == before + 1


async def test_exchange_wrong_key(world: World, invited: tuple[str, str, str]) -> None:
    room_id, token, target = invited
    partial = world.partial(room_id, target, token)
    other = generate_signing_key()
    partial["content"]["third_party_invite"]["signed"] = sign_json(
        {"mxid": target, "token": token}, other, world.identity.server_name, KEY_ID
    )
    response = await world.request("PUT", exchange_uri(room_id), partial)
    assert_error(response, 403, "M_FORBIDDEN")
    await assert_not_invited(world, room_id, target)
    # The refusal is logged by the events service, with its cause.
    logged = [
        orjson.loads(line)
        for line in world.mxfed.log_tail(400).splitlines()
        if "exchange_third_party_invite refused" in line and room_id in line
    ]
    assert logged and logged[-1]["errcode"] == "M_FORBIDDEN"
    assert "no signature in signed verifies" in logged[-1]["error"]


async def test_exchange_with_an_identity_server_whose_v1_urls_404(world: World) -> None:
    """Sydent with enable_v1_access = false hands out v1 key validity URLs that 404:
    the invite's top-level URL is our own v2 one, and the exchange goes through."""
    picky = world.picky
    room_id = await world.create_room()
    token = await world.invite_email(room_id, f"{uuid.uuid4().hex[:6]}@example.org", "", picky)
    content = (await world.state(room_id, "m.room.third_party_invite", token))["content"]
    assert content["public_key"] == picky.public_key
    assert content["key_validity_url"] == f"{picky.base_url}/_matrix/identity/v2/pubkey/isvalid"
    assert [key["key_validity_url"] for key in content["public_keys"]] == [
        f"{picky.base_url}/_matrix/identity/api/v1/pubkey/isvalid",
        f"{picky.base_url}/_matrix/identity/api/v1/pubkey/ephemeral/isvalid",
    ]
    target = world.remote.user(f"d{uuid.uuid4().hex[:6]}")
    partial = world.partial(room_id, target, token, identity=picky)
    response = await world.request("PUT", exchange_uri(room_id), partial)
    assert response.status_code == 200, response.text
    member = await world.state(room_id, "m.room.member", target)
    assert member is not None and member["content"]["membership"] == "invite"
    assert ("GET", "/_matrix/identity/v2/pubkey/isvalid") in picky.requests


async def test_exchange_wrong_token(world: World, invited: tuple[str, str, str]) -> None:
    room_id, _, target = invited
    partial = world.partial(room_id, target, "no-such-token")
    response = await world.request("PUT", exchange_uri(room_id), partial)
    assert_error(response, 403, "M_FORBIDDEN")
    await assert_not_invited(world, room_id, target)


async def test_exchange_wrong_mxid(world: World, invited: tuple[str, str, str]) -> None:
    room_id, token, target = invited
    partial = world.partial(room_id, target, token)
    partial["content"]["third_party_invite"]["signed"] = world.identity.sign_for(
        world.remote.user("someone-else"), token
    )
    response = await world.request("PUT", exchange_uri(room_id), partial)
    assert_error(response, 403, "M_FORBIDDEN")
    await assert_not_invited(world, room_id, target)


async def test_exchange_sender_mismatch(world: World, invited: tuple[str, str, str]) -> None:
    room_id, token, target = invited
    for sender in (f"@bob:{world.mxfed.server_name}", world.remote.user("mallory")):
        partial = world.partial(room_id, target, token, sender=sender)
        response = await world.request("PUT", exchange_uri(room_id), partial)
        assert_error(response, 403, "M_FORBIDDEN")
    await assert_not_invited(world, room_id, target)


async def test_exchange_revoked_key(world: World, invited: tuple[str, str, str]) -> None:
    room_id, token, target = invited
    world.identity.revoke()
    try:
        response = await world.request(
            "PUT", exchange_uri(room_id), world.partial(room_id, target, token)
        )
    finally:
        world.identity.revoked.clear()
    assert_error(response, 403, "M_FORBIDDEN")
    await assert_not_invited(world, room_id, target)


async def test_exchange_room_errors(world: World, invited: tuple[str, str, str]) -> None:
    room_id, token, target = invited
    unknown = "!unknown:" + world.mxfed.server_name
    partial = world.partial(unknown, target, token)
    assert_error(await world.request("PUT", exchange_uri(unknown), partial), 404, "M_NOT_FOUND")
    # The body's room is not the path's.
    partial = world.partial(room_id, target, token)
    other_room = await world.create_room()
    response = await world.request("PUT", exchange_uri(other_room), partial)
    assert_error(response, 400, "M_INVALID_PARAM")
    await assert_not_invited(world, room_id, target)
    await assert_not_invited(world, other_room, target)


async def test_exchange_malformed(world: World, invited: tuple[str, str, str]) -> None:
    room_id, token, target = invited
    uri = exchange_uri(room_id)
    partial = world.partial(room_id, target, token)
    del partial["content"]["third_party_invite"]["signed"]
    assert_error(await world.request("PUT", uri, partial), 400, "M_MISSING_PARAM")
    partial = world.partial(room_id, target, token)
    del partial["sender"]
    assert_error(await world.request("PUT", uri, partial), 400, "M_MISSING_PARAM")
    partial = world.partial(room_id, target, token)
    partial["content"]["membership"] = "join"
    assert_error(await world.request("PUT", uri, partial), 400, "M_INVALID_PARAM")
    assert_error(await world.request("PUT", uri, ["x"]), 400, "M_BAD_JSON")
    # No X-Matrix: 401.
    async with httpx.AsyncClient(verify=False, timeout=30) as client:
        response = await client.put(
            world.mxfed.federation_url + uri, json=world.partial(room_id, target, token)
        )
    assert response.status_code == 401, response.text
    await assert_not_invited(world, room_id, target)
