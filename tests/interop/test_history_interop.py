"""History with a real Synapse, both ways: backfill, gap filling, visibility over federation.

A whole mxfed runs (``MxfedProcess``); local mxfed users act through the events
gRPC API, Synapse users through its client API (``/messages`` paginates and
backfills from mxfed over ``/backfill``).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterator

import pytest
from synapse_harness import SynapseClient, SynapseServer, wait_until

from mxfed_api.events.v1 import events_pb2
from tests.support.mx import Mx
from tests.support.mxfed_process import MxfedProcess

pytestmark = [pytest.mark.interop, pytest.mark.whole_stack]


async def _page_back(client: SynapseClient, token: str, room_id: str) -> list[str]:
    """Every m.room.message body Synapse returns paging back to the room start."""
    bodies: list[str] = []
    from_token = None
    for _ in range(100):
        page = await client.messages(token, room_id, dir="b", limit=50, from_token=from_token)
        for event in page.get("chunk", []):
            if event.get("type") == "m.room.message":
                bodies.append(event["content"].get("body"))
        if not page.get("chunk") or "end" not in page:
            break
        from_token = page["end"]
    return bodies


async def test_synapse_user_joins_an_mxfed_room_and_pages_back_through_200_messages(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient
) -> None:
    alice = mx.user("alice")
    room_id = await mx.create_room(alice)
    for i in range(200):
        await mx.send_text(room_id, alice, f"m{i}")
    bob, token = await synapse_client.register(f"bob_{secrets.token_hex(4)}")
    assert await synapse_client.join(token, room_id, via=[mx.server_name]) == room_id
    bodies = await _page_back(synapse_client, token, room_id)
    assert bodies == [f"m{i}" for i in reversed(range(200))]


async def test_history_visibility_joined_hides_what_came_before_the_join(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient
) -> None:
    alice = mx.user("alice")
    room_id = await mx.create_room(alice)
    await mx.send_state(
        room_id, alice, "m.room.history_visibility", {"history_visibility": "joined"}
    )
    for i in range(5):
        await mx.send_text(room_id, alice, f"secret{i}")
    bob, token = await synapse_client.register(f"bob_{secrets.token_hex(4)}")
    assert await synapse_client.join(token, room_id, via=[mx.server_name]) == room_id
    await mx.send_text(room_id, alice, "welcome")
    await synapse_client.wait_for_event(
        token, room_id, lambda ev: ev.get("content", {}).get("body") == "welcome", timeout=30
    )
    bodies = await _page_back(synapse_client, token, room_id)
    assert "welcome" in bodies
    assert not [b for b in bodies if b and b.startswith("secret")]


async def _mxfed_history(mxfed: MxfedProcess, room_id: str, limit: int) -> list[dict]:
    """``mxfed history ROOM --backfill --limit N --json``: the PDUs, oldest first."""
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "mxfed.cli",
            "--config",
            str(mxfed.config_path),
            "history",
            room_id,
            "--backfill",
            "--limit",
            str(limit),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line)["pdu"] for line in done.stdout.splitlines()]


def _bodies(events: list[dict]) -> list[str]:
    return [
        e["content"].get("body")
        for e in events
        if e.get("type") == "m.room.message" and isinstance(e.get("content"), dict)
    ]


async def test_mxfed_user_joins_a_synapse_room_and_backfills_200_messages(
    mx: Mx, mxfed: MxfedProcess, synapse: SynapseServer, synapse_client: SynapseClient
) -> None:
    owner, token = await synapse_client.register(f"owner_{secrets.token_hex(4)}")
    room_id = await synapse_client.create_room(token, preset="public_chat")
    for i in range(200):
        await synapse_client.send_message(token, room_id, f"s{i}")
    erin = mx.user("erin")
    reply = await mx.join(room_id, erin, [synapse.server_name])
    assert reply.room_id == room_id
    # Right after the join mxfed holds the join and nothing older.
    assert await mx.bodies(room_id) == []
    events = await _mxfed_history(mxfed, room_id, 300)
    assert _bodies(events) == [f"s{i}" for i in range(200)]
    assert events[0]["type"] == "m.room.create"
    assert events[-1]["type"] == "m.room.member" and events[-1]["state_key"] == erin
    # Backfilled history is not new: the room's head is still the join.
    info = await mx.events.QueryRoomInfo(
        events_pb2.QueryRoomInfoRequest(room_id=room_id), timeout=10
    )
    assert list(info.forward_extremities) == [reply.event_id]


@pytest.fixture
def own_synapse() -> Iterator[SynapseServer]:
    """A Synapse of this test's own (it gets restarted)."""
    server = SynapseServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_an_event_with_unknown_prev_events_triggers_get_missing_events(
    mxfed: MxfedProcess, own_synapse: SynapseServer
) -> None:
    synapse = own_synapse
    async with synapse.client() as synapse_client:
        await _gap_filled(mxfed, synapse, synapse_client)


async def _gap_filled(
    mxfed: MxfedProcess, synapse: SynapseServer, synapse_client: SynapseClient
) -> None:
    owner, token = await synapse_client.register(f"owner_{secrets.token_hex(4)}")
    room_id = await synapse_client.create_room(token, preset="public_chat")
    mx = Mx(mxfed)
    try:
        await mx.join(room_id, mx.user("erin"), [synapse.server_name])
        await synapse_client.send_message(token, room_id, "before")
        await wait_until(lambda: _has(mx.bodies(room_id), "before"), timeout=30)
    finally:
        await mx.close()
    # mxfed goes away; Synapse cannot deliver these. Restarted, Synapse has
    # forgotten its queue and only catches up with the room's latest event,
    # whose prev_events mxfed lacks.
    await asyncio.to_thread(mxfed.stop)
    try:
        for i in range(5):
            await synapse_client.send_message(token, room_id, f"gap{i}")
        await asyncio.to_thread(synapse.restart)
    finally:
        await asyncio.to_thread(mxfed.start)
    mx = Mx(mxfed)
    try:
        after: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            after.append(f"after{len(after)}")
            await synapse_client.send_message(token, room_id, after[-1])
            try:
                await wait_until(lambda: _has(mx.bodies(room_id), after[-1]), timeout=10)
                break
            except TimeoutError:
                continue
        bodies = await mx.bodies(room_id)
        assert after[-1] in bodies
        for i in range(5):
            assert f"gap{i}" in bodies
        assert "before" in bodies
    finally:
        await mx.close()
    log = (mxfed.data_dir / "mxfed.log").read_text(errors="replace")
    assert "fetched missing events" in log


async def _has(bodies: Awaitable[list[str]], body: str) -> bool:
    return body in await bodies
