"""Key rotation with a real Synapse: after ``mxfed keys rotate``, a local user's message
reaches the Synapse user and is accepted (Synapse fetches our new key, since it caches
keys by id), and our ``/_matrix/key/v2/server`` shows the old key under
``old_verify_keys`` with its ``expired_ts``.

Runs its own mxfed: the rotation changes the server's identity for every later test.
"""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
import sys
import urllib.request

import orjson
import pytest
from synapse_harness import SynapseClient, SynapseServer, wait_until

from matrix_protocol.redaction import redact
from matrix_protocol.room_versions import room_version
from matrix_protocol.signing import decode_verify_key, verify_json_signature
from mxfed_api.events.v1 import events_pb2
from tests.support.mx import Mx
from tests.support.mxfed_process import MxfedProcess

pytestmark = [pytest.mark.interop, pytest.mark.whole_stack]


def _published_keys(mxfed: MxfedProcess) -> dict:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    url = f"{mxfed.federation_url}/_matrix/key/v2/server"
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        return json.loads(response.read())


def _rotate(mxfed: MxfedProcess) -> str:
    # What an operator runs: the CLI, with the operator certificate the first start made.
    done = subprocess.run(
        [sys.executable, "-m", "mxfed.cli", "--config", str(mxfed.config_path), "keys", "rotate"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def _signing_key_id(mx: Mx, event_id: str) -> str:
    reply = await mx.events.QueryEvents(
        events_pb2.QueryEventsRequest(event_ids=[event_id]), timeout=10
    )
    (key_id,) = orjson.loads(reply.events[0].pdu_json)["signatures"][mx.server_name]
    return key_id


async def test_after_a_rotation_synapse_accepts_our_events_signed_with_the_new_key(
    mx: Mx, mxfed: MxfedProcess, synapse: SynapseServer, synapse_client: SynapseClient
) -> None:
    alice = mx.user("alice")
    room_id = await mx.create_room(alice, version="12")
    bob, bob_token = await synapse_client.register(f"bob_{secrets.token_hex(4)}")
    assert await synapse_client.join(bob_token, room_id, via=[mx.server_name]) == room_id
    before = await mx.send_text(room_id, alice, "before the rotation")
    await synapse_client.wait_for_event(
        bob_token, room_id, lambda event: event.get("event_id") == before, timeout=60
    )
    (old_key_id,) = _published_keys(mxfed)["verify_keys"]
    assert await _signing_key_id(mx, before) == old_key_id

    output = _rotate(mxfed)
    assert f"{old_key_id} published as expired" in output
    published = _published_keys(mxfed)
    (new_key_id,) = published["verify_keys"]
    assert new_key_id != old_key_id
    old = published["old_verify_keys"][old_key_id]
    assert isinstance(old["expired_ts"], int) and old["key"]
    # Self-signed by the new key only.
    assert list(published["signatures"][mxfed.server_name]) == [new_key_id]
    verify_json_signature(
        published,
        mxfed.server_name,
        new_key_id,
        decode_verify_key(published["verify_keys"][new_key_id]["key"]),
    )

    # The events process switches to the new key file within a second, no restart.
    async def signed_with_the_new_key() -> str | None:
        event_id = await mx.send_text(room_id, alice, f"after the rotation {secrets.token_hex(3)}")
        return event_id if await _signing_key_id(mx, event_id) == new_key_id else None

    after = await wait_until(signed_with_the_new_key, timeout=30)
    reply = await mx.events.QueryEvents(events_pb2.QueryEventsRequest(event_ids=[after]))
    pdu = orjson.loads(reply.events[0].pdu_json)
    verify_json_signature(
        redact(pdu, room_version("12")),
        mxfed.server_name,
        new_key_id,
        decode_verify_key(published["verify_keys"][new_key_id]["key"]),
    )
    # Synapse, which had only the old key, fetches the new one and accepts the event.
    seen = await synapse_client.wait_for_event(
        bob_token, room_id, lambda event: event.get("event_id") == after, timeout=60
    )
    assert seen["sender"] == alice and seen["content"]["body"].startswith("after the rotation")
    # And the event from before, signed with the old key, still verifies there.
    assert (await synapse_client.get_event(bob_token, room_id, before))["event_id"] == before
