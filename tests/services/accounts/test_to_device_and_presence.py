"""Inbound m.direct_to_device and m.presence through Accounts on a real port and
database: validation, (origin, message_id) de-duplication, "*" and unknown
devices, per-device positions, query/ack, the live stream (also across two
servicers sharing the database, as two keys replicas would), concurrent
inputs, and presence (latest state per user, presence_enabled off)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import grpc
import orjson
import pytest

from gateway.edu_routing import device_edu_request
from mxfed.clock import now_ms
from mxfed.federation_client import FederationClient
from mxfed_api.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from services.accounts.local import LocalAccounts
from services.accounts.notify import RecordingNotifier
from services.accounts.presence import RemotePresence
from services.accounts.remote import RemoteDeviceLists
from services.accounts.servicer import AccountsServicer
from services.accounts.to_device import (
    DEDUPE_RETENTION_MS,
    NOTIFY_CHANNEL,
    ToDeviceHub,
    ToDeviceInbox,
    parse_edu,
)
from tests.support.databases import backends, terminate_backends
from tests.support.grpc_plane import bind_loopback, channel_to, make_server, session_tls_dir

OURS = "to-device-test.example"
REMOTE = "remote.example"


class Servers:
    def __init__(self) -> None:
        self.stubs: list[accounts_pb2_grpc.AccountsStub] = []
        self.addresses: list[str] = []
        self.cleanup: list[Callable[[], Any]] = []

    @property
    def stub(self) -> accounts_pb2_grpc.AccountsStub:
        return self.stubs[0]


async def _start(
    servers: Servers,
    pool: asyncpg.Pool,
    client: FederationClient,
    *,
    presence_enabled: bool,
) -> None:
    local = LocalAccounts(pool, OURS, RecordingNotifier())
    remote = RemoteDeviceLists(pool, OURS, client)
    hub = ToDeviceHub(pool, poll_interval=30.0)  # only notifications can wake it in time
    servicer = AccountsServicer(
        local,
        remote,
        ToDeviceInbox(pool, OURS),
        hub,
        RemotePresence(pool, OURS, enabled=presence_enabled),
    )
    server = make_server("keys")
    accounts_pb2_grpc.add_AccountsServicer_to_server(servicer, server)
    address = bind_loopback(server, "keys")
    await server.start()
    channel = channel_to(address, "keys")
    servers.stubs.append(accounts_pb2_grpc.AccountsStub(channel))
    servers.addresses.append(address)

    async def stop() -> None:
        await channel.close()
        await server.stop(grace=None)
        await hub.close()
        await remote.close()

    servers.cleanup.append(stop)


@pytest.fixture
async def servers(
    keys_pool: asyncpg.Pool, federation_client: FederationClient
) -> AsyncIterator[Servers]:
    """Two Accounts servicers (replicas) on the same database, presence on."""
    servers = Servers()
    for _ in range(2):
        await _start(servers, keys_pool, federation_client, presence_enabled=True)
    yield servers
    for stop in reversed(servers.cleanup):
        await stop()


def new_user(server: str = OURS) -> str:
    return f"@u{uuid.uuid4().hex[:10]}:{server}"


async def add_device(stub: accounts_pb2_grpc.AccountsStub, user_id: str, device_id: str) -> None:
    await stub.PerformUploadKeys(
        accounts_pb2.PerformUploadKeysRequest(user_id=user_id, device_id=device_id)
    )


def to_device(
    messages: dict[str, Any],
    *,
    message_id: str | None = None,
    sender: str = f"@sender:{REMOTE}",
    type: str = "m.room_key_request",
) -> dict[str, Any]:
    return {
        "sender": sender,
        "type": type,
        "message_id": message_id or uuid.uuid4().hex[:16],
        "messages": messages,
    }


async def send(
    stub: accounts_pb2_grpc.AccountsStub,
    contents: list[Any],
    *,
    origin: str = REMOTE,
    presence: list[Any] | None = None,
) -> accounts_pb2.InputDeviceListUpdatesResponse:
    return await stub.InputDeviceListUpdates(
        accounts_pb2.InputDeviceListUpdatesRequest(
            origin=origin,
            to_device_messages=[c if isinstance(c, bytes) else orjson.dumps(c) for c in contents],
            presence_updates=[orjson.dumps(p) for p in presence or []],
        )
    )


async def inbox(
    stub: accounts_pb2_grpc.AccountsStub, user_id: str, device_id: str, after: int = 0
) -> list[accounts_pb2.ToDeviceMessage]:
    reply = await stub.QueryToDeviceMessages(
        accounts_pb2.QueryToDeviceMessagesRequest(
            user_id=user_id, device_id=device_id, after_position=after
        )
    )
    return list(reply.messages)


def contents(messages: list[accounts_pb2.ToDeviceMessage]) -> list[Any]:
    return [orjson.loads(m.content_json) for m in messages]


# ---------------------------------------------------------------- validation


def test_parse_edu_checks_the_edu_and_keeps_only_local_targets() -> None:
    good = to_device({f"@a:{OURS}": {"D": {"k": 1}, "*": {"k": 2}}}, message_id="x" * 32)
    edu, left_out = parse_edu(REMOTE, good, OURS)
    assert edu is not None and left_out == 0
    assert edu.messages == {f"@a:{OURS}": {"D": {"k": 1}, "*": {"k": 2}}}

    for bad in (
        {**good, "sender": "@s:elsewhere.example"},  # sender not on the origin
        {**good, "sender": "not-a-user"},
        {**good, "message_id": "x" * 33},  # more than 32 code points
        {**good, "message_id": ""},
        {**good, "message_id": 5},
        {**good, "type": ""},
        {**good, "messages": []},
        {k: v for k, v in good.items() if k != "type"},
        "not an object",
    ):
        assert parse_edu(REMOTE, bad, OURS)[0] is None, bad
    # 32 code points of 4 bytes each is still fine.
    assert parse_edu(REMOTE, {**good, "message_id": "😀" * 32}, OURS)[0] is not None
    # From ourselves: never.
    assert parse_edu(OURS, {**good, "sender": f"@s:{OURS}"}, OURS)[0] is None

    mixed = to_device(
        {
            f"@a:{OURS}": {"D": {"k": 1}, "E": "not an object", "": {}},
            f"@b:{REMOTE}": {"D": {"k": 1}, "E": {"k": 2}},
            f"@c:{OURS}": ["not", "an", "object"],
        }
    )
    edu, left_out = parse_edu(REMOTE, mixed, OURS)
    assert edu is not None and edu.messages == {f"@a:{OURS}": {"D": {"k": 1}}}
    assert left_out == 5


def test_gateway_request_carries_to_device_and_presence_only_when_enabled() -> None:
    edus = [
        {"edu_type": "m.direct_to_device", "content": {"message_id": "a"}},
        {"edu_type": "m.presence", "content": {"push": []}},
        {"edu_type": "m.device_list_update", "content": {"user_id": "@a:o"}},
        {"edu_type": "m.typing", "content": {}},
        {"edu_type": 5, "content": {}},
    ]
    request = device_edu_request("o", edus)
    assert request is not None
    assert [orjson.loads(c) for c in request.to_device_messages] == [{"message_id": "a"}]
    assert not request.presence_updates and len(request.device_list_updates) == 1
    enabled = device_edu_request("o", edus, presence_enabled=True)
    assert enabled is not None and len(enabled.presence_updates) == 1
    assert device_edu_request("o", [edus[1]]) is None
    assert device_edu_request("o", [edus[1]], presence_enabled=True) is not None
    assert device_edu_request("o", [edus[0]]) is not None


# ---------------------------------------------------------------- storing and reading


async def test_messages_reach_each_device_once(servers: Servers) -> None:
    stub = servers.stub
    alice, bob = new_user(), new_user()
    for device in ("A1", "A2", "A3"):
        await add_device(stub, alice, device)
    await add_device(stub, bob, "B1")
    edu = to_device(
        {
            alice: {"*": {"to": "all"}, "A2": {"to": "A2"}},
            bob: {"B1": {"to": "B1"}, "GONE": {"to": "nobody"}},
            new_user(REMOTE): {"X": {"to": "remote"}},
        },
        message_id=f"dup-{uuid.uuid4().hex[:8]}",
    )
    reply = await send(stub, [edu, edu, b"not json"])
    assert reply.to_device_stored == 4  # A1, A3 ("*"), A2 (explicit), B1
    assert reply.to_device_duplicates == 1
    # GONE (no such device), the remote user's device, the invalid EDU.
    assert reply.to_device_ignored == 3
    # The same message_id again (a retried transaction): nothing new.
    again = await send(servers.stubs[1], [edu])
    assert (again.to_device_stored, again.to_device_duplicates) == (0, 1)
    # The same message_id from another server is another message.
    other = await send(stub, [{**edu, "sender": "@s:third.example"}], origin="third.example")
    assert other.to_device_stored == 4

    a1 = await inbox(stub, alice, "A1")
    assert contents(a1) == [{"to": "all"}, {"to": "all"}]
    assert [m.position for m in a1] == [1, 2]
    assert [(m.sender, m.type, m.origin, m.message_id) for m in a1] == [
        (f"@sender:{REMOTE}", "m.room_key_request", REMOTE, edu["message_id"]),
        ("@s:third.example", "m.room_key_request", "third.example", edu["message_id"]),
    ]
    assert contents(await inbox(stub, alice, "A2")) == [{"to": "A2"}, {"to": "A2"}]
    assert contents(await inbox(stub, bob, "B1")) == [{"to": "B1"}, {"to": "B1"}]
    assert await inbox(stub, bob, "GONE") == []


async def test_positions_query_pages_and_ack(servers: Servers) -> None:
    stub = servers.stub
    user = new_user()
    await add_device(stub, user, "D")
    await send(stub, [to_device({user: {"D": {"n": n}}}) for n in range(5)])
    page = await stub.QueryToDeviceMessages(
        accounts_pb2.QueryToDeviceMessagesRequest(user_id=user, device_id="D", limit=2)
    )
    assert contents(list(page.messages)) == [{"n": 0}, {"n": 1}]
    assert page.more and page.position == 2
    rest = await stub.QueryToDeviceMessages(
        accounts_pb2.QueryToDeviceMessagesRequest(
            user_id=user, device_id="D", after_position=page.position, limit=10
        )
    )
    assert contents(list(rest.messages)) == [{"n": 2}, {"n": 3}, {"n": 4}]
    assert not rest.more and rest.position == 5
    empty = await stub.QueryToDeviceMessages(
        accounts_pb2.QueryToDeviceMessagesRequest(user_id=user, device_id="D", after_position=5)
    )
    assert not empty.messages and empty.position == 5

    acked = await stub.PerformAckToDeviceMessages(
        accounts_pb2.PerformAckToDeviceMessagesRequest(
            user_id=user, device_id="D", up_to_position=3
        )
    )
    assert acked.deleted == 3
    assert [m.position for m in await inbox(stub, user, "D")] == [4, 5]
    # Positions keep growing after an ack, and after the device is deleted
    # and created again (its inbox goes with it).
    await stub.PerformDeleteDevice(
        accounts_pb2.PerformDeleteDeviceRequest(user_id=user, device_id="D")
    )
    assert await inbox(stub, user, "D") == []
    await add_device(stub, user, "D")
    await send(stub, [to_device({user: {"D": {"n": 5}}})])
    assert [m.position for m in await inbox(stub, user, "D")] == [6]


async def test_bad_reads_are_refused(servers: Servers) -> None:
    stub = servers.stub
    for request in (
        accounts_pb2.QueryToDeviceMessagesRequest(user_id=new_user(REMOTE), device_id="D"),
        accounts_pb2.QueryToDeviceMessagesRequest(user_id="nobody", device_id="D"),
        accounts_pb2.QueryToDeviceMessagesRequest(user_id=new_user(), device_id=""),
        accounts_pb2.QueryToDeviceMessagesRequest(user_id=new_user(), device_id="D", limit=-1),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.QueryToDeviceMessages(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PerformAckToDeviceMessages(
            accounts_pb2.PerformAckToDeviceMessagesRequest(user_id=new_user(REMOTE), device_id="D")
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stream = stub.StreamToDeviceMessages(
        accounts_pb2.StreamToDeviceMessagesRequest(user_id=new_user(REMOTE), device_id="D")
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_dedupe_records_are_durable_and_pruned_when_old(
    servers: Servers, keys_pool: asyncpg.Pool
) -> None:
    user = new_user()
    await add_device(servers.stub, user, "D")
    edu = to_device({user: {"D": {}}})
    await send(servers.stub, [edu])
    stored = await keys_pool.fetchval(
        "SELECT received_ts FROM accounts.to_device_dedupe WHERE origin = $1 AND message_id = $2",
        REMOTE,
        edu["message_id"],
    )
    assert stored is not None
    # A fresh inbox (as after a restart) still refuses the duplicate.
    fresh = ToDeviceInbox(keys_pool, OURS)
    assert (await fresh.input_edus(REMOTE, [edu])).duplicates == 1
    await keys_pool.execute(
        "UPDATE accounts.to_device_dedupe SET received_ts = $3"
        " WHERE origin = $1 AND message_id = $2",
        REMOTE,
        edu["message_id"],
        now_ms() - DEDUPE_RETENTION_MS - 1000,
    )
    await ToDeviceInbox(keys_pool, OURS)._prune_dedupe(now_ms())
    assert not await keys_pool.fetchval(
        "SELECT 1 FROM accounts.to_device_dedupe WHERE origin = $1 AND message_id = $2",
        REMOTE,
        edu["message_id"],
    )


async def test_concurrent_inputs_never_share_or_skip_a_position(
    servers: Servers, keys_pool: asyncpg.Pool
) -> None:
    user = new_user()
    for device in ("D1", "D2"):
        await add_device(servers.stub, user, device)
    origins = [f"s{n}.example" for n in range(8)]
    await asyncio.gather(
        *(
            send(
                servers.stubs[n % 2],
                [
                    to_device({user: {"*": {"n": n, "i": i}}}, sender=f"@x:{origin}")
                    for i in range(5)
                ],
                origin=origin,
            )
            for n, origin in enumerate(origins)
        )
    )
    for device in ("D1", "D2"):
        messages = await inbox(servers.stub, user, device)
        assert [m.position for m in messages] == list(range(1, 41))
        # Each input's messages are in order within the device.
        for n in range(8):
            assert [c["i"] for c in contents(messages) if c["n"] == n] == list(range(5))


# ---------------------------------------------------------------- the stream


async def _collect(stream: Any, into: list[accounts_pb2.ToDeviceMessage], count: int) -> None:
    async for message in stream:
        into.append(message)
        if len(into) >= count:
            return


async def test_stream_replays_then_follows_across_replicas(servers: Servers) -> None:
    first, second = servers.stubs
    user = new_user()
    await add_device(first, user, "D")
    await add_device(first, user, "E")
    await send(first, [to_device({user: {"D": {"n": n}}}) for n in range(3)])

    received: list[accounts_pb2.ToDeviceMessage] = []
    stream = first.StreamToDeviceMessages(
        accounts_pb2.StreamToDeviceMessagesRequest(user_id=user, device_id="D", after_position=1)
    )
    task = asyncio.create_task(_collect(stream, received, 4))
    for _ in range(100):
        if len(received) == 2:
            break
        await asyncio.sleep(0.02)
    assert contents(received) == [{"n": 1}, {"n": 2}]  # replayed after position 1

    # Live, written through the other replica (its NOTIFY wakes this one),
    # with a message for another device in between that must not show up.
    await send(second, [to_device({user: {"E": {"other": True}}})])
    await send(second, [to_device({user: {"D": {"n": 3}}})])
    await send(second, [to_device({user: {"*": {"n": 4}}})])
    await asyncio.wait_for(task, 5)
    stream.cancel()
    assert contents(received) == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]
    assert [m.position for m in received] == [2, 3, 4, 5]


async def test_stream_delivers_each_message_exactly_once(servers: Servers) -> None:
    stub = servers.stub
    user = new_user()
    await add_device(stub, user, "D")
    received: list[accounts_pb2.ToDeviceMessage] = []
    stream = stub.StreamToDeviceMessages(
        accounts_pb2.StreamToDeviceMessagesRequest(user_id=user, device_id="D")
    )
    task = asyncio.create_task(_collect(stream, received, 30))
    await asyncio.sleep(0.2)
    edus = [to_device({user: {"D": {"n": n}}}, message_id=f"m{n}") for n in range(30)]
    # Written in bursts from both replicas, each EDU sent twice.
    await asyncio.gather(
        *(send(servers.stubs[n % 2], edus[n : n + 3] * 2) for n in range(0, 30, 3))
    )
    await asyncio.wait_for(task, 10)
    stream.cancel()
    assert [m.position for m in received] == list(range(1, 31))
    assert sorted(c["n"] for c in contents(received)) == list(range(30))


# ---------------------------------------------------------------- presence


async def test_presence_keeps_the_latest_state_per_remote_user(servers: Servers) -> None:
    stub = servers.stub
    carol, dave = new_user(REMOTE), new_user(REMOTE)
    reply = await send(
        stub,
        [],
        presence=[
            {
                "push": [
                    {
                        "user_id": carol,
                        "presence": "online",
                        "last_active_ago": 5000,
                        "status_msg": "Making cupcakes",
                        "currently_active": True,
                    },
                    {"user_id": dave, "presence": "unavailable", "last_active_ago": 60000},
                    {
                        "user_id": new_user("elsewhere.example"),
                        "presence": "online",
                        "last_active_ago": 1,
                    },
                    {"user_id": new_user(REMOTE), "presence": "busy", "last_active_ago": 1},
                    {"user_id": new_user(REMOTE), "presence": "online", "last_active_ago": "1"},
                    {"user_id": new_user(REMOTE), "presence": "online", "last_active_ago": True},
                    "junk",
                ]
            },
            {"push": "not a list"},
        ],
    )
    assert (reply.presence_stored, reply.presence_ignored) == (2, 6)
    query = await stub.QueryPresence(
        accounts_pb2.QueryPresenceRequest(user_ids=[carol, dave, new_user(REMOTE)])
    )
    states = {p.user_id: p for p in query.presence}
    assert set(states) == {carol, dave}
    assert states[carol].presence == "online" and states[carol].currently_active
    assert states[carol].status_msg == "Making cupcakes"
    assert 5000 <= states[carol].last_active_ago < 15000
    assert not states[dave].HasField("status_msg") and not states[dave].currently_active

    await send(
        stub,
        [],
        presence=[
            {
                "push": [
                    {"user_id": carol, "presence": "online", "last_active_ago": 0},
                    {"user_id": carol, "presence": "offline", "last_active_ago": 10},
                ]
            }
        ],
    )
    query = await stub.QueryPresence(accounts_pb2.QueryPresenceRequest(user_ids=[carol]))
    [state] = query.presence
    assert state.presence == "offline" and not state.HasField("status_msg")


async def test_presence_is_ignored_when_disabled(
    keys_pool: asyncpg.Pool, federation_client: FederationClient
) -> None:
    servers = Servers()
    await _start(servers, keys_pool, federation_client, presence_enabled=False)
    try:
        carol = new_user(REMOTE)
        reply = await send(
            servers.stub,
            [],
            presence=[{"push": [{"user_id": carol, "presence": "online", "last_active_ago": 1}]}],
        )
        assert (reply.presence_stored, reply.presence_ignored) == (0, 1)
        query = await servers.stub.QueryPresence(
            accounts_pb2.QueryPresenceRequest(user_ids=[carol])
        )
        assert not query.presence
    finally:
        for stop in servers.cleanup:
            await stop()


# ---------------------------------------------------------------- the CLI


async def _cli(address: str, *args: str) -> asyncio.subprocess.Process:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MXFED_")}
    env["MXFED_KEYS_ADDRESS"] = address
    env["MXFED_INTERNAL_TLS_DIR"] = str(session_tls_dir())
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mxfed.cli",
        "to-device",
        "receive",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_cli_prints_acks_and_follows(servers: Servers) -> None:
    stub, address = servers.stub, servers.addresses[0]
    user = new_user()
    await add_device(stub, user, "D")
    await send(stub, [to_device({user: {"D": {"n": n}}}) for n in range(2)])

    process = await _cli(address, "--user", user, "--device", "D")
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines == [
        f'1 @sender:{REMOTE} m.room_key_request {{"n":0}}',
        f'2 @sender:{REMOTE} m.room_key_request {{"n":1}}',
    ]

    process = await _cli(address, "--user", user, "--device", "D", "--json", "--ack")
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    printed = [orjson.loads(line) for line in out.decode().splitlines()]
    assert [(p["position"], p["content"], p["origin"]) for p in printed] == [
        (1, {"n": 0}, REMOTE),
        (2, {"n": 1}, REMOTE),
    ]
    assert await inbox(stub, user, "D") == []  # acknowledged

    follower = await _cli(address, "--user", user, "--device", "D", "--follow", "--json")
    try:
        await asyncio.sleep(1.0)  # let it subscribe (it would replay anyway)
        await send(servers.stubs[1], [to_device({user: {"*": {"live": True}}})])
        assert follower.stdout is not None
        line = await asyncio.wait_for(follower.stdout.readline(), 20)
        followed = orjson.loads(line)
        assert followed["position"] == 3 and followed["content"] == {"live": True}
    finally:
        follower.terminate()
        await follower.wait()

    process = await _cli(address, "--user", new_user(REMOTE), "--device", "D")
    out, err = await process.communicate()
    assert process.returncode == 1 and "M_INVALID_PARAM: " in err.decode()


async def test_stream_goes_on_when_the_listen_connections_are_ended(
    servers: Servers, database_url: str
) -> None:
    """The hubs' LISTEN connections ended (pg_terminate_backend): they listen again and
    wake their followers, so a message written after the cut arrives without waiting for
    the 30 s poll, and none is skipped."""
    first, second = servers.stubs
    user = new_user()
    await add_device(first, user, "D")
    received: list[accounts_pb2.ToDeviceMessage] = []
    stream = first.StreamToDeviceMessages(
        accounts_pb2.StreamToDeviceMessagesRequest(user_id=user, device_id="D")
    )
    task = asyncio.create_task(_collect(stream, received, 3))
    await send(second, [to_device({user: {"D": {"n": 0}}})])
    for _ in range(200):
        if received:
            break
        await asyncio.sleep(0.02)
    assert contents(received) == [{"n": 0}]

    listening = await backends(database_url, query_like=f"LISTEN %{NOTIFY_CHANNEL}%")
    assert listening  # the first replica's hub, which has a follower
    assert await terminate_backends(database_url, listening) == len(listening)
    await send(second, [to_device({user: {"D": {"n": 1}}})])
    await send(second, [to_device({user: {"D": {"n": 2}}})])
    await asyncio.wait_for(task, 10)
    stream.cancel()
    assert contents(received) == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [m.position for m in received] == [1, 2, 3]
