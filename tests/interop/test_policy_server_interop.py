"""Policy servers with a real Synapse in a room mxfed hosts (spec v1.18+, "Policy Servers").

The test policy server (tests.support.policy_server: signs with its own key,
refuses anything mentioning "spam") has a member in the room and is named by
its m.room.policy. Synapse and mxfed both ask it before sending: mxfed's
signed events are accepted by Synapse, Synapse's signed ones by mxfed, and
each refuses to send what the policy server refuses.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
import pytest
from synapse_harness import SynapseClient, SynapseClientError, SynapseServer, wait_until

from matrix_protocol.events import Event
from matrix_protocol.policy_servers import has_valid_policy_signature, policy_server_from_content
from mxfed_api.events.v1 import events_pb2
from tests.support.policy_server import PolicyServer
from tests.support.scene import Room, Scene
from tests.support.service_errors import errcode

pytestmark = [pytest.mark.interop, pytest.mark.whole_stack]


@pytest.fixture(scope="module")
async def policy_server() -> AsyncIterator[PolicyServer]:
    from matrix_protocol.room_versions import room_version

    server = PolicyServer(room_version("10"))
    await server.start()
    yield server
    await server.stop()


async def _bodies(scene: Scene, room: Room) -> dict[str, dict[str, Any]]:
    reply = await scene.events.QueryTimeline(
        events_pb2.QueryTimelineRequest(room_id=room.room_id, backwards=True, limit=50),
        timeout=10,
    )
    found = {}
    for record in reply.events:
        pdu = orjson.loads(record.pdu_json)
        body = pdu.get("content", {}).get("body")
        if isinstance(body, str):
            found[body] = {"pdu": pdu, "status": record.status, "event_id": record.event_id}
    return found


async def test_synapse_and_mxfed_both_ask_the_policy_server(
    scene: Scene,
    policy_server: PolicyServer,
    synapse: SynapseServer,
    synapse_client: SynapseClient,
) -> None:
    room = await scene.create_room(preset="public_chat", room_version="10")
    await scene.send_local(room, "m.room.policy", policy_server.policy_content(), "")
    await scene.join(
        room, policy_server.homeserver.user("moderator"), server=policy_server.homeserver
    )
    policy = policy_server_from_content(policy_server.policy_content())
    assert policy is not None

    bob, token = await synapse_client.register(f"bob_{secrets.token_hex(4)}")
    assert await synapse_client.join(token, room.room_id, via=[scene.mxfed.server_name])

    # Ours, signed by the policy server: Synapse accepts it.
    await scene.send_local(room, "m.room.message", {"msgtype": "m.text", "body": "from mxfed"})
    await synapse_client.wait_for_event(
        token, room.room_id, lambda e: e.get("content", {}).get("body") == "from mxfed", 60
    )
    # Refused by the policy server: not sent.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await scene.send_local(room, "m.room.message", {"msgtype": "m.text", "body": "spam"})
    assert errcode(refused.value) == "M_FORBIDDEN"

    # Synapse's, signed by the policy server at Synapse's request: accepted here.
    await synapse_client.send_message(token, room.room_id, "from synapse")

    async def arrived() -> dict[str, Any] | None:
        return (await _bodies(scene, room)).get("from synapse")

    stored = await wait_until(arrived, timeout=60)
    assert stored["status"] == events_pb2.EVENT_STATUS_ACCEPTED
    event = Event(stored["pdu"], room.version, stored["event_id"])
    assert has_valid_policy_signature(event, policy)
    # Synapse asked for that signature itself (its X-Matrix origin), not mxfed on receipt.
    askers = [
        authorization
        for pdu, authorization in zip(
            policy_server.requests, policy_server.authorizations, strict=True
        )
        if Event.from_pdu(pdu, room.version).event_id == stored["event_id"]
    ]
    assert askers and all(f'origin="{synapse.server_name}"' in a for a in askers), askers
    # Refused by the policy server: Synapse refuses to send it.
    with pytest.raises(SynapseClientError) as spam:
        await synapse_client.send_message(token, room.room_id, "synapse spam")
    assert spam.value.errcode == "M_FORBIDDEN"
    assert "synapse spam" not in await _bodies(scene, room)
