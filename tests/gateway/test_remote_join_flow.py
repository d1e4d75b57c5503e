"""A whole running mxfed joining a room hosted by a fake resident server.

* The send_join answer leaves out an auth event that a state event cites:
  mxfed fetches it from the resident (``/event/{id}``, else
  ``/event_auth/{roomId}/{eventId}``) instead of rejecting that state event.
* After the join, the resident — a server that did not share a room with
  the joining user before — receives the user's device list
  (``m.device_list_update`` per device, ``m.signing_key_update``)
  (https://spec.matrix.org/v1.19/server-server-api/#device-management).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from mxfed_api.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc, membership_pb2, membership_pb2_grpc
from tests.support.databases import create_database, drop_database
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.join_resident import Resident, add_routes
from tests.support.mxfed_process import MxfedProcess

pytestmark = pytest.mark.whole_stack


class Scene:
    def __init__(self, mxfed: MxfedProcess, server: FakeHomeserver) -> None:
        self.mxfed = mxfed
        self.server = server
        self.rooms: dict[str, Resident] = {}
        self.events_channel = mxfed.channel("events")
        self.keys_channel = mxfed.channel("keys")
        self.membership = membership_pb2_grpc.MembershipStub(self.events_channel)
        self.events = events_pb2_grpc.EventsStub(self.events_channel)
        self.accounts = accounts_pb2_grpc.AccountsStub(self.keys_channel)

    def room(self, *, serve_event: bool) -> Resident:
        room = Resident(self.server, serve_event=serve_event)
        self.rooms[room.room_id] = room
        return room

    async def join(self, room: Resident, user_id: str) -> str:
        reply = await self.membership.PerformJoin(
            membership_pb2.PerformJoinRequest(
                room_id_or_alias=room.room_id, user_id=user_id, servers=[self.server.server_name]
            ),
            timeout=30,
        )
        assert reply.remote
        return reply.event_id

    async def statuses(self, event_ids: list[str]) -> dict[str, int]:
        reply = await self.events.QueryEvents(events_pb2.QueryEventsRequest(event_ids=event_ids))
        return {e.event_id: e.status for e in reply.events}


@pytest.fixture(scope="module")
async def scene(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scene]:
    database_url = await create_database("mxfed_remote_join_test")
    server = FakeHomeserver(key_version="resident1")
    rooms: dict[str, Resident] = {}
    add_routes(server, rooms)
    await server.start()
    mxfed = MxfedProcess(tmp_path_factory.mktemp("remote-join") / "mxfed", database_url)
    try:
        await asyncio.to_thread(mxfed.start)
        started = Scene(mxfed, server)
        started.rooms = rooms
        yield started
        await started.events_channel.close()
        await started.keys_channel.close()
    finally:
        await asyncio.to_thread(mxfed.stop)
        await server.stop()
        await drop_database(database_url)


def local_user(scene: Scene) -> str:
    return f"@u{secrets.token_hex(4)}:{scene.mxfed.server_name}"


@pytest.mark.parametrize("serve_event", [True, False], ids=["event", "event_auth"])
async def test_missing_auth_events_are_fetched_from_the_resident(
    scene: Scene, serve_event: bool
) -> None:
    room = scene.room(serve_event=serve_event)
    user = local_user(scene)
    join_id = await scene.join(room, user)
    statuses = await scene.statuses([room.topic, room.pl1, join_id])
    assert statuses[room.topic] != events_pb2.EVENT_STATUS_REJECTED
    assert room.pl1 in statuses and statuses[room.pl1] != events_pb2.EVENT_STATUS_REJECTED
    assert statuses[join_id] == events_pb2.EVENT_STATUS_ACCEPTED
    assert room.pl1 in room.event_requests
    if not serve_event:
        assert room.event_auth_requests  # the chain of an event citing pl1
    state = await scene.events.QueryCurrentState(
        events_pb2.QueryCurrentStateRequest(
            room_id=room.room_id, filter=[events_pb2.StateKeyFilter(type="m.room.topic")]
        )
    )
    [topic] = state.events
    assert topic.event_id == room.topic


async def test_joining_sends_the_users_device_list_to_the_new_server(scene: Scene) -> None:
    room = scene.room(serve_event=True)
    user = local_user(scene)
    device_keys = {
        "user_id": user,
        "device_id": "DEV1",
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {"curve25519:DEV1": "c", "ed25519:DEV1": "e"},
        "signatures": {user: {"ed25519:DEV1": "s"}},
    }
    await scene.accounts.PerformUploadKeys(
        accounts_pb2.PerformUploadKeysRequest(
            user_id=user,
            device_id="DEV1",
            display_name="Phone",
            device_keys_json=orjson.dumps(device_keys),
        )
    )
    master = {"user_id": user, "usage": ["master"], "keys": {"ed25519:MK": "MK"}}
    await scene.accounts.PerformUploadCrossSigningKeys(
        accounts_pb2.PerformUploadCrossSigningKeysRequest(
            user_id=user, master_key_json=orjson.dumps(master)
        )
    )
    # Nothing was sent before the join: the user shared no room with the resident.
    assert not [e for e in room.edus if e.get("content", {}).get("user_id") == user]
    await scene.join(room, user)

    def mine(edu_type: str) -> list[dict[str, Any]]:
        return [
            e["content"]
            for e in room.edus
            if e.get("edu_type") == edu_type and e.get("content", {}).get("user_id") == user
        ]

    for _ in range(150):
        if mine("m.device_list_update") and mine("m.signing_key_update"):
            break
        await asyncio.sleep(0.2)
    [update] = mine("m.device_list_update")
    assert update["device_id"] == "DEV1"
    assert update["keys"] == device_keys
    assert update["device_display_name"] == "Phone"
    assert update["prev_id"] == []
    assert update["stream_id"] >= 1
    [signing] = mine("m.signing_key_update")
    assert signing["master_key"] == master


async def _events_gauge(scene: Scene, name: str) -> float:
    url = f"http://127.0.0.1:{scene.mxfed.metrics_ports['events']}/metrics"
    async with httpx.AsyncClient() as client:
        text = (await client.get(url, timeout=10)).text
    [value] = [line.split()[1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)


async def test_a_pdu_sent_during_the_join_waits_for_it_instead_of_being_dropped(
    scene: Scene,
) -> None:
    """A resident sends the room's next PDU as soon as it has our join — Synapse
    does, before its send_join answer reaches us — and sends it once: it must
    wait for the join to be stored, not be dropped as a PDU of an unknown room."""
    room = scene.room(serve_event=True)
    sent: list[tuple[str, asyncio.Task[httpx.Response]]] = []

    async def send_the_message_first(join_id: str) -> None:
        message_id, message = room.message("said while you were joining", after=join_id)
        body = {
            "origin": scene.server.server_name,
            "origin_server_ts": scene.server.next_ts(),
            "pdus": [message],
        }
        uri = f"/_matrix/federation/v1/send/{secrets.token_hex(8)}"
        send = asyncio.create_task(
            scene.server.federation_request(
                scene.mxfed.federation_url, scene.mxfed.server_name, "PUT", uri, body
            )
        )
        sent.append((message_id, send))
        # The join is answered once mxfed holds the transaction for it, or has
        # answered the transaction (as it did when it dropped the PDU).
        waiting = "mxfed_events_transactions_waiting_for_joins"
        while not send.done() and await _events_gauge(scene, waiting) < 1:
            await asyncio.sleep(0.05)

    room.before_send_join = send_the_message_first
    await scene.join(room, local_user(scene))
    [(message_id, send)] = sent
    answer = await send
    assert answer.status_code == 200
    assert answer.json() == {"pdus": {message_id: {}}}
    statuses = await scene.statuses([message_id])
    assert statuses[message_id] == events_pb2.EVENT_STATUS_ACCEPTED
