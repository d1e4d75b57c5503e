"""The Accounts gRPC service on a real port and database: profiles, device keys,
one-time key claims (order, once ever, concurrency, fallback), cross-signing
keys, device-list EDUs with prev_id chains, OpenID tokens, and the remote
device-list cache (resync through /user/devices, EDUs applied or resynced)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import orjson
import pytest
from aiohttp import web

from mxfed.federation_client import FederationClient
from mxfed_api.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from services.accounts.local import LocalAccounts
from services.accounts.notify import RecordingNotifier
from services.accounts.remote import RemoteDeviceLists
from services.accounts.servicer import AccountsServicer
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.grpc_plane import bind_loopback, channel_to, make_server
from tests.support.service_errors import errcode as error_code

OURS = "accounts-test.example"


class Accounts:
    def __init__(self, stub: accounts_pb2_grpc.AccountsStub, notifier: RecordingNotifier) -> None:
        self.stub = stub
        self.notifier = notifier


@pytest.fixture
async def accounts(
    keys_pool: asyncpg.Pool, federation_client: FederationClient
) -> AsyncIterator[Accounts]:
    notifier = RecordingNotifier()
    local = LocalAccounts(keys_pool, OURS, notifier)
    remote = RemoteDeviceLists(keys_pool, OURS, federation_client)
    server = make_server("keys")
    accounts_pb2_grpc.add_AccountsServicer_to_server(AccountsServicer(local, remote), server)
    address = bind_loopback(server, "keys")
    await server.start()
    channel = channel_to(address, "keys")
    yield Accounts(accounts_pb2_grpc.AccountsStub(channel), notifier)
    await channel.close()
    await server.stop(grace=None)
    await remote.close()


def new_user(server: str = OURS) -> str:
    return f"@u{uuid.uuid4().hex[:10]}:{server}"


def device_keys(user_id: str, device_id: str, key: str = "ed") -> dict[str, Any]:
    return {
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {f"curve25519:{device_id}": f"curve-{key}", f"ed25519:{device_id}": f"ed-{key}"},
        "signatures": {user_id: {f"ed25519:{device_id}": "sig"}},
    }


def cross_key(user_id: str, usage: str, key: str) -> dict[str, Any]:
    return {"user_id": user_id, "usage": [usage], "keys": {f"ed25519:{key}": key}}


async def upload(accounts: Accounts, user_id: str, device_id: str, **kwargs: Any):
    request = accounts_pb2.PerformUploadKeysRequest(user_id=user_id, device_id=device_id)
    for name in ("device_keys", "one_time_keys", "fallback_keys"):
        if name in kwargs:
            setattr(request, f"{name}_json", orjson.dumps(kwargs[name]))
    if "display_name" in kwargs:
        request.display_name = kwargs["display_name"]
    return await accounts.stub.PerformUploadKeys(request)


async def expect_error(call, code: grpc.StatusCode, errcode: str = "") -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    if errcode:
        assert error_code(caught.value) == errcode


# ---------------------------------------------------------------- profiles


async def test_profiles(accounts: Accounts) -> None:
    user = new_user()
    stub = accounts.stub
    missing = await stub.QueryProfile(accounts_pb2.QueryProfileRequest(user_id=user))
    assert not missing.found
    await stub.PerformSetProfile(
        accounts_pb2.PerformSetProfileRequest(
            user_id=user, fields_json=orjson.dumps({"displayname": "Alice", "m.tz": "Europe/Paris"})
        )
    )
    reply = await stub.PerformSetProfile(
        accounts_pb2.PerformSetProfileRequest(
            user_id=user, fields_json=orjson.dumps({"avatar_url": "mxc://x/y", "m.tz": None})
        )
    )
    assert orjson.loads(reply.profile_json) == {"displayname": "Alice", "avatar_url": "mxc://x/y"}
    whole = await stub.QueryProfile(accounts_pb2.QueryProfileRequest(user_id=user))
    assert orjson.loads(whole.profile_json) == {"displayname": "Alice", "avatar_url": "mxc://x/y"}
    one = await stub.QueryProfile(
        accounts_pb2.QueryProfileRequest(user_id=user, field="displayname")
    )
    assert orjson.loads(one.profile_json) == {"displayname": "Alice"}
    unset = await stub.QueryProfile(accounts_pb2.QueryProfileRequest(user_id=user, field="m.tz"))
    assert not unset.found
    replaced = await stub.PerformSetProfile(
        accounts_pb2.PerformSetProfileRequest(
            user_id=user, fields_json=orjson.dumps({"displayname": "A"}), replace=True
        )
    )
    assert orjson.loads(replaced.profile_json) == {"displayname": "A"}

    for fields in ({"avatar_url": "https://x/y"}, {"displayname": 5}):
        await expect_error(
            stub.PerformSetProfile(
                accounts_pb2.PerformSetProfileRequest(
                    user_id=user, fields_json=orjson.dumps(fields)
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "M_INVALID_PARAM",
        )
    await expect_error(
        stub.PerformSetProfile(
            accounts_pb2.PerformSetProfileRequest(
                user_id=new_user("elsewhere.example"), fields_json=b"{}"
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_error(
        stub.PerformSetProfile(
            accounts_pb2.PerformSetProfileRequest(user_id=user, fields_json=b"[1]")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "M_BAD_JSON",
    )
    await expect_error(
        stub.QueryProfile(accounts_pb2.QueryProfileRequest(user_id="nope")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


# ---------------------------------------------------------------- devices and keys


async def test_device_keys_stream_and_edus(accounts: Accounts) -> None:
    user = new_user()
    first = await upload(
        accounts, user, "DEV1", device_keys=device_keys(user, "DEV1"), display_name="Phone"
    )
    assert first.stream_id == 1
    again = await upload(accounts, user, "DEV1", device_keys=device_keys(user, "DEV1"))
    assert again.stream_id == 1  # nothing changed: no bump, no EDU
    second = await upload(accounts, user, "DEV2")  # a device without keys
    assert second.stream_id == 2
    third = await upload(accounts, user, "DEV1", device_keys=device_keys(user, "DEV1", "new"))
    assert third.stream_id == 3

    sent = [(t, c) for u, t, c in accounts.notifier.sent if u == user]
    assert [t for t, _ in sent] == ["m.device_list_update"] * 3
    assert [(c["device_id"], c["stream_id"], c["prev_id"]) for _, c in sent] == [
        ("DEV1", 1, []),
        ("DEV2", 2, [1]),
        ("DEV1", 3, [2]),
    ]
    assert sent[0][1]["device_display_name"] == "Phone"
    assert sent[0][1]["keys"] == device_keys(user, "DEV1")
    assert "keys" not in sent[1][1] and sent[1][1]["deleted"] is False

    devices = orjson.loads(
        (
            await accounts.stub.QueryUserDevices(accounts_pb2.QueryUserDevicesRequest(user_id=user))
        ).response_json
    )
    assert devices == {
        "user_id": user,
        "stream_id": 3,
        "devices": [
            {
                "device_id": "DEV1",
                "keys": device_keys(user, "DEV1", "new"),
                "device_display_name": "Phone",
            },
            {"device_id": "DEV2"},
        ],
    }

    query = await accounts.stub.QueryKeys(
        accounts_pb2.QueryKeysRequest(device_keys_json=orjson.dumps({user: []}), local_only=True)
    )
    body = orjson.loads(query.response_json)
    assert list(body["device_keys"][user]) == ["DEV1"]
    assert body["device_keys"][user]["DEV1"]["unsigned"] == {"device_display_name": "Phone"}
    assert body["master_keys"] == {} and body["self_signing_keys"] == {}
    only = orjson.loads(
        (
            await accounts.stub.QueryKeys(
                accounts_pb2.QueryKeysRequest(
                    device_keys_json=orjson.dumps({user: ["DEV2", "NOPE"]}), local_only=True
                )
            )
        ).response_json
    )
    assert only["device_keys"] == {user: {}}

    deleted = await accounts.stub.PerformDeleteDevice(
        accounts_pb2.PerformDeleteDeviceRequest(user_id=user, device_id="DEV1")
    )
    assert deleted.deleted and deleted.stream_id == 4
    assert accounts.notifier.sent[-1][2] == {
        "user_id": user,
        "device_id": "DEV1",
        "stream_id": 4,
        "prev_id": [3],
        "deleted": True,
    }
    missing = await accounts.stub.PerformDeleteDevice(
        accounts_pb2.PerformDeleteDeviceRequest(user_id=user, device_id="DEV1")
    )
    assert not missing.deleted and missing.stream_id == 4


async def test_upload_refusals(accounts: Accounts) -> None:
    user = new_user()
    other = device_keys(user, "OTHER")
    for kwargs in (
        {"device_keys": other},
        {"device_keys": {**device_keys(user, "D"), "keys": {}}},
        {"one_time_keys": {"nocolon": "k"}},
        {"one_time_keys": {"a:b": 5}},
    ):
        await expect_error(upload(accounts, user, "D", **kwargs), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_error(
        upload(accounts, new_user("elsewhere.example"), "D"), grpc.StatusCode.INVALID_ARGUMENT
    )
    await expect_error(upload(accounts, user, ""), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_error(
        accounts.stub.QueryKeys(
            accounts_pb2.QueryKeysRequest(
                device_keys_json=orjson.dumps({new_user("elsewhere.example"): []}), local_only=True
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_error(
        accounts.stub.QueryKeys(
            accounts_pb2.QueryKeysRequest(
                device_keys_json=orjson.dumps({user: "all"}), local_only=True
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "M_BAD_JSON",
    )


def otk(n: int) -> dict[str, Any]:
    return {f"signed_curve25519:K{n:03d}": {"key": f"key{n}", "signatures": {}}}


async def claim(accounts: Accounts, user: str, device: str) -> dict[str, Any]:
    reply = await accounts.stub.PerformClaimKeys(
        accounts_pb2.PerformClaimKeysRequest(
            one_time_keys_json=orjson.dumps({user: {device: "signed_curve25519"}})
        )
    )
    return orjson.loads(reply.response_json)["one_time_keys"].get(user, {}).get(device, {})


async def test_one_time_keys_in_upload_order_once_then_fallback(accounts: Accounts) -> None:
    user = new_user()
    counts = await upload(accounts, user, "D", one_time_keys={**otk(2), **otk(1)})
    counts = await upload(accounts, user, "D", one_time_keys={**otk(2), **otk(3)})
    assert dict(counts.one_time_key_counts) == {"signed_curve25519": 3}
    await expect_error(
        upload(accounts, user, "D", one_time_keys={"signed_curve25519:K001": {"key": "different"}}),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert await claim(accounts, user, "D") == otk(2)  # first uploaded first
    assert await claim(accounts, user, "D") == otk(1)
    await upload(accounts, user, "D", one_time_keys=otk(2))  # re-upload of a claimed key
    assert await claim(accounts, user, "D") == otk(3)
    assert await claim(accounts, user, "D") == {}
    fallback = {"signed_curve25519:FB": {"key": "fb", "fallback": True}}
    await upload(accounts, user, "D", fallback_keys=fallback)
    assert await claim(accounts, user, "D") == fallback
    assert await claim(accounts, user, "D") == fallback  # reused until replaced
    assert await claim(accounts, user, "NOPE") == {}
    await expect_error(
        accounts.stub.PerformClaimKeys(
            accounts_pb2.PerformClaimKeysRequest(
                one_time_keys_json=orjson.dumps({new_user("elsewhere.example"): {"D": "x"}})
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_error(
        accounts.stub.PerformClaimKeys(
            accounts_pb2.PerformClaimKeysRequest(one_time_keys_json=orjson.dumps({user: {"D": 1}}))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_concurrent_claims_never_share_a_key(accounts: Accounts) -> None:
    user = new_user()
    keys: dict[str, Any] = {}
    for n in range(10):
        keys.update(otk(n))
    await upload(accounts, user, "D", one_time_keys=keys)
    results = await asyncio.gather(*(claim(accounts, user, "D") for _ in range(16)))
    handed = [next(iter(r)) for r in results if r]
    assert len(handed) == 10 and len(set(handed)) == 10


async def test_cross_signing_keys(accounts: Accounts) -> None:
    user = new_user()
    master, self_signing = cross_key(user, "master", "M"), cross_key(user, "self_signing", "S")
    await accounts.stub.PerformUploadCrossSigningKeys(
        accounts_pb2.PerformUploadCrossSigningKeysRequest(
            user_id=user,
            master_key_json=orjson.dumps(master),
            self_signing_key_json=orjson.dumps(self_signing),
            user_signing_key_json=orjson.dumps(cross_key(user, "user_signing", "U")),
        )
    )
    assert accounts.notifier.sent[-1] == (
        user,
        "m.signing_key_update",
        {"user_id": user, "master_key": master, "self_signing_key": self_signing},
    )
    count = len(accounts.notifier.sent)
    await accounts.stub.PerformUploadCrossSigningKeys(
        accounts_pb2.PerformUploadCrossSigningKeysRequest(
            user_id=user, master_key_json=orjson.dumps(master)
        )
    )
    assert len(accounts.notifier.sent) == count  # unchanged: nothing sent
    devices = orjson.loads(
        (
            await accounts.stub.QueryUserDevices(accounts_pb2.QueryUserDevicesRequest(user_id=user))
        ).response_json
    )
    assert devices["master_key"] == master and devices["self_signing_key"] == self_signing
    keys = orjson.loads(
        (
            await accounts.stub.QueryKeys(
                accounts_pb2.QueryKeysRequest(
                    device_keys_json=orjson.dumps({user: []}), local_only=True
                )
            )
        ).response_json
    )
    assert keys["master_keys"] == {user: master}
    assert keys["self_signing_keys"] == {user: self_signing}
    assert "user_signing_keys" not in keys
    await expect_error(
        accounts.stub.PerformUploadCrossSigningKeys(
            accounts_pb2.PerformUploadCrossSigningKeysRequest(
                user_id=user, master_key_json=orjson.dumps(cross_key(user, "self_signing", "X"))
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_openid_tokens(accounts: Accounts) -> None:
    user = new_user()
    minted = await accounts.stub.PerformMintOpenIdToken(
        accounts_pb2.PerformMintOpenIdTokenRequest(user_id=user)
    )
    assert minted.expires_in_ms == 3600 * 1000 and len(minted.access_token) >= 32
    found = await accounts.stub.QueryOpenIdToken(
        accounts_pb2.QueryOpenIdTokenRequest(access_token=minted.access_token)
    )
    assert found.found and found.user_id == user
    for token in ("", "unknown", minted.access_token + "x"):
        reply = await accounts.stub.QueryOpenIdToken(
            accounts_pb2.QueryOpenIdTokenRequest(access_token=token)
        )
        assert not reply.found
    short = await accounts.stub.PerformMintOpenIdToken(
        accounts_pb2.PerformMintOpenIdTokenRequest(user_id=user, ttl_ms=1)
    )
    await asyncio.sleep(0.01)
    expired = await accounts.stub.QueryOpenIdToken(
        accounts_pb2.QueryOpenIdTokenRequest(access_token=short.access_token)
    )
    assert not expired.found
    await expect_error(
        accounts.stub.PerformMintOpenIdToken(
            accounts_pb2.PerformMintOpenIdTokenRequest(user_id=new_user("elsewhere.example"))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


# ---------------------------------------------------------------- remote device lists


class RemoteLists:
    """A remote server answering /user/devices from a dict it can be told to change."""

    def __init__(self) -> None:
        self.server = FakeHomeserver(key_version="devs1")
        self.lists: dict[str, dict[str, Any]] = {}
        self.fetches: list[str] = []
        self.server.route("GET", "/_matrix/federation/v1/user/devices/{user_id}", self._devices)

    async def _devices(self, request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        self.fetches.append(user_id)
        if user_id not in self.lists:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no"}, status=404)
        return web.json_response(self.lists[user_id])


@pytest.fixture
async def remote_lists() -> AsyncIterator[RemoteLists]:
    lists = RemoteLists()
    await lists.server.start()
    yield lists
    await lists.server.stop()


async def remote_devices(accounts: Accounts, user: str, force: bool = False) -> tuple[dict, bool]:
    reply = await accounts.stub.QueryRemoteDevices(
        accounts_pb2.QueryRemoteDevicesRequest(user_id=user, force_resync=force)
    )
    return orjson.loads(reply.response_json), reply.from_cache


async def edus(accounts: Accounts, origin: str, updates=(), signing=()):
    return await accounts.stub.InputDeviceListUpdates(
        accounts_pb2.InputDeviceListUpdatesRequest(
            origin=origin,
            device_list_updates=[orjson.dumps(u) for u in updates],
            signing_key_updates=[orjson.dumps(s) for s in signing],
        )
    )


async def test_remote_device_list_cache_and_edus(
    accounts: Accounts, remote_lists: RemoteLists
) -> None:
    origin = remote_lists.server.server_name
    bob = new_user(origin)
    master = cross_key(bob, "master", "BM")
    remote_lists.lists[bob] = {
        "user_id": bob,
        "stream_id": 10,
        "master_key": master,
        "devices": [
            {"device_id": "B1", "keys": device_keys(bob, "B1"), "device_display_name": "Bob's"},
            {"device_id": "B2", "keys": device_keys(bob, "WRONG")},
        ],
    }
    body, cached = await remote_devices(accounts, bob)
    assert not cached and body["stream_id"] == 10
    assert body["devices"] == [
        {"device_id": "B1", "keys": device_keys(bob, "B1"), "device_display_name": "Bob's"},
        {"device_id": "B2"},
    ]  # keys naming another device are dropped
    assert body["master_key"] == master
    again, cached = await remote_devices(accounts, bob)
    assert cached and again == body and remote_lists.fetches == [bob]

    # A chained update is applied as a replacement of one device.
    reply = await edus(
        accounts,
        origin,
        [
            {
                "user_id": bob,
                "device_id": "B3",
                "stream_id": 11,
                "prev_id": [10],
                "keys": device_keys(bob, "B3"),
                "device_display_name": "new",
            }
        ],
    )
    assert (reply.applied, reply.resyncs, reply.ignored) == (1, 0, 0)
    reply = await edus(
        accounts,
        origin,
        [
            {"user_id": bob, "device_id": "B1", "stream_id": 12, "prev_id": [11], "deleted": True},
            {"user_id": bob, "device_id": "B1", "stream_id": 12, "prev_id": [11], "deleted": True},
            {"user_id": new_user("other.example"), "device_id": "X", "stream_id": 1},
            {"user_id": bob, "device_id": 5, "stream_id": 13},
            "garbage",
        ],
    )
    assert (reply.applied, reply.resyncs, reply.ignored) == (1, 0, 4)
    body, cached = await remote_devices(accounts, bob)
    assert cached and [d["device_id"] for d in body["devices"]] == ["B2", "B3"]
    assert body["stream_id"] == 12 and remote_lists.fetches == [bob]

    # Signing key update from the right origin only.
    new_master = cross_key(bob, "master", "BM2")
    reply = await edus(accounts, origin, signing=[{"user_id": bob, "master_key": new_master}])
    assert reply.applied == 1
    reply = await edus(accounts, "other.example", signing=[{"user_id": bob, "master_key": master}])
    assert reply.ignored == 1
    keys = orjson.loads(
        (
            await accounts.stub.QueryKeys(
                accounts_pb2.QueryKeysRequest(device_keys_json=orjson.dumps({bob: ["B3"]}))
            )
        ).response_json
    )
    assert keys["master_keys"] == {bob: new_master}
    assert keys["device_keys"] == {
        bob: {"B3": {**device_keys(bob, "B3"), "unsigned": {"device_display_name": "new"}}}
    }
    assert keys["failures"] == {}

    # A gap in the chain: marked stale and resynced in the background.
    remote_lists.lists[bob] = {"user_id": bob, "stream_id": 20, "devices": [{"device_id": "B9"}]}
    reply = await edus(
        accounts, origin, [{"user_id": bob, "device_id": "B4", "stream_id": 15, "prev_id": [14]}]
    )
    assert reply.resyncs == 1
    for _ in range(100):
        if len(remote_lists.fetches) == 2:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)
    body, cached = await remote_devices(accounts, bob)
    assert cached and body["devices"] == [{"device_id": "B9"}] and body["stream_id"] == 20
    assert "master_key" not in body

    forced, cached = await remote_devices(accounts, bob, force=True)
    assert not cached and len(remote_lists.fetches) == 3


async def test_remote_failures(
    accounts: Accounts, remote_lists: RemoteLists, refused_port: int
) -> None:
    origin = remote_lists.server.server_name
    unknown = new_user(origin)
    await expect_error(
        accounts.stub.QueryRemoteDevices(accounts_pb2.QueryRemoteDevicesRequest(user_id=unknown)),
        grpc.StatusCode.UNAVAILABLE,
    )
    await expect_error(
        accounts.stub.QueryRemoteDevices(
            accounts_pb2.QueryRemoteDevicesRequest(user_id=new_user())
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    down = new_user(f"127.0.0.1:{refused_port}")
    keys = orjson.loads(
        (
            await accounts.stub.QueryKeys(
                accounts_pb2.QueryKeysRequest(device_keys_json=orjson.dumps({down: []}))
            )
        ).response_json
    )
    assert list(keys["failures"]) == [down.split(":", 1)[1]]
    assert keys["device_keys"] == {}
    # An update about a user we do not track is ignored (the first query fetches all).
    reply = await edus(accounts, origin, [{"user_id": unknown, "device_id": "X", "stream_id": 3}])
    assert reply.ignored == 1
    await expect_error(
        accounts.stub.InputDeviceListUpdates(accounts_pb2.InputDeviceListUpdatesRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
