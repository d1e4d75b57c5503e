"""``/publicRooms``, ``/hierarchy``, ``/query/profile``, ``/query/{unknown}``,
``/user/devices``, ``/user/keys/query``, ``/user/keys/claim`` and
``/openid/userinfo`` against a whole running mxfed, with a FakeHomeserver
signing the requests; device EDUs forwarded to Accounts as ``/send`` will."""

from __future__ import annotations

import asyncio
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

from gateway.edu_routing import device_edu_request
from mxfed_api.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from mxfed_api.events.v1 import directory_pb2, directory_pb2_grpc, events_pb2, events_pb2_grpc
from tests.support.databases import create_database, drop_database
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.mxfed_process import MxfedProcess
from tests.support.scene import Scene

pytestmark = pytest.mark.whole_stack

V1 = "/_matrix/federation/v1"


def q(value: str) -> str:
    return quote(value, safe="")


@dataclass
class World:
    mxfed: MxfedProcess
    remote: FakeHomeserver
    remote_lists: dict[str, Any]
    received_edus: list[Any]
    events: events_pb2_grpc.EventsStub
    directory: directory_pb2_grpc.DirectoryStub
    accounts: accounts_pb2_grpc.AccountsStub
    channels: list[grpc.aio.Channel]

    def user(self, localpart: str = "") -> str:
        return f"@{localpart or 'u' + uuid.uuid4().hex[:8]}:{self.mxfed.server_name}"

    async def request(
        self, method: str, uri: str, content: Any = None, *, raw: bytes | None = None
    ) -> httpx.Response:
        if raw is None:
            return await self.remote.federation_request(
                self.mxfed.federation_url, self.mxfed.server_name, method, uri, content
            )
        headers = {"Authorization": self.remote.authorization(method, self.mxfed.server_name, uri)}
        async with httpx.AsyncClient(verify=False, timeout=30) as client:
            return await client.request(
                method, self.mxfed.federation_url + uri, headers=headers, content=raw
            )

    async def create_room(self, **options: Any) -> str:
        options.setdefault("preset", "public_chat")
        reply = await self.events.PerformCreateRoom(
            events_pb2.PerformCreateRoomRequest(creator=self.user("alice"), **options), timeout=30
        )
        return reply.room_id

    async def state(self, room_id: str, event_type: str, state_key: str, content: dict) -> None:
        await self.events.PerformSendEvent(
            events_pb2.PerformSendEventRequest(
                room_id=room_id,
                sender=self.user("alice"),
                type=event_type,
                state_key=state_key,
                content_json=orjson.dumps(content),
            ),
            timeout=30,
        )


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    database_url = await create_database("mxfed_accounts_routes")
    remote = FakeHomeserver(key_version="acc1")
    lists: dict[str, Any] = {}

    async def devices(request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        if user_id not in lists:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no"}, status=404)
        return web.json_response(lists[user_id])

    remote.route("GET", "/_matrix/federation/v1/user/devices/{user_id}", devices)
    received: list[Any] = []

    async def send(request: web.Request) -> web.Response:
        body = await request.json()
        received.extend(body.get("edus", []))
        return web.json_response({"pdus": {}})

    remote.route("PUT", "/_matrix/federation/v1/send/{txn_id}", send)
    await remote.start()
    mxfed = MxfedProcess(tmp_path_factory.mktemp("account-routes") / "mxfed", database_url)
    try:
        await asyncio.to_thread(mxfed.start)
    except BaseException:
        await remote.stop()
        await drop_database(database_url)
        raise
    events_channel = mxfed.channel("events")
    keys_channel = mxfed.channel("keys")
    yield World(
        mxfed,
        remote,
        lists,
        received,
        events_pb2_grpc.EventsStub(events_channel),
        directory_pb2_grpc.DirectoryStub(events_channel),
        accounts_pb2_grpc.AccountsStub(keys_channel),
        [events_channel, keys_channel],
    )
    for channel in (events_channel, keys_channel):
        await channel.close()
    await asyncio.to_thread(mxfed.stop)
    await remote.stop()
    await drop_database(database_url)


def assert_error(response: httpx.Response, status: int, errcode: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["errcode"] == errcode, response.text


# ---------------------------------------------------------------- /publicRooms


@pytest.fixture(scope="module")
async def published(world: World) -> list[str]:
    rooms = []
    for index in range(3):
        room_id = await world.create_room(name=f"Room {index}", topic=f"topic {index}")
        await world.directory.PerformPublishRoom(
            directory_pb2.PerformPublishRoomRequest(room_id=room_id), timeout=10
        )
        rooms.append(room_id)
    await world.create_room(name="Not published")
    return rooms


async def test_public_rooms_get(world: World, published: list[str]) -> None:
    response = await world.request("GET", f"{V1}/publicRooms")
    assert response.status_code == 200, response.text
    body = response.json()
    assert {entry["room_id"] for entry in body["chunk"]} == set(published)
    assert body["total_room_count_estimate"] == 3
    entry = next(e for e in body["chunk"] if e["room_id"] == published[0])
    assert entry == {
        "room_id": published[0],
        "num_joined_members": 1,
        "world_readable": False,
        "guest_can_join": False,
        "name": "Room 0",
        "topic": "topic 0",
        "join_rule": "public",
    }


async def test_public_rooms_pages(world: World, published: list[str]) -> None:
    seen: list[str] = []
    uri = f"{V1}/publicRooms?limit=2"
    while True:
        body = (await world.request("GET", uri)).json()
        seen.extend(entry["room_id"] for entry in body["chunk"])
        if "next_batch" not in body:
            break
        uri = f"{V1}/publicRooms?limit=2&since={q(body['next_batch'])}"
    assert sorted(seen) == sorted(published) and len(seen) == 3


async def test_public_rooms_post_with_filter(world: World, published: list[str]) -> None:
    response = await world.request(
        "POST",
        f"{V1}/publicRooms",
        {"limit": 10, "filter": {"generic_search_term": "TOPIC 1", "room_types": [None]}},
    )
    assert response.status_code == 200, response.text
    assert [entry["room_id"] for entry in response.json()["chunk"]] == [published[1]]
    spaces = await world.request(
        "POST", f"{V1}/publicRooms", {"filter": {"room_types": ["m.space"]}}
    )
    assert spaces.json()["chunk"] == []
    empty = await world.request("POST", f"{V1}/publicRooms", {})
    assert len(empty.json()["chunk"]) == 3
    other_network = await world.request(
        "POST", f"{V1}/publicRooms", {"third_party_instance_id": "irc"}
    )
    assert other_network.json()["chunk"] == []


@pytest.mark.parametrize(
    "uri",
    [
        "/publicRooms?limit=abc",
        "/publicRooms?limit=-1",
        "/publicRooms?since=notatoken",
        "/publicRooms?include_all_networks=yes",
    ],
)
async def test_public_rooms_get_bad_parameters(world: World, uri: str) -> None:
    assert_error(await world.request("GET", V1 + uri), 400, "M_INVALID_PARAM")


@pytest.mark.parametrize(
    "body",
    [
        {"limit": "ten"},
        {"limit": True},
        {"since": 5},
        {"filter": []},
        {"filter": {"generic_search_term": 1}},
        {"filter": {"room_types": "m.space"}},
        {"filter": {"room_types": [1]}},
        {"include_all_networks": "true"},
        {"third_party_instance_id": 1},
    ],
)
async def test_public_rooms_post_bad_bodies(world: World, body: Any) -> None:
    assert_error(await world.request("POST", f"{V1}/publicRooms", body), 400, "M_INVALID_PARAM")


async def test_public_rooms_post_not_an_object_or_not_json(world: World) -> None:
    assert_error(await world.request("POST", f"{V1}/publicRooms", [1]), 400, "M_BAD_JSON")
    response = await world.request("POST", f"{V1}/publicRooms", raw=b"{nope")
    assert response.status_code in (400, 401)


async def test_public_rooms_needs_x_matrix(world: World) -> None:
    async with httpx.AsyncClient(verify=False) as client:
        response = await client.get(f"{world.mxfed.federation_url}{V1}/publicRooms")
    assert_error(response, 401, "M_UNAUTHORIZED")


# ---------------------------------------------------------------- /hierarchy


async def test_hierarchy(world: World, published: list[str]) -> None:
    space = await world.create_room(
        name="Space", creation_content_json=orjson.dumps({"type": "m.space"})
    )
    private = await world.create_room(preset="private_chat")
    for child in (published[0], private):
        await world.state(space, "m.space.child", child, {"via": [world.mxfed.server_name]})
    response = await world.request("GET", f"{V1}/hierarchy/{q(space)}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["room"]["room_id"] == space and body["room"]["room_type"] == "m.space"
    assert {s["state_key"] for s in body["room"]["children_state"]} == {published[0], private}
    assert [c["room_id"] for c in body["children"]] == [published[0]]
    assert body["inaccessible_children"] == [private]
    suggested = await world.request("GET", f"{V1}/hierarchy/{q(space)}?suggested_only=true")
    assert suggested.json()["room"]["children_state"] == []

    assert_error(await world.request("GET", f"{V1}/hierarchy/{q(private)}"), 404, "M_NOT_FOUND")
    assert_error(
        await world.request("GET", f"{V1}/hierarchy/{q('!unknown:nowhere')}"), 404, "M_NOT_FOUND"
    )
    assert_error(
        await world.request("GET", f"{V1}/hierarchy/{q(space)}?suggested_only=maybe"),
        400,
        "M_INVALID_PARAM",
    )


# ---------------------------------------------------------------- /query


async def test_query_profile(world: World) -> None:
    user = world.user()
    await world.accounts.PerformSetProfile(
        accounts_pb2.PerformSetProfileRequest(
            user_id=user,
            fields_json=orjson.dumps({"displayname": "Alice", "avatar_url": "mxc://a/b"}),
        ),
        timeout=10,
    )
    whole = await world.request("GET", f"{V1}/query/profile?user_id={q(user)}")
    assert whole.status_code == 200
    assert whole.json() == {"displayname": "Alice", "avatar_url": "mxc://a/b"}
    one = await world.request("GET", f"{V1}/query/profile?user_id={q(user)}&field=displayname")
    assert one.json() == {"displayname": "Alice"}
    unset = await world.request("GET", f"{V1}/query/profile?user_id={q(user)}&field=m.tz")
    assert_error(unset, 404, "M_NOT_FOUND")
    unknown = await world.request("GET", f"{V1}/query/profile?user_id={q(world.user())}")
    assert_error(unknown, 404, "M_NOT_FOUND")
    remote_user = world.remote.user("bob")
    assert_error(
        await world.request("GET", f"{V1}/query/profile?user_id={q(remote_user)}"),
        400,
        "M_INVALID_PARAM",
    )
    assert_error(await world.request("GET", f"{V1}/query/profile"), 400, "M_MISSING_PARAM")
    assert_error(
        await world.request("GET", f"{V1}/query/profile?user_id=alice"), 400, "M_INVALID_PARAM"
    )


async def test_unknown_query_type_and_directory_query(world: World) -> None:
    assert_error(await world.request("GET", f"{V1}/query/nonsense"), 404, "M_UNRECOGNIZED")
    alias = q(f"#nothing:{world.mxfed.server_name}")
    response = await world.request("GET", f"{V1}/query/directory?room_alias={alias}")
    assert_error(response, 404, "M_NOT_FOUND")  # served by the directory query route


# ---------------------------------------------------------------- devices and keys


def device_keys(user_id: str, device_id: str) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {f"curve25519:{device_id}": "c", f"ed25519:{device_id}": "e"},
        "signatures": {user_id: {f"ed25519:{device_id}": "s"}},
    }


@pytest.fixture(scope="module")
async def device_user(world: World) -> str:
    user = world.user()
    await world.accounts.PerformUploadKeys(
        accounts_pb2.PerformUploadKeysRequest(
            user_id=user,
            device_id="DEV",
            display_name="Laptop",
            device_keys_json=orjson.dumps(device_keys(user, "DEV")),
            one_time_keys_json=orjson.dumps(
                {"signed_curve25519:A": {"key": "a"}, "signed_curve25519:B": {"key": "b"}}
            ),
        ),
        timeout=10,
    )
    return user


async def test_user_devices(world: World, device_user: str) -> None:
    response = await world.request("GET", f"{V1}/user/devices/{q(device_user)}")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "user_id": device_user,
        "stream_id": 1,
        "devices": [
            {
                "device_id": "DEV",
                "keys": device_keys(device_user, "DEV"),
                "device_display_name": "Laptop",
            }
        ],
    }
    nobody = await world.request("GET", f"{V1}/user/devices/{q(world.user())}")
    assert nobody.status_code == 200 and nobody.json()["devices"] == []
    remote_user = world.remote.user("bob")
    assert_error(
        await world.request("GET", f"{V1}/user/devices/{q(remote_user)}"), 400, "M_INVALID_PARAM"
    )
    assert_error(await world.request("GET", f"{V1}/user/devices/nobody"), 400, "M_INVALID_PARAM")


async def test_keys_query(world: World, device_user: str) -> None:
    response = await world.request(
        "POST", f"{V1}/user/keys/query", {"device_keys": {device_user: []}}
    )
    assert response.status_code == 200, response.text
    keys = response.json()["device_keys"][device_user]["DEV"]
    assert keys["unsigned"] == {"device_display_name": "Laptop"}
    assert keys["keys"] == device_keys(device_user, "DEV")["keys"]
    for body, errcode in (
        ({"device_keys": {world.remote.user("bob"): []}}, "M_INVALID_PARAM"),
        ({"device_keys": {device_user: "all"}}, "M_BAD_JSON"),
        ({"device_keys": []}, "M_BAD_JSON"),
        ({}, "M_BAD_JSON"),
        ([], "M_BAD_JSON"),
    ):
        assert_error(await world.request("POST", f"{V1}/user/keys/query", body), 400, errcode)


async def test_keys_claim(world: World, device_user: str) -> None:
    body = {"one_time_keys": {device_user: {"DEV": "signed_curve25519"}}}
    first = await world.request("POST", f"{V1}/user/keys/claim", body)
    assert first.status_code == 200, first.text
    assert first.json() == {
        "one_time_keys": {device_user: {"DEV": {"signed_curve25519:A": {"key": "a"}}}}
    }
    second = await world.request("POST", f"{V1}/user/keys/claim", body)
    assert second.json()["one_time_keys"][device_user]["DEV"] == {
        "signed_curve25519:B": {"key": "b"}
    }
    third = await world.request("POST", f"{V1}/user/keys/claim", body)
    assert third.json() == {"one_time_keys": {}}
    for bad, errcode in (
        ({"one_time_keys": {world.remote.user("bob"): {"D": "x"}}}, "M_INVALID_PARAM"),
        ({"one_time_keys": {device_user: {"DEV": 1}}}, "M_BAD_JSON"),
        ({"one_time_keys": {device_user: ["DEV"]}}, "M_BAD_JSON"),
        ({"nope": 1}, "M_BAD_JSON"),
    ):
        assert_error(await world.request("POST", f"{V1}/user/keys/claim", bad), 400, errcode)


# ---------------------------------------------------------------- /openid/userinfo


async def test_openid_userinfo(world: World) -> None:
    user = world.user()
    minted = await world.accounts.PerformMintOpenIdToken(
        accounts_pb2.PerformMintOpenIdTokenRequest(user_id=user), timeout=10
    )
    async with httpx.AsyncClient(verify=False) as client:
        base = f"{world.mxfed.federation_url}{V1}/openid/userinfo"
        ok = await client.get(base, params={"access_token": minted.access_token})
        assert ok.status_code == 200 and ok.json() == {"sub": user}
        assert_error(
            await client.get(base, params={"access_token": "nope"}), 401, "M_UNKNOWN_TOKEN"
        )
        assert_error(await client.get(base), 401, "M_MISSING_TOKEN")


# ---------------------------------------------------------------- device EDUs


def test_device_edu_request_picks_device_edus() -> None:
    assert device_edu_request("o", [{"edu_type": "m.typing", "content": {}}]) is None
    request = device_edu_request(
        "o",
        [
            {"edu_type": "m.device_list_update", "content": {"user_id": "@a:o"}},
            {"edu_type": "m.signing_key_update", "content": {"user_id": "@a:o"}},
            {"edu_type": "m.device_list_update", "content": "broken"},
            "garbage",
        ],
    )
    assert request is not None and request.origin == "o"
    assert [orjson.loads(c) for c in request.device_list_updates] == [{"user_id": "@a:o"}]
    assert len(request.signing_key_updates) == 1


async def test_forwarded_device_edus_update_the_remote_cache(world: World) -> None:
    bob = world.remote.user(f"bob{uuid.uuid4().hex[:6]}")
    world.remote_lists[bob] = {"user_id": bob, "stream_id": 3, "devices": [{"device_id": "B1"}]}
    first = await world.accounts.QueryRemoteDevices(
        accounts_pb2.QueryRemoteDevicesRequest(user_id=bob), timeout=30
    )
    assert not first.from_cache
    update = {
        "edu_type": "m.device_list_update",
        "content": {"user_id": bob, "device_id": "B2", "stream_id": 4, "prev_id": [3]},
    }
    # Through the real /send route: the gateway hands device EDUs to the keys process.
    transaction = {
        "origin": world.remote.server_name,
        "origin_server_ts": world.remote.next_ts(),
        "pdus": [],
        "edus": [update],
    }
    sent = await world.remote.federation_request(
        world.mxfed.federation_url,
        world.mxfed.server_name,
        "PUT",
        f"/_matrix/federation/v1/send/{uuid.uuid4().hex}",
        transaction,
    )
    assert sent.status_code == 200, sent.text
    reply = await world.accounts.QueryRemoteDevices(
        accounts_pb2.QueryRemoteDevicesRequest(user_id=bob), timeout=30
    )
    body = orjson.loads(reply.response_json)
    assert reply.from_cache and [d["device_id"] for d in body["devices"]] == ["B1", "B2"]


async def test_local_device_changes_reach_servers_sharing_a_room(world: World) -> None:
    scene = Scene(world.mxfed, world.remote)
    try:
        await scene.joined_room()  # @alice (local) and the remote's @bob
        alice = scene.creator

        def mine(edu_type: str) -> list[dict[str, Any]]:
            return [
                edu["content"]
                for edu in world.received_edus
                if edu.get("edu_type") == edu_type and edu["content"].get("user_id") == alice
            ]

        async def arrived(edu_type: str) -> bool:
            for _ in range(50):
                if mine(edu_type):
                    return True
                await asyncio.sleep(0.1)
            return False

        # Each change sends one EDU; the sender may still be connecting to the
        # events service just after start, so a change is repeated until one
        # arrives (the device list is what it is either way).
        for attempt in range(10):
            await world.accounts.PerformUploadKeys(
                accounts_pb2.PerformUploadKeysRequest(
                    user_id=alice,
                    device_id="ALICEDEV",
                    display_name=f"attempt {attempt}",
                    device_keys_json=orjson.dumps(device_keys(alice, "ALICEDEV")),
                ),
                timeout=10,
            )
            if await arrived("m.device_list_update"):
                break
        update = mine("m.device_list_update")[-1]
        assert update["device_id"] == "ALICEDEV"
        assert update["prev_id"] == ([update["stream_id"] - 1] if update["stream_id"] > 1 else [])
        assert update["keys"] == device_keys(alice, "ALICEDEV")
        assert update["device_display_name"].startswith("attempt ")

        master = {"user_id": alice, "usage": ["master"], "keys": {"ed25519:M": "M"}}
        await world.accounts.PerformUploadCrossSigningKeys(
            accounts_pb2.PerformUploadCrossSigningKeysRequest(
                user_id=alice, master_key_json=orjson.dumps(master)
            ),
            timeout=10,
        )
        assert await arrived("m.signing_key_update")
        assert mine("m.signing_key_update") == [{"user_id": alice, "master_key": master}]
    finally:
        await scene.close()
