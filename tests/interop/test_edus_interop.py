"""Typing notifications and read receipts from mxfed reach a Synapse user.

A whole mxfed runs (``MxfedProcess``); a Synapse user joins a room hosted by
mxfed; a local mxfed user's typing and read receipt go through the sender's
``PerformSendEdus`` as EDUs in ``/send`` transactions; the Synapse user sees
them in the ``ephemeral`` section of the room in ``/sync``.

What Synapse requires before it shows a remote typing notification or
receipt (its federation EDU handlers): Synapse itself is in the room; the
EDU's ``user_id`` (each receipt's user) belongs to the transaction's
``origin``; and the origin server is one of the room's current hosts, i.e.
has a joined member in Synapse's view of the room. Typing must be
``"typing": true`` and lasts 60 s on Synapse's side (no timeout is sent over
federation). All of that holds here, and the EDUs do arrive.

Why an earlier check saw nothing in "the initial /sync": Synapse caches sync
responses by request (``caches.sync_response_cache_duration``, 2 minutes by
default), so repeating the same initial sync (no ``since``, same filter)
returns the cached answer from before — in that case without the room at
all. The test follows incremental syncs from a token taken before sending,
and also checks that an initial sync with a request of its own (a distinct
filter) shows the typing user.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from synapse_harness import SynapseClient, SynapseServer

from mxfed_api.events.v1 import events_pb2, events_pb2_grpc
from mxfed_api.sender.v1 import sender_pb2, sender_pb2_grpc
from tests.support.mxfed_process import MxfedProcess

pytestmark = [pytest.mark.interop, pytest.mark.whole_stack]


@pytest.fixture
async def channels(mxfed: MxfedProcess) -> AsyncIterator[tuple[Any, Any]]:
    events_channel = mxfed.channel("events")
    sender_channel = mxfed.channel("sender")
    yield (
        events_pb2_grpc.EventsStub(events_channel),
        sender_pb2_grpc.SenderStub(sender_channel),
    )
    await events_channel.close()
    await sender_channel.close()


async def wait_for_ephemeral(
    client: SynapseClient,
    token: str,
    room_id: str,
    since: str,
    predicate: Any,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """The first ephemeral event of ``room_id`` matching, in syncs after ``since``."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no matching ephemeral event in {room_id} within {timeout}s")
        response = await client.sync(token, since=since, timeout=int(min(left, 5.0) * 1000))
        since = response["next_batch"]
        room = response.get("rooms", {}).get("join", {}).get(room_id, {})
        for event in room.get("ephemeral", {}).get("events", []):
            if predicate(event):
                return event


async def test_typing_and_a_read_receipt_reach_a_synapse_user(
    mxfed: MxfedProcess,
    channels: tuple[Any, Any],
    synapse: SynapseServer,
    synapse_client: SynapseClient,
) -> None:
    events, sender = channels
    alice = f"@alice{secrets.token_hex(3)}:{mxfed.server_name}"
    room_id = (
        await events.PerformCreateRoom(
            events_pb2.PerformCreateRoomRequest(creator=alice, preset="public_chat"), timeout=30
        )
    ).room_id
    bob, bob_token = await synapse_client.register(f"bob_{secrets.token_hex(4)}")
    assert await synapse_client.join(bob_token, room_id, via=[mxfed.server_name]) == room_id
    message_id = await synapse_client.send_message(bob_token, room_id, "read me")
    since = (await synapse_client.sync(bob_token))["next_batch"]

    typing = {"room_id": room_id, "user_id": alice, "typing": True}
    reply = await sender.PerformSendEdus(
        sender_pb2.PerformSendEdusRequest(
            edus=[sender_pb2.Edu(edu_type="m.typing", content_json=orjson.dumps(typing))]
        ),
        timeout=30,
    )
    assert reply.queued == 1  # one destination: the Synapse server
    event = await wait_for_ephemeral(
        synapse_client,
        bob_token,
        room_id,
        since,
        lambda e: e.get("type") == "m.typing" and alice in e["content"].get("user_ids", []),
    )
    assert event["content"]["user_ids"] == [alice]
    # A fresh initial sync (not the cached answer to an identical earlier one).
    initial = await synapse_client.sync(
        bob_token, filter={"room": {"timeline": {"limit": secrets.randbelow(20) + 1}}}
    )
    ephemeral = initial["rooms"]["join"][room_id]["ephemeral"]["events"]
    assert {"type": "m.typing", "content": {"user_ids": [alice]}} in ephemeral

    receipt = {room_id: {"m.read": {alice: {"event_ids": [message_id], "data": {"ts": 1}}}}}
    reply = await sender.PerformSendEdus(
        sender_pb2.PerformSendEdusRequest(
            edus=[sender_pb2.Edu(edu_type="m.receipt", content_json=orjson.dumps(receipt))]
        ),
        timeout=30,
    )
    assert reply.queued == 1
    event = await wait_for_ephemeral(
        synapse_client,
        bob_token,
        room_id,
        since,
        lambda e: (
            e.get("type") == "m.receipt"
            and alice in e["content"].get(message_id, {}).get("m.read", {})
        ),
    )
    assert "ts" in event["content"][message_id]["m.read"][alice]

    # Stopping typing reaches Synapse too.
    stopped = {"room_id": room_id, "user_id": alice, "typing": False}
    await sender.PerformSendEdus(
        sender_pb2.PerformSendEdusRequest(
            edus=[sender_pb2.Edu(edu_type="m.typing", content_json=orjson.dumps(stopped))]
        ),
        timeout=30,
    )
    await wait_for_ephemeral(
        synapse_client,
        bob_token,
        room_id,
        since,
        lambda e: e.get("type") == "m.typing" and alice not in e["content"].get("user_ids", []),
    )
