"""A partial-state join of a Synapse room with a few hundred members (Synapse serves omit_members).

The mxfed user joins; messages go both ways at once while the resync may
still run; once it has finished, mxfed's member list equals Synapse's.
"""

from __future__ import annotations

import asyncio
import secrets
import urllib.request
from typing import Any
from urllib.parse import quote

import pytest
from synapse_harness import SynapseClient, SynapseServer, wait_until

from tests.support.mx import Mx

pytestmark = pytest.mark.whole_stack

MEMBERS = 200


def _resyncs_done(mx: Mx) -> float:
    """The events service's finished resyncs (mxfed_events_resyncs_total{result="done"})."""
    url = f"http://127.0.0.1:{mx.process.metrics_ports['events']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        for line in response.read().decode().splitlines():
            if line.startswith('mxfed_events_resyncs_total{result="done"}'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def _text(body: str):  # noqa: ANN202
    return lambda ev: ev.get("type") == "m.room.message" and ev["content"].get("body") == body


async def _populate(client: SynapseClient, admin_token: str, room_id: str, count: int) -> None:
    """``count`` users (created without a password: no hashing) joined by the admin API."""
    limit = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        user_id = f"@p{i}_{secrets.token_hex(3)}:{client.server_name}"
        async with limit:
            await client.request(
                "PUT", f"/_synapse/admin/v2/users/{quote(user_id, safe='')}", admin_token, json={}
            )
            await client.request(
                "POST", f"/_synapse/admin/v1/join/{quote(room_id, safe='')}", admin_token,
                json={"user_id": user_id},
            )  # fmt: skip

    await asyncio.gather(*(one(i) for i in range(count)))


def _joined(state: list[dict[str, Any]]) -> set[str]:
    return {
        e["state_key"]
        for e in state
        if e["type"] == "m.room.member" and e["content"].get("membership") == "join"
    }


async def test_mxfed_partially_joins_a_synapse_room_of_a_few_hundred_members(
    mx: Mx, synapse: SynapseServer, synapse_client: SynapseClient
) -> None:
    _, admin_token = await synapse_client.register(f"admin_{secrets.token_hex(3)}", admin=True)
    owner, owner_token = await synapse_client.register(f"owner_{secrets.token_hex(3)}")
    room_id = await synapse_client.create_room(owner_token, preset="public_chat", name="Crowd")
    await _populate(synapse_client, admin_token, room_id, MEMBERS)
    done_before = await asyncio.to_thread(_resyncs_done, mx)
    erin = mx.user("erin")
    reply = await mx.join(room_id, erin, [synapse.server_name])
    assert reply.remote
    # Messages both ways at once, right after the join.
    await asyncio.gather(
        mx.send_text(room_id, erin, "hello from mxfed"),
        synapse_client.send_message(owner_token, room_id, "hello from synapse"),
    )
    await asyncio.gather(
        synapse_client.wait_for_event(owner_token, room_id, _text("hello from mxfed"), timeout=60),
        wait_until(lambda: _contains(mx.bodies(room_id), "hello from synapse"), timeout=60),
    )
    # The join was partial (Synapse omitted members), and its resync finishes.
    await wait_until(lambda: mx.has_full_state(room_id), timeout=120)
    assert await asyncio.to_thread(_resyncs_done, mx) == done_before + 1
    synapse_state = await synapse_client.state(owner_token, room_id)
    ours = await mx.state(room_id)
    our_joined = {
        key for (t, key), e in ours.items()
        if t == "m.room.member" and e["content"].get("membership") == "join"
    }  # fmt: skip
    assert our_joined == _joined(synapse_state)
    assert len(our_joined) == MEMBERS + 2  # the owner, the members and erin
    info = await mx.room_info(room_id)
    assert info.members_known == MEMBERS + 2


async def _contains(bodies: Any, body: str) -> bool:
    return body in await bodies
