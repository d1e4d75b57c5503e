"""Public rooms, profiles and device keys with a real Synapse, both ways.

A whole mxfed runs (``MxfedProcess``); mxfed's side acts through the
Directory (events process) and Accounts (keys process) gRPC services and the
CLI, Synapse's through its client API, which makes it call our federation
API (``/publicRooms``, ``/query/profile``, ``/user/keys/query``) and lets us
call its own (``/publicRooms``, ``/user/devices``).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from collections.abc import AsyncIterator

import orjson
import pytest
from synapse_harness import SynapseClient, SynapseServer

from matrix_protocol.canonical_json import encode_json
from mxfed.commands.directory import new_device_keys
from mxfed_api.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from mxfed_api.events.v1 import directory_pb2, directory_pb2_grpc, events_pb2, events_pb2_grpc
from tests.support.mxfed_process import MxfedProcess

pytestmark = [pytest.mark.interop, pytest.mark.whole_stack]


class Mx:
    def __init__(self, process: MxfedProcess) -> None:
        self.process = process
        self.server_name = process.server_name
        self.events_channel = process.channel("events")
        self.keys_channel = process.channel("keys")
        self.events = events_pb2_grpc.EventsStub(self.events_channel)
        self.directory = directory_pb2_grpc.DirectoryStub(self.events_channel)
        self.accounts = accounts_pb2_grpc.AccountsStub(self.keys_channel)

    def user(self, name: str) -> str:
        return f"@{name}{secrets.token_hex(3)}:{self.server_name}"

    async def close(self) -> None:
        await self.events_channel.close()
        await self.keys_channel.close()


@pytest.fixture
async def mx(mxfed: MxfedProcess) -> AsyncIterator[Mx]:
    handle = Mx(mxfed)
    yield handle
    await handle.close()


async def cli(mxfed: MxfedProcess, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mxfed.cli", "--config", str(mxfed.config_path), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=90)
    return process.returncode or 0, stdout.decode(), stderr.decode()


async def test_synapse_lists_our_public_rooms(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient
) -> None:
    alice = mx.user("alice")
    room_id = (
        await mx.events.PerformCreateRoom(
            events_pb2.PerformCreateRoomRequest(
                creator=alice, preset="public_chat", name="mxfed lobby", topic="hello Synapse"
            ),
            timeout=30,
        )
    ).room_id
    code, _, err = await cli(mx.process, "publish", room_id)
    assert code == 0, err
    _, token = await synapse_client.register(f"dir{secrets.token_hex(3)}")
    listing = await synapse_client.public_rooms(token, server=mx.server_name)
    entry = next(e for e in listing["chunk"] if e["room_id"] == room_id)
    assert entry["name"] == "mxfed lobby"
    assert entry["topic"] == "hello Synapse"
    assert entry["num_joined_members"] == 1
    assert entry["join_rule"] == "public"


async def test_synapse_reads_our_users_profile(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient
) -> None:
    alice = mx.user("alice")
    code, _, err = await cli(
        mx.process, "profile", "set", alice, "--displayname", "Alice of mxfed",
        "--avatar-url", "mxc://example.org/alice",
    )  # fmt: skip
    assert code == 0, err
    _, token = await synapse_client.register(f"prof{secrets.token_hex(3)}")
    profile = await synapse_client.profile(alice, token)
    assert profile["displayname"] == "Alice of mxfed"
    assert profile["avatar_url"] == "mxc://example.org/alice"


async def test_we_list_synapses_public_rooms(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient
) -> None:
    _, token = await synapse_client.register(f"pub{secrets.token_hex(3)}")
    room_id = await synapse_client.create_room(
        token, name="Synapse square", topic="on Synapse", preset="public_chat"
    )
    await synapse_client.publish_room(token, room_id)
    reply = await mx.directory.QueryPublicRooms(
        directory_pb2.QueryPublicRoomsRequest(server=synapse.server_name), timeout=60
    )
    entry = next(e for e in reply.chunk if e.room_id == room_id)
    assert entry.name == "Synapse square" and entry.topic == "on Synapse"
    assert entry.num_joined_members == 1
    searched = await mx.directory.QueryPublicRooms(
        directory_pb2.QueryPublicRoomsRequest(
            server=synapse.server_name, generic_search_term="square", limit=5
        ),
        timeout=60,
    )
    assert room_id in [e.room_id for e in searched.chunk]
    code, out, err = await cli(mx.process, "directory", "--server", synapse.server_name, "--json")
    assert code == 0, err
    assert room_id in [e["room_id"] for e in json.loads(out)["chunk"]]


async def test_we_fetch_a_synapse_users_devices_and_keys(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient
) -> None:
    bob, token = await synapse_client.register(f"keys{secrets.token_hex(3)}")
    device_id = (await synapse_client.whoami(token))["device_id"]
    device_keys, one_time_keys, _ = new_device_keys(bob, device_id, 1, False)
    await synapse_client.upload_device_keys(token, device_keys, one_time_keys)

    reply = await mx.accounts.QueryRemoteDevices(
        accounts_pb2.QueryRemoteDevicesRequest(user_id=bob), timeout=60
    )
    body = orjson.loads(reply.response_json)
    assert body["user_id"] == bob and isinstance(body["stream_id"], int)
    (device,) = [d for d in body["devices"] if d["device_id"] == device_id]
    assert device["keys"]["keys"] == device_keys["keys"]
    assert device["keys"]["signatures"][bob] == device_keys["signatures"][bob]

    keys = await mx.accounts.QueryKeys(
        accounts_pb2.QueryKeysRequest(device_keys_json=encode_json({bob: []})), timeout=60
    )
    answer = orjson.loads(keys.response_json)
    assert answer["failures"] == {}
    assert answer["device_keys"][bob][device_id]["keys"] == device_keys["keys"]
    code, out, err = await cli(mx.process, "devices", "list", bob, "--json")
    assert code == 0, err
    assert device_id in [d["device_id"] for d in json.loads(out)["devices"]]


async def test_synapse_fetches_our_users_device_keys(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient
) -> None:
    alice = mx.user("alice")
    device_keys, one_time_keys, _ = new_device_keys(alice, "MXDEVICE", 2, False)
    await mx.accounts.PerformUploadKeys(
        accounts_pb2.PerformUploadKeysRequest(
            user_id=alice,
            device_id="MXDEVICE",
            display_name="mxfed phone",
            device_keys_json=encode_json(device_keys),
            one_time_keys_json=encode_json(one_time_keys),
        ),
        timeout=30,
    )
    _, token = await synapse_client.register(f"q{secrets.token_hex(3)}")
    answer = await synapse_client.query_keys(token, {alice: []}, timeout_ms=20_000)
    assert answer.get("failures", {}) == {}
    got = answer["device_keys"][alice]["MXDEVICE"]
    assert got["keys"] == device_keys["keys"]
    assert got["signatures"][alice] == device_keys["signatures"][alice]
    claimed = await synapse_client.request(
        "POST", "/_matrix/client/v3/keys/claim", token,
        json={"one_time_keys": {alice: {"MXDEVICE": "signed_curve25519"}}},
    )  # fmt: skip
    (key,) = claimed["one_time_keys"][alice]["MXDEVICE"].values()
    assert key in one_time_keys.values()
