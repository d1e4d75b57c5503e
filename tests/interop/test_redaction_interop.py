"""Redactions with a real Synapse, both ways, room versions 12 (``redacts`` in content) and 10.

A whole mxfed runs (``MxfedProcess``) and hosts the room; a Synapse user joins
it. Redactions made on Synapse reach mxfed over /send and are served redacted;
redactions made on mxfed (PerformSendEvent) reach Synapse through the sender
service and Synapse shows the events redacted.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from synapse_harness import SynapseClient, SynapseClientError, SynapseServer, wait_until

from mxfed_api.events.v1 import events_pb2
from tests.support.mx import Mx

pytestmark = [pytest.mark.interop, pytest.mark.whole_stack]


async def _mx_event(mx: Mx, event_id: str) -> tuple[bool, dict[str, Any]] | None:
    """(redacted, content) of an event as mxfed serves it, or None when not held."""
    reply = await mx.events.QueryEvents(
        events_pb2.QueryEventsRequest(event_ids=[event_id]), timeout=10
    )
    if not reply.events:
        return None
    record = reply.events[0]
    return record.redacted, orjson.loads(record.pdu_json)["content"]


async def _synapse_content(
    client: SynapseClient, token: str, room_id: str, event_id: str
) -> dict[str, Any] | None:
    try:
        return (await client.get_event(token, room_id, event_id))["content"]
    except SynapseClientError:
        return None  # not there yet


async def _synapse_redacts(
    client: SynapseClient, token: str, room_id: str, event_id: str, reason: str
) -> str:
    reply = await client.request(
        "PUT",
        f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/redact/"
        f"{quote(event_id, safe='')}/{secrets.token_hex(6)}",
        token,
        json={"reason": reason},
    )
    return reply["event_id"]


async def _room_with_synapse_member(
    mx: Mx, client: SynapseClient, version: str
) -> tuple[str, str, str, str]:
    """An mxfed room (alice, PL 100) that a Synapse user (bob, PL 0) has joined."""
    alice = mx.user("alice")
    room_id = await mx.create_room(alice, version=version)
    bob, bob_token = await client.register(f"bob_{secrets.token_hex(4)}")
    assert await client.join(bob_token, room_id, via=[mx.server_name]) == room_id
    await wait_until(lambda: _membership_is(mx, room_id, bob, "join"), timeout=30)
    return room_id, alice, bob, bob_token


async def _membership_is(mx: Mx, room_id: str, user_id: str, membership: str) -> bool:
    return await mx.membership_of(room_id, user_id) == membership


@pytest.mark.parametrize("version", ["12", "10"])
async def test_synapse_user_redacts_in_mxfed_room(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient, version: str
) -> None:
    room_id, _, _, bob_token = await _room_with_synapse_member(mx, synapse_client, version)
    message_id = await synapse_client.send_message(bob_token, room_id, "regretted")
    await wait_until(lambda: _mx_event(mx, message_id), timeout=30)
    assert await _mx_event(mx, message_id) == (False, {"msgtype": "m.text", "body": "regretted"})
    # Bob has no redact power in alice's room but redacts his own event (same server).
    redaction_id = await _synapse_redacts(synapse_client, bob_token, room_id, message_id, "oops")
    await wait_until(lambda: _mx_event(mx, redaction_id), timeout=30)
    assert await _mx_event(mx, message_id) == (True, {})
    # Synapse itself refuses bob's redaction of alice's event (no redact power),
    # so that case is covered by tests/services/events/test_redactions.py.


@pytest.mark.parametrize("version", ["12", "10"])
async def test_mxfed_user_redacts_and_synapse_shows_it_redacted(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient, version: str
) -> None:
    room_id, alice, _, bob_token = await _room_with_synapse_member(mx, synapse_client, version)
    own = await mx.send_text(room_id, alice, "to be taken back")
    theirs = await synapse_client.send_message(bob_token, room_id, "moderated")
    await wait_until(lambda: _mx_event(mx, theirs), timeout=30)
    await synapse_client.wait_for_event(
        bob_token, room_id, lambda ev: ev.get("event_id") == own, timeout=30
    )
    for target in (own, theirs):  # alice's own, and bob's by her power level
        reply = await mx.events.PerformSendEvent(
            events_pb2.PerformSendEventRequest(
                room_id=room_id,
                sender=alice,
                type="m.room.redaction",
                content_json=orjson.dumps({"reason": "moderation"}),
                redacts=target,
            ),
            timeout=30,
        )
        assert reply.event_id
        assert await _mx_event(mx, target) == (True, {})

    async def redacted_on_synapse() -> bool:
        contents = [
            await _synapse_content(synapse_client, bob_token, room_id, t) for t in (own, theirs)
        ]
        return contents == [{}, {}]

    await wait_until(redacted_on_synapse, timeout=30)
    event = await synapse_client.get_event(bob_token, room_id, theirs)
    assert event["unsigned"].get("redacted_because", {}).get("sender") == alice
