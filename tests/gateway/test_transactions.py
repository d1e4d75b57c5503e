"""``PUT /_matrix/federation/v1/send/{txnId}`` against a whole running mxfed.

A FakeHomeserver plays the remote side: its user joins a public room created
on mxfed over gRPC, then it sends PDUs and EDUs in signed transactions.

The scene helpers live in ``tests/support/scene.py``; the module-scoped
``scene`` fixture (``tests/conftest.py``) runs one mxfed for this module.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest

from matrix_protocol.canonical_json import decode_json, encode_json
from mxfed_api.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.scene import Room, Scene, event_id_of

pytestmark = pytest.mark.whole_stack

# Fixtures ----------------------------------------------------------------------


@pytest.fixture
async def room(scene: Scene) -> Room:
    """A fresh public room on mxfed that the remote's @bob has joined."""
    return await scene.joined_room()


# A valid transaction -------------------------------------------------------------


async def test_a_valid_message_is_stored_and_readable(scene: Scene, room: Room) -> None:
    bob = scene.remote.user("bob")
    event_id, pdu = await scene.build(
        room, bob, "m.room.message", {"msgtype": "m.text", "body": "hello mxfed"}
    )
    response = await scene.send([pdu])
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"pdus": {event_id: {}}}

    record = await scene.record(event_id)
    assert record is not None
    assert record.status == events_pb2.EVENT_STATUS_ACCEPTED
    assert orjson.loads(record.pdu_json)["content"]["body"] == "hello mxfed"
    assert event_id in await scene.timeline_ids(room.room_id)

    fetched = await scene.get(f"/_matrix/federation/v1/event/{quote(event_id, safe='')}")
    assert fetched.status_code == 200
    assert fetched.json()["pdus"][0]["content"]["body"] == "hello mxfed"


async def test_several_pdus_in_one_transaction(scene: Scene, room: Room) -> None:
    bob = scene.remote.user("bob")
    first_id, first = await scene.build(room, bob, "m.room.message", {"body": "one"})
    second_id, second = await scene.build(
        room,
        bob,
        "m.room.message",
        {"body": "two"},
        prev_events=[first_id],
        depth=first["depth"] + 1,
    )
    response = await scene.send([first, second])
    assert response.status_code == 200
    assert response.json() == {"pdus": {first_id: {}, second_id: {}}}
    timeline = await scene.timeline_ids(room.room_id)
    assert first_id in timeline and second_id in timeline


async def test_an_empty_transaction_with_an_edu_of_another_owner(scene: Scene) -> None:
    edus = [
        {"edu_type": "m.device_list_update", "content": {"user_id": scene.remote.user("bob")}},
        {"edu_type": "m.presence", "content": {"push": []}},
    ]
    response = await scene.send([], edus)
    assert response.status_code == 200
    assert response.json() == {"pdus": {}}


async def test_typing_edu_reaches_the_events_stream(scene: Scene, room: Room) -> None:
    bob = scene.remote.user("bob")
    stream = scene.events.StreamEvents(
        events_pb2.StreamEventsRequest(
            room_id=room.room_id, after_position=-1, include_ephemeral=True
        )
    )

    async def first_typing() -> events_pb2.Typing:
        async for item in stream:
            if item.WhichOneof("item") == "typing":
                return item.typing
        raise AssertionError("stream ended")

    waiter = asyncio.create_task(first_typing())
    try:
        edu = {
            "edu_type": "m.typing",
            "content": {"room_id": room.room_id, "user_id": bob, "typing": True},
        }
        # The subscription may not be live yet: repeat the EDU until it shows.
        for _ in range(20):
            response = await scene.send([], [edu])
            assert response.status_code == 200
            done, _ = await asyncio.wait({waiter}, timeout=0.5)
            if done:
                break
        typing = await asyncio.wait_for(waiter, timeout=5)
    finally:
        stream.cancel()
        waiter.cancel()
    assert (typing.room_id, typing.user_id, typing.typing) == (room.room_id, bob, True)


async def test_receipt_edu_reaches_the_events_stream(scene: Scene, room: Room) -> None:
    bob = scene.remote.user("bob")
    message_id, message = await scene.build(room, bob, "m.room.message", {"body": "read me"})
    assert (await scene.send([message])).json() == {"pdus": {message_id: {}}}
    stream = scene.events.StreamEvents(
        events_pb2.StreamEventsRequest(
            room_id=room.room_id, after_position=-1, include_ephemeral=True
        )
    )

    async def first_receipt() -> events_pb2.Receipt:
        async for item in stream:
            if item.WhichOneof("item") == "receipt":
                return item.receipt
        raise AssertionError("stream ended")

    waiter = asyncio.create_task(first_receipt())
    try:
        receipt = {"event_ids": [message_id], "data": {"ts": int(time.time() * 1000)}}
        edu = {"edu_type": "m.receipt", "content": {room.room_id: {"m.read": {bob: receipt}}}}
        for _ in range(20):
            assert (await scene.send([], [edu])).status_code == 200
            done, _ = await asyncio.wait({waiter}, timeout=0.5)
            if done:
                break
        got = await asyncio.wait_for(waiter, timeout=5)
    finally:
        stream.cancel()
        waiter.cancel()
    assert (got.room_id, got.user_id, got.receipt_type, got.event_id) == (
        room.room_id,
        bob,
        "m.read",
        message_id,
    )


# PDUs that fail checks ---------------------------------------------------------------


async def test_a_bad_signature_is_dropped(scene: Scene, room: Room) -> None:
    _, pdu = await scene.build(room, scene.remote.user("bob"), "m.room.message", {"body": "x"})
    forged = copy.deepcopy(pdu)
    (key_id,) = forged["signatures"][scene.remote.server_name]
    signature = forged["signatures"][scene.remote.server_name][key_id]
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    forged["signatures"][scene.remote.server_name][key_id] = flipped
    event_id = event_id_of(forged, room.version)

    response = await scene.send([forged])
    assert response.status_code == 200
    result = response.json()["pdus"]
    assert "error" in result[event_id]
    assert await scene.record(event_id) is None
    assert event_id not in await scene.timeline_ids(room.room_id)


async def test_a_bad_content_hash_is_stored_redacted(scene: Scene, room: Room) -> None:
    _, pdu = await scene.build(
        room, scene.remote.user("bob"), "m.room.message", {"msgtype": "m.text", "body": "real"}
    )
    tampered = copy.deepcopy(pdu)
    # Content is not covered by the signature of a message (redacted form), only by the hash.
    tampered["content"]["body"] = "tampered"
    event_id = event_id_of(tampered, room.version)

    response = await scene.send([tampered])
    assert response.status_code == 200
    assert event_id in response.json()["pdus"]
    record = await scene.record(event_id)
    assert record is not None
    assert record.redacted
    assert orjson.loads(record.pdu_json)["content"] == {}


async def test_a_non_member_message_is_rejected(scene: Scene, room: Room) -> None:
    stranger = scene.remote.user("stranger")
    event_id, pdu = await scene.build(room, stranger, "m.room.message", {"body": "let me in"})
    response = await scene.send([pdu])
    assert response.status_code == 200
    assert "error" in response.json()["pdus"][event_id]
    record = await scene.record(event_id)
    assert record is None or record.status == events_pb2.EVENT_STATUS_REJECTED
    assert event_id not in await scene.timeline_ids(room.room_id)
    fetched = await scene.get(f"/_matrix/federation/v1/event/{quote(event_id, safe='')}")
    assert fetched.status_code == 404
    assert fetched.json()["errcode"] == "M_NOT_FOUND"


async def test_power_levels_without_power_are_rejected(scene: Scene, room: Room) -> None:
    bob = scene.remote.user("bob")
    state = await scene.current_state(room.room_id)
    power_levels = await scene.record(state[("m.room.power_levels", "")])
    assert power_levels is not None
    content = orjson.loads(power_levels.pdu_json)["content"]
    content.setdefault("users", {})[bob] = 100
    event_id, pdu = await scene.build(room, bob, "m.room.power_levels", content, "")
    response = await scene.send([pdu])
    assert response.status_code == 200
    assert "error" in response.json()["pdus"][event_id]
    assert (await scene.current_state(room.room_id))[("m.room.power_levels", "")] == state[
        ("m.room.power_levels", "")
    ]


async def test_a_message_from_a_banned_member_on_an_old_branch_is_soft_failed(
    scene: Scene, room: Room
) -> None:
    # Carol (on bob's server) joins; bob stays, so the server keeps a member.
    carol = scene.remote.user("carol")
    await scene.join(room, carol)
    before_ban = await scene.current_state(room.room_id)
    info = await scene.events.QueryRoomInfo(
        events_pb2.QueryRoomInfoRequest(room_id=room.room_id), timeout=10
    )
    old_extremities, old_depth = list(info.forward_extremities), info.max_depth
    ban_id = await scene.send_local(room, "m.room.member", {"membership": "ban"}, carol)

    # Carol's server has not seen the ban: it builds on the state before it. The
    # message passes auth against its own auth events and the state at its
    # prev events, but not against the current state.
    event_id, pdu = await scene.build(
        room,
        carol,
        "m.room.message",
        {"body": "sent before I saw the ban"},
        prev_events=old_extremities,
        state=before_ban,
        depth=old_depth + 1,
    )
    response = await scene.send([pdu])
    assert response.status_code == 200
    assert event_id in response.json()["pdus"]
    record = await scene.record(event_id)
    assert record is not None
    assert record.status == events_pb2.EVENT_STATUS_SOFT_FAILED
    assert (await scene.current_state(room.room_id))[("m.room.member", carol)] == ban_id
    assert event_id not in await scene.timeline_ids(room.room_id)
    # Soft-failed events are still served by /event (spec).
    fetched = await scene.get(f"/_matrix/federation/v1/event/{quote(event_id, safe='')}")
    assert fetched.status_code == 200
    assert fetched.json()["pdus"][0]["content"]["body"] == "sent before I saw the ban"


async def test_a_pdu_relayed_by_a_server_that_is_not_the_senders_is_refused(
    scene: Scene, room: Room, outsider: FakeHomeserver
) -> None:
    # Validly signed by bob's server and allowed by the auth rules, but sent
    # in a transaction from another server.
    event_id, pdu = await scene.build(
        room, scene.remote.user("bob"), "m.room.message", {"body": "relayed"}
    )
    response = await scene.send([pdu], server=outsider)
    assert response.status_code == 200
    assert "error" in response.json()["pdus"][event_id]
    record = await scene.record(event_id)
    assert record is None or record.status == events_pb2.EVENT_STATUS_REJECTED
    assert event_id not in await scene.timeline_ids(room.room_id)


# Idempotency ---------------------------------------------------------------------


async def test_a_retried_transaction_gets_the_same_response_and_stores_nothing_twice(
    scene: Scene, room: Room
) -> None:
    bob = scene.remote.user("bob")
    event_id, pdu = await scene.build(room, bob, "m.room.message", {"body": "once"})
    _, bad = await scene.build(room, scene.remote.user("nobody"), "m.room.message", {"body": "no"})
    txn_id = "retry-" + uuid.uuid4().hex
    body = {
        "origin": scene.remote.server_name,
        "origin_server_ts": int(time.time() * 1000),
        "pdus": [pdu, bad],
    }
    first = await scene.put_transaction(body, txn_id=txn_id)
    timeline = await scene.timeline_ids(room.room_id)
    second = await scene.put_transaction(body, txn_id=txn_id)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert first.json()["pdus"][event_id] == {}
    assert await scene.timeline_ids(room.room_id) == timeline
    assert timeline.count(event_id) == 1


async def test_concurrent_retries_of_one_transaction_agree(scene: Scene, room: Room) -> None:
    bob = scene.remote.user("bob")
    event_id, pdu = await scene.build(room, bob, "m.room.message", {"body": "raced"})
    txn_id = "race-" + uuid.uuid4().hex
    body = {"origin": scene.remote.server_name, "origin_server_ts": 1, "pdus": [pdu]}
    responses = await asyncio.gather(
        *(scene.put_transaction(body, txn_id=txn_id) for _ in range(3))
    )
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert all(r.json() == {"pdus": {event_id: {}}} for r in responses)
    assert (await scene.timeline_ids(room.room_id)).count(event_id) == 1


# Malformed transactions --------------------------------------------------------------


async def test_more_than_50_pdus_is_refused(scene: Scene) -> None:
    pdu = {"type": "m.room.message", "room_id": "!nowhere", "content": {}}
    response = await scene.send([pdu] * 51)
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_BAD_JSON"


async def test_more_than_100_edus_is_refused(scene: Scene) -> None:
    edu = {"edu_type": "m.presence", "content": {"push": []}}
    response = await scene.send([], [edu] * 101)
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_BAD_JSON"


async def test_a_body_that_is_not_json_is_refused(scene: Scene) -> None:
    response = await scene.put_raw("/_matrix/federation/v1/send/notjson", b"{not json")
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_NOT_JSON"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param([1, 2], id="array"),
        pytest.param({"origin_server_ts": 1, "pdus": []}, id="no-origin"),
        pytest.param({"origin": 5, "origin_server_ts": 1, "pdus": []}, id="origin-not-string"),
        pytest.param({"origin": "x", "pdus": []}, id="no-origin_server_ts"),
        pytest.param({"origin": "x", "origin_server_ts": "1", "pdus": []}, id="ts-not-int"),
        pytest.param({"origin": "x", "origin_server_ts": 1}, id="no-pdus"),
        pytest.param({"origin": "x", "origin_server_ts": 1, "pdus": {}}, id="pdus-not-list"),
        pytest.param({"origin": "x", "origin_server_ts": 1, "pdus": [3]}, id="pdu-not-object"),
        pytest.param(
            {"origin": "x", "origin_server_ts": 1, "pdus": [], "edus": {}}, id="edus-not-list"
        ),
        pytest.param(
            {"origin": "x", "origin_server_ts": 1, "pdus": [], "edus": ["typing"]},
            id="edu-not-object",
        ),
        pytest.param(
            {"origin": "x", "origin_server_ts": 1, "pdus": [], "edus": [{"content": {}}]},
            id="edu-without-type",
        ),
        pytest.param(
            {
                "origin": "x",
                "origin_server_ts": 1,
                "pdus": [],
                "edus": [{"edu_type": "m.typing", "content": []}],
            },
            id="edu-content-not-object",
        ),
    ],
)
async def test_malformed_transactions_are_400(scene: Scene, body: Any) -> None:
    uri = f"/_matrix/federation/v1/send/{uuid.uuid4().hex}"
    response = await scene.put_raw(uri, encode_json(body), signed_content=body)
    assert response.status_code == 400, response.text
    assert response.json()["errcode"] in ("M_BAD_JSON", "M_NOT_JSON")


async def test_pdus_that_are_garbage_get_no_500(scene: Scene, room: Room) -> None:
    pdus = [
        {},
        {"room_id": room.room_id},
        {"room_id": "!unknown:nowhere.example", "type": "m.room.message"},
        {"room_id": room.room_id, "type": 5, "sender": [], "content": "x", "depth": "deep"},
    ]
    response = await scene.send(pdus)
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["pdus"], dict)


async def test_an_unsigned_transaction_is_refused(scene: Scene) -> None:
    async with httpx.AsyncClient(verify=False, timeout=30) as client:
        response = await client.put(
            scene.mxfed.federation_url + "/_matrix/federation/v1/send/unsigned",
            json={"origin": "x", "origin_server_ts": 1, "pdus": []},
        )
    assert response.status_code == 401
    assert response.json()["errcode"] == "M_UNAUTHORIZED"


# The gateway alone, with a stand-in events service -------------------------------------
#
# What the whole-mxfed tests above cannot pin down deterministically: exactly
# one InputTransaction call per transaction, which EDUs are passed on, and the
# 429 for a concurrent different transaction from the same origin.


class _RecordingEvents(events_pb2_grpc.EventsServicer):
    def __init__(self) -> None:
        self.calls: list[events_pb2.InputTransactionRequest] = []
        self.release = asyncio.Event()

    async def InputTransaction(  # noqa: N802 (gRPC method name)
        self, request: events_pb2.InputTransactionRequest, context: Any
    ) -> events_pb2.InputTransactionResponse:
        self.calls.append(request)
        await self.release.wait()
        return events_pb2.InputTransactionResponse(response_json=b'{"pdus":{"$x":{}}}')


class _RecordingAccounts(accounts_pb2_grpc.AccountsServicer):
    def __init__(self) -> None:
        self.calls: list[accounts_pb2.InputDeviceListUpdatesRequest] = []

    async def InputDeviceListUpdates(  # noqa: N802 (gRPC method name)
        self, request: accounts_pb2.InputDeviceListUpdatesRequest, context: Any
    ) -> accounts_pb2.InputDeviceListUpdatesResponse:
        self.calls.append(request)
        return accounts_pb2.InputDeviceListUpdatesResponse()


@pytest.fixture
async def standin() -> AsyncIterator[tuple[httpx.AsyncClient, _RecordingEvents]]:
    from gateway.app import create_app
    from gateway.service_clients import ServiceClients
    from gateway.xmatrix_auth import require_origin
    from mxfed.config import Config
    from tests.support.grpc_plane import bind_loopback, make_server, plane_settings

    servicer = _RecordingEvents()
    server = make_server("events")
    events_pb2_grpc.add_EventsServicer_to_server(servicer, server)
    servicer.accounts = _RecordingAccounts()  # type: ignore[attr-defined]
    accounts_pb2_grpc.add_AccountsServicer_to_server(servicer.accounts, server)  # type: ignore[attr-defined]
    # One server standing in for both, on a port per part (each its own certificate).
    events_address = bind_loopback(server, "events")
    keys_address = bind_loopback(server, "keys")
    await server.start()
    config = Config(
        server_name="us.example",
        events_address=events_address,
        keys_address=keys_address,
        **plane_settings(),
    )
    clients = ServiceClients(config)
    app = create_app(config, clients)

    async def verified_origin() -> str:
        return "them.example"

    app.dependency_overrides[require_origin] = verified_origin
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://gateway")
    yield http, servicer
    servicer.release.set()
    await http.aclose()
    await clients.close()
    await server.stop(grace=None)


def _transaction(**extra: Any) -> dict[str, Any]:
    return {"origin": "claimed.example", "origin_server_ts": 1, "pdus": [], **extra}


async def test_one_input_call_per_transaction_with_only_the_events_services_edus(
    standin: tuple[httpx.AsyncClient, _RecordingEvents],
) -> None:
    http, servicer = standin
    servicer.release.set()
    pdus = [{"type": "m.room.message", "n": i, "big": 2**70} for i in range(50)]
    edus = [
        {"edu_type": "m.typing", "content": {"typing": True}, "origin": "legacy"},
        {"edu_type": "m.receipt", "content": {}},
        {"edu_type": "m.direct_to_device", "content": {}},
        {"edu_type": "m.device_list_update", "content": {}},
        {"edu_type": "m.signing_key_update", "content": {}},
        {"edu_type": "m.presence", "content": {}},
    ]
    body = encode_json(_transaction(pdus=pdus, edus=edus))
    response = await http.put("/_matrix/federation/v1/send/abc", content=body)
    assert response.status_code == 200
    assert response.content == b'{"pdus":{"$x":{}}}'
    (call,) = servicer.calls
    assert (call.origin, call.txn_id) == ("them.example", "abc")  # not the body's origin
    assert [decode_json(pdu) for pdu in call.pdus] == pdus
    assert [decode_json(edu) for edu in call.edus] == [
        {"edu_type": "m.typing", "content": {"typing": True}},
        {"edu_type": "m.receipt", "content": {}},
    ]
    (keys_call,) = servicer.accounts.calls  # type: ignore[attr-defined]
    assert keys_call.origin == "them.example"


async def test_a_concurrent_different_transaction_is_429_and_a_retry_joins(
    standin: tuple[httpx.AsyncClient, _RecordingEvents],
) -> None:
    http, servicer = standin
    body = encode_json(_transaction())
    first = asyncio.create_task(http.put("/_matrix/federation/v1/send/one", content=body))
    while not servicer.calls:
        await asyncio.sleep(0.01)
    retry = asyncio.create_task(http.put("/_matrix/federation/v1/send/one", content=body))
    other = await http.put("/_matrix/federation/v1/send/two", content=body)
    assert other.status_code == 429
    assert other.json()["errcode"] == "M_UNKNOWN"
    assert "retry-after" in other.headers
    servicer.release.set()
    assert (await first).status_code == 200
    assert (await retry).content == b'{"pdus":{"$x":{}}}'
    assert len(servicer.calls) == 1
    after = await http.put("/_matrix/federation/v1/send/two", content=body)
    assert after.status_code == 200
    assert len(servicer.calls) == 2
