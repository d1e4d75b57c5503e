"""A whole mxfed with accounts as its own process (``accounts_in_keys: false``, as compose
and Kubernetes run it): the supervisor starts it, the keys process no longer serves
Accounts, and the gateway, actors and the accounts part's own calls (events for a user's
rooms, sender for device-list EDUs) reach across the internal plane with its own
certificate. The default (accounts in the keys process) is what every other test runs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import grpc
import orjson
import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mxfed.internal_plane import Caller
from mxfed_api.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from tests.support.databases import create_database, drop_database
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.mxfed_process import MxfedProcess
from tests.support.scene import Scene

pytestmark = pytest.mark.whole_stack

V1 = "/_matrix/federation/v1"


@dataclass
class World:
    mxfed: MxfedProcess
    remote: FakeHomeserver
    received_edus: list[Any]
    accounts: accounts_pb2_grpc.AccountsStub

    def user(self) -> str:
        return f"@u{uuid.uuid4().hex[:8]}:{self.mxfed.server_name}"

    async def request(self, method: str, uri: str, content: Any = None) -> Any:
        response = await self.remote.federation_request(
            self.mxfed.federation_url, self.mxfed.server_name, method, uri, content
        )
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    database_url = await create_database("mxfed_accounts_apart")
    remote = FakeHomeserver(key_version="apart1")
    received: list[Any] = []

    async def send(request: web.Request) -> web.Response:
        received.extend((await request.json()).get("edus", []))
        return web.json_response({"pdus": {}})

    remote.route("PUT", "/_matrix/federation/v1/send/{txn_id}", send)
    await remote.start()
    mxfed = MxfedProcess(
        tmp_path_factory.mktemp("accounts-apart") / "mxfed",
        database_url,
        extra_config={"accounts_in_keys": False},
    )
    try:
        await asyncio.to_thread(mxfed.start)
    except BaseException:
        await remote.stop()
        await drop_database(database_url)
        raise
    channel = mxfed.channel("accounts")
    yield World(mxfed, remote, received, accounts_pb2_grpc.AccountsStub(channel))
    await channel.close()
    await asyncio.to_thread(mxfed.stop)
    await remote.stop()
    await drop_database(database_url)


def device_keys(user_id: str, device_id: str) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {f"curve25519:{device_id}": "c", f"ed25519:{device_id}": "e"},
        "signatures": {user_id: {f"ed25519:{device_id}": "s"}},
    }


async def test_accounts_is_served_by_its_own_process_not_by_keys(world: World) -> None:
    assert world.mxfed.config().service_address("accounts") == world.mxfed.grpc_address("accounts")
    assert world.mxfed.grpc_address("accounts") != world.mxfed.grpc_address("keys")
    async with world.mxfed.channel("accounts", caller=Caller.part("gateway")) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="mxfed.accounts.v1"), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # The keys process no longer serves Accounts (reached with the keys certificate name).
    async with world.mxfed.channel("keys", caller=Caller.part("gateway")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await accounts_pb2_grpc.AccountsStub(channel).QueryProfile(
                accounts_pb2.QueryProfileRequest(user_id=world.user()), timeout=10
            )
    assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_mxfed_health_lists_the_accounts_part(world: World) -> None:
    health = subprocess.run(
        [sys.executable, "-m", "mxfed.cli", "--config", str(world.mxfed.config_path)]
        + ["health", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        env=world.mxfed.environment(),
    )
    assert health.returncode == 0, health.stderr
    rows = [json.loads(row) for row in health.stdout.splitlines()]
    statuses = {row["part"]: row["status"] for row in rows}
    assert statuses == {part: "SERVING" for part in (*world.mxfed.parts, "gateway")}
    assert "accounts" in statuses


async def test_device_keys_and_devices_over_federation(world: World) -> None:
    user = world.user()
    await world.accounts.PerformUploadKeys(
        accounts_pb2.PerformUploadKeysRequest(
            user_id=user,
            device_id="DEV",
            display_name="Laptop",
            device_keys_json=orjson.dumps(device_keys(user, "DEV")),
        ),
        timeout=30,
    )
    queried = await world.request("POST", f"{V1}/user/keys/query", {"device_keys": {user: []}})
    assert queried["device_keys"][user]["DEV"]["keys"] == device_keys(user, "DEV")["keys"]
    devices = await world.request("GET", f"{V1}/user/devices/{quote(user, safe='')}")
    assert [device["device_id"] for device in devices["devices"]] == ["DEV"]


async def test_a_to_device_message_over_federation(world: World) -> None:
    user = world.user()
    await world.accounts.PerformUploadKeys(
        accounts_pb2.PerformUploadKeysRequest(user_id=user, device_id="D1"), timeout=30
    )
    message_id = uuid.uuid4().hex
    edu = {
        "edu_type": "m.direct_to_device",
        "content": {
            "sender": world.remote.user("sender"),
            "type": "m.room_key_request",
            "message_id": message_id,
            "messages": {user: {"D1": {"hello": "apart"}}},
        },
    }
    transaction = {
        "origin": world.remote.server_name,
        "origin_server_ts": world.remote.next_ts(),
        "pdus": [],
        "edus": [edu],
    }
    await world.request("PUT", f"{V1}/send/t{message_id}", transaction)
    reply = await world.accounts.QueryToDeviceMessages(
        accounts_pb2.QueryToDeviceMessagesRequest(user_id=user, device_id="D1"), timeout=30
    )
    assert [(m.message_id, orjson.loads(m.content_json)) for m in reply.messages] == [
        (message_id, {"hello": "apart"})
    ]


async def test_a_device_change_reaches_a_server_sharing_a_room(world: World) -> None:
    """The accounts part asks events for the user's rooms and has sender deliver the
    EDU: both calls are admitted for the accounts certificate."""
    scene = Scene(world.mxfed, world.remote)
    try:
        await scene.joined_room()  # @alice (local) and the remote's @bob
        alice = scene.creator

        def updates() -> list[dict[str, Any]]:
            return [
                edu["content"]
                for edu in world.received_edus
                if edu.get("edu_type") == "m.device_list_update"
                and edu["content"].get("user_id") == alice
            ]

        # The sender may still be connecting just after start: repeat the change.
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
            for _ in range(50):
                if updates():
                    break
                await asyncio.sleep(0.1)
            if updates():
                break
        assert updates() and updates()[-1]["device_id"] == "ALICEDEV"
    finally:
        await scene.close()
