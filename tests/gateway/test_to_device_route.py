"""m.direct_to_device and m.presence through ``PUT /send/{txnId}`` of a whole running
mxfed (presence_enabled on), sent by a FakeHomeserver: duplicates (in one
transaction, in another transaction, a retried transaction), a non-local
target, ``*``, an unknown device and a sender of another server; every
message comes out of QueryToDeviceMessages and StreamToDeviceMessages
exactly once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from mxfed_api.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from tests.support.databases import create_database, drop_database
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.mxfed_process import MxfedProcess

pytestmark = pytest.mark.whole_stack


@dataclass
class World:
    mxfed: MxfedProcess
    remote: FakeHomeserver
    accounts: accounts_pb2_grpc.AccountsStub

    def user(self, localpart: str = "") -> str:
        return f"@{localpart or 'u' + uuid.uuid4().hex[:8]}:{self.mxfed.server_name}"

    async def send(self, txn_id: str, edus: list[Any]) -> dict[str, Any]:
        transaction = {
            "origin": self.remote.server_name,
            "origin_server_ts": self.remote.next_ts(),
            "pdus": [],
            "edus": edus,
        }
        response = await self.remote.federation_request(
            self.mxfed.federation_url,
            self.mxfed.server_name,
            "PUT",
            f"/_matrix/federation/v1/send/{txn_id}",
            transaction,
        )
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    database_url = await create_database("mxfed_to_device_route")
    remote = FakeHomeserver(key_version="td1")
    await remote.start()
    mxfed = MxfedProcess(
        tmp_path_factory.mktemp("to-device-route") / "mxfed",
        database_url,
        extra_config={"presence_enabled": True},
    )
    try:
        await asyncio.to_thread(mxfed.start)
    except BaseException:
        await remote.stop()
        await drop_database(database_url)
        raise
    channel = mxfed.channel("keys")
    yield World(mxfed, remote, accounts_pb2_grpc.AccountsStub(channel))
    await channel.close()
    await asyncio.to_thread(mxfed.stop)
    await remote.stop()
    await drop_database(database_url)


def edu(
    world: World, messages: dict[str, Any], message_id: str, *, sender: str = ""
) -> dict[str, Any]:
    return {
        "edu_type": "m.direct_to_device",
        "content": {
            "sender": sender or world.remote.user("sender"),
            "type": "m.room_key_request",
            "message_id": message_id,
            "messages": messages,
        },
        # Legacy keys Synapse adds: must be ignored.
        "origin": world.remote.server_name,
        "destination": world.mxfed.server_name,
    }


async def query(world: World, user_id: str, device_id: str) -> list[Any]:
    reply = await world.accounts.QueryToDeviceMessages(
        accounts_pb2.QueryToDeviceMessagesRequest(user_id=user_id, device_id=device_id),
        timeout=30,
    )
    return [(m.position, m.message_id, orjson.loads(m.content_json)) for m in reply.messages]


async def test_to_device_messages_arrive_exactly_once(world: World) -> None:
    alice, bob = world.user(), world.user()
    for user_id, device_id in ((alice, "A1"), (alice, "A2"), (bob, "B1")):
        await world.accounts.PerformUploadKeys(
            accounts_pb2.PerformUploadKeysRequest(user_id=user_id, device_id=device_id),
            timeout=30,
        )
    streamed: list[accounts_pb2.ToDeviceMessage] = []
    stream = world.accounts.StreamToDeviceMessages(
        accounts_pb2.StreamToDeviceMessagesRequest(user_id=alice, device_id="A1")
    )

    async def follow() -> None:
        async for message in stream:
            streamed.append(message)

    follower = asyncio.create_task(follow())
    tag = uuid.uuid4().hex[:8]
    one = edu(world, {alice: {"A1": {"n": 1}}}, f"{tag}-1")
    everyone = edu(
        world,
        {alice: {"*": {"n": 2}}, bob: {"B1": {"n": 2}, "NOPE": {"n": 2}}},
        f"{tag}-2",
    )
    mixed = edu(
        world,
        {"@carol:elsewhere.example": {"C": {"n": 3}}, alice: {"A2": {"n": 3}}},
        f"{tag}-3",
    )
    forged = edu(world, {alice: {"A1": {"forged": True}}}, f"{tag}-4", sender="@eve:evil.example")
    txn = f"t{tag}"
    assert await world.send(txn, [one, everyone, one, mixed, forged]) == {"pdus": {}}
    # The same transaction again, then another one re-sending an EDU.
    assert await world.send(txn, [one, everyone, one, mixed, forged]) == {"pdus": {}}
    last = edu(world, {alice: {"A1": {"n": 5}}}, f"{tag}-5")
    assert await world.send(f"u{tag}", [everyone, last]) == {"pdus": {}}

    assert await query(world, alice, "A1") == [
        (1, f"{tag}-1", {"n": 1}),
        (2, f"{tag}-2", {"n": 2}),
        (3, f"{tag}-5", {"n": 5}),
    ]
    assert await query(world, alice, "A2") == [
        (1, f"{tag}-2", {"n": 2}),
        (2, f"{tag}-3", {"n": 3}),
    ]
    assert await query(world, bob, "B1") == [(1, f"{tag}-2", {"n": 2})]
    assert await query(world, bob, "NOPE") == []

    for _ in range(200):
        if len(streamed) >= 3:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # anything extra would show up by now
    stream.cancel()
    follower.cancel()
    assert [(m.position, m.sender, orjson.loads(m.content_json)) for m in streamed] == [
        (1, world.remote.user("sender"), {"n": 1}),
        (2, world.remote.user("sender"), {"n": 2}),
        (3, world.remote.user("sender"), {"n": 5}),
    ]
    assert all(m.origin == world.remote.server_name for m in streamed)


async def test_presence_is_kept_per_remote_user(world: World) -> None:
    carol = world.remote.user(f"carol{uuid.uuid4().hex[:6]}")
    presence = {
        "edu_type": "m.presence",
        "content": {
            "push": [
                {
                    "user_id": carol,
                    "presence": "online",
                    "last_active_ago": 5000,
                    "status_msg": "Making cupcakes",
                    "currently_active": True,
                },
                {
                    "user_id": "@mallory:elsewhere.example",
                    "presence": "online",
                    "last_active_ago": 1,
                },
            ]
        },
    }
    await world.send(f"p{uuid.uuid4().hex[:8]}", [presence])
    reply = await world.accounts.QueryPresence(
        accounts_pb2.QueryPresenceRequest(user_ids=[carol, "@mallory:elsewhere.example"]),
        timeout=30,
    )
    [state] = reply.presence
    assert (state.user_id, state.presence, state.status_msg) == (carol, "online", "Making cupcakes")
    assert state.currently_active and state.last_active_ago >= 5000
