"""Purging history and shutting down a room with a real Synapse in it.

An mxfed room that a Synapse user has joined: after ``mxfed room purge``
the room's later events, from either side, still authorise and cross; after
``mxfed room shutdown`` our members' leaves reach Synapse, which keeps
working, while mxfed refuses the room.
"""

from __future__ import annotations

import secrets

import grpc
import pytest
from synapse_harness import SynapseClient, SynapseServer, wait_until

from mxfed.internal_plane import OPERATOR
from mxfed_api.events.v1 import admin_pb2, admin_pb2_grpc, events_pb2
from tests.support.mx import Mx

pytestmark = [pytest.mark.interop, pytest.mark.whole_stack]


async def test_purge_and_shutdown_with_synapse_in_the_room(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient
) -> None:
    alice = mx.user("alice")
    room_id = await mx.create_room(alice)
    bob, bob_token = await synapse_client.register(f"bob_{secrets.token_hex(4)}")
    assert await synapse_client.join(bob_token, room_id, via=[mx.server_name]) == room_id
    await wait_until(lambda: _membership_is(mx, room_id, bob, "join"), timeout=30)
    old = [await mx.send_text(room_id, alice, f"old {n}") for n in range(3)]
    from_bob = await synapse_client.send_message(bob_token, room_id, "old from bob")
    await wait_until(lambda: _held(mx, from_bob), timeout=30)
    keep = await mx.send_text(room_id, alice, "kept")

    async with mx.process.channel("events", caller=OPERATOR) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        purged = await admin.PerformPurgeHistory(
            admin_pb2.PerformPurgeHistoryRequest(room_id=room_id, before_event_id=keep)
        )
        assert purged.purged_events >= 4
        for event_id in [*old, from_bob]:
            assert await mx.status_of(event_id) is None
        # Later events authorise on both sides.
        later_bob = await synapse_client.send_message(bob_token, room_id, "after the purge")
        await wait_until(lambda: _accepted(mx, later_bob), timeout=30)
        later_alice = await mx.send_text(room_id, alice, "after the purge too")
        await synapse_client.wait_for_event(
            bob_token, room_id, lambda e: e.get("event_id") == later_alice, timeout=30
        )

        reply = await admin.PerformShutdownRoom(
            admin_pb2.PerformShutdownRoomRequest(room_id=room_id, reason="shut down")
        )
        assert list(reply.left_users) == [alice]
    # Synapse sees alice leave, and keeps working in the room and elsewhere.
    await synapse_client.wait_for_event(
        bob_token,
        room_id,
        lambda e: e.get("state_key") == alice and e["content"].get("membership") == "leave",
        timeout=30,
    )
    assert await synapse_client.send_message(bob_token, room_id, "still here")
    elsewhere = await synapse_client.create_room(bob_token)
    assert await synapse_client.send_message(bob_token, elsewhere, "fine")
    # mxfed refuses the room, even through the server still in it.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await mx.join(room_id, mx.user("carol"), via=[synapse.server_name])
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def _membership_is(mx: Mx, room_id: str, user_id: str, membership: str) -> bool:
    return await mx.membership_of(room_id, user_id) == membership


async def _held(mx: Mx, event_id: str) -> bool:
    return await mx.status_of(event_id) is not None


async def _accepted(mx: Mx, event_id: str) -> bool:
    return await mx.status_of(event_id) == events_pb2.EVENT_STATUS_ACCEPTED
