"""A netsplit and its heal with three servers in one room: mxfed and two real Synapses.

Every server is named after a :class:`~partition.FederationGate`, so the test
can cut one off. Synapse B is cut off from mxfed and Synapse A; both sides
make conflicting changes (topic changes, a demotion racing the demoted
user's action, a ban racing the banned user's messages, invite-only join
rules racing a join); then the split heals. Synapse A sits on mxfed's side
of the split and receives B's side exactly as mxfed does (B's catch-up
pushes its latest event, the rest comes through get_missing_events), so it
is the reference: mxfed must show the same timeline as A — B's side's
messages from the banned user, the demoted user's change and the join
against the join rules are soft-failed on both — and all three must end with
the same room state. Rooms v10 and v12.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from partition import FederationGate, Partition
from synapse_harness import (
    SynapseClient,
    SynapseClientError,
    SynapseServer,
    start_all,
    wait_until,
)

from mxfed_api.events.v1 import events_pb2
from tests.support.databases import create_database, drop_database
from tests.support.mx import Mx
from tests.support.mxfed_process import MxfedProcess

pytestmark = [pytest.mark.interop, pytest.mark.whole_stack]

# Seconds to wait for any one thing to cross the federation.
FEDERATION = 90.0


@dataclass
class Net:
    partition: Partition
    mxfed: MxfedProcess
    mx: Mx
    a: SynapseServer  # on mxfed's side of the split
    b: SynapseServer  # cut off
    ca: SynapseClient
    cb: SynapseClient


@pytest.fixture(scope="module")
async def net(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Net]:
    partition = Partition()
    gate_mx, gate_a, gate_b = (FederationGate(partition) for _ in range(3))
    a = SynapseServer(public_port=gate_a.port, startup_timeout=180)
    b = SynapseServer(public_port=gate_b.port, startup_timeout=180)
    database_url = await create_database("mxfed_netsplit")
    mxfed = MxfedProcess(
        tmp_path_factory.mktemp("netsplit") / "mxfed",
        database_url,
        server_name=gate_mx.server_name,
        # Retry a destination that was cut off within a second of the heal.
        extra_config={"sender_min_retry_interval": 0.2, "sender_max_retry_interval": 1.0},
    )
    try:
        await asyncio.gather(
            asyncio.to_thread(start_all, [a, b]), asyncio.to_thread(mxfed.start, 180)
        )
        await gate_a.start(a.federation_url)
        await gate_b.start(b.federation_url)
        await gate_mx.start(mxfed.federation_url)
        mx = Mx(mxfed)
        async with a.client() as ca, b.client() as cb:
            yield Net(partition, mxfed, mx, a, b, ca, cb)
        await mx.close()
    finally:
        for gate in (gate_mx, gate_a, gate_b):
            await gate.stop()
        await asyncio.to_thread(mxfed.stop)
        a.stop()
        b.stop()
        await drop_database(database_url)


# ------------------------------------------------------------------ reading each server


async def synapse_has(client: SynapseClient, token: str, room_id: str, event_id: str) -> bool:
    try:
        await client.get_event(token, room_id, event_id)
    except SynapseClientError as error:
        if error.status == 404:
            return False
        raise
    return True


async def joined(client: SynapseClient, token: str, room_id: str, user_id: str) -> bool:
    for event in await client.state(token, room_id):
        if event["type"] == "m.room.member" and event["state_key"] == user_id:
            return event["content"].get("membership") == "join"
    return False


async def mxfed_has(mx: Mx, event_id: str) -> bool:
    return await mx.status_of(event_id) is not None


async def synapse_state(client: SynapseClient, token: str, room_id: str) -> dict[Any, str]:
    return {(e["type"], e["state_key"]): e["event_id"] for e in await client.state(token, room_id)}


async def mxfed_state(mx: Mx, room_id: str) -> dict[Any, str]:
    reply = await mx.events.QueryCurrentState(
        events_pb2.QueryCurrentStateRequest(room_id=room_id), timeout=10
    )
    found = {}
    for record in reply.events:
        pdu = orjson.loads(record.pdu_json)
        found[(pdu["type"], pdu["state_key"])] = record.event_id
    return found


def _after(newest_first: list[str], marker: str) -> set[str]:
    assert marker in newest_first, "the timeline does not reach back to the marker"
    return set(newest_first[: newest_first.index(marker)])


async def synapse_timeline(
    client: SynapseClient, token: str, room_id: str, marker: str
) -> set[str]:
    """What the server shows its users after ``marker`` (soft-failed events left out)."""
    chunk = (await client.messages(token, room_id, dir="b", limit=500))["chunk"]
    return _after([e["event_id"] for e in chunk], marker)


async def mxfed_timeline(mx: Mx, room_id: str, marker: str) -> set[str]:
    return _after(await mx.timeline_ids(room_id), marker)


async def mxfed_levels(mx: Mx, room_id: str, changes: dict[str, int]) -> dict[str, Any]:
    content = (await mx.state(room_id))[("m.room.power_levels", "")]["content"]
    return {**content, "users": {**content.get("users", {}), **changes}}


def _fetched_missing_events(mxfed: MxfedProcess, event_id: str) -> list[int]:
    """``events_fetched`` of each gap filled before ``event_id``, from mxfed's JSON log."""
    counts = []
    for line in mxfed.log_tail(20_000).splitlines():
        if "fetched missing events" in line and event_id in line:
            record = orjson.loads(line)
            if record.get("event_id") == event_id:
                counts.append(record["events_fetched"])
    return counts


# ------------------------------------------------------------------ the netsplit


@pytest.mark.parametrize("version", ["10", "12"])
async def test_state_and_timelines_converge_after_a_netsplit(net: Net, version: str) -> None:
    mx, ca, cb = net.mx, net.ca, net.cb
    tag = secrets.token_hex(3)
    alice = mx.user("alice")
    room_id = await mx.create_room(alice, version=version)
    bob, bob_token = await ca.register(f"bob{tag}", admin=True)
    sam, sam_token = await cb.register(f"sam{tag}", admin=True)
    dave, dave_token = await cb.register(f"dave{tag}")
    eve, eve_token = await cb.register(f"eve{tag}")
    carol, carol_token = await cb.register(f"carol{tag}")
    for token in (sam_token, dave_token, eve_token):
        await cb.join(token, room_id, via=[mx.server_name])
    await ca.join(bob_token, room_id, via=[mx.server_name])
    # B learns of bob's join from mxfed: only then does it send to A too.
    await wait_until(lambda: joined(cb, sam_token, room_id, bob), FEDERATION)
    levels = await mxfed_levels(mx, room_id, {sam: 100, dave: 50})
    await mx.send_state(room_id, alice, "m.room.power_levels", levels)
    # Each Synapse has delivered to the other (it catches up only where it once has).
    hello_b = await cb.send_message(sam_token, room_id, "hello from B")
    await wait_until(lambda: synapse_has(ca, bob_token, room_id, hello_b), FEDERATION)
    hello_a = await ca.send_message(bob_token, room_id, "hello from A")
    await wait_until(lambda: synapse_has(cb, sam_token, room_id, hello_a), FEDERATION)
    marker = await mx.send_text(room_id, alice, "before the split")
    await wait_until(lambda: synapse_has(ca, bob_token, room_id, marker), FEDERATION)
    await wait_until(lambda: synapse_has(cb, sam_token, room_id, marker), FEDERATION)

    # -------------------------------------------------------------- the split
    net.partition.split([net.b.server_name])
    # mxfed's side: a topic, dave demoted, eve banned, the room made invite-only.
    await mx.send_state(room_id, alice, "m.room.topic", {"topic": "mxfed's side"})
    demoted = await mxfed_levels(mx, room_id, {dave: 0})
    await mx.send_state(room_id, alice, "m.room.power_levels", demoted)
    await mx.send_state(room_id, alice, "m.room.member", {"membership": "ban"}, eve)
    invite_only = await mx.send_state(room_id, alice, "m.room.join_rules", {"join_rule": "invite"})
    bob_said = await ca.send_message(bob_token, room_id, "bob, during the split")
    # B's side, unaware: its own topic, dave's name (he is still a moderator
    # there), eve's messages, carol's join (the room is still public there).
    await cb.send_state(sam_token, room_id, "m.room.topic", {"topic": "B's side"})
    daves_name = await cb.send_state(dave_token, room_id, "m.room.name", {"name": "dave's"})
    eve_said = [await cb.send_message(eve_token, room_id, f"eve {i}") for i in (1, 2)]
    await cb.join(carol_token, room_id, via=[net.b.server_name])
    carol_joined = (await synapse_state(cb, sam_token, room_id))[("m.room.member", carol)]
    sam_said = await cb.send_message(sam_token, room_id, "sam, last before the heal")
    # Each side holds its own side's events (A: mxfed's; mxfed: A's).
    await wait_until(lambda: synapse_has(ca, bob_token, room_id, invite_only), FEDERATION)
    await wait_until(lambda: mxfed_has(mx, bob_said), FEDERATION)
    assert not await mxfed_has(mx, sam_said)
    assert not await synapse_has(ca, bob_token, room_id, sam_said)
    # B restarts before the heal: what its federation queues held in memory is
    # lost, so it catches up as Synapse does, by sending its latest event only;
    # mxfed and A must pull the rest of B's side (get_missing_events).
    await asyncio.to_thread(net.b.restart)

    # -------------------------------------------------------------- the heal
    net.partition.heal()
    # mxfed retries B within a second by itself; the Synapses are told that
    # their peers are back (as an inbound request from them would tell them).
    for destination in (mx.server_name, net.a.server_name):
        await cb.reset_connection(sam_token, destination)
    await ca.reset_connection(bob_token, net.b.server_name)
    await wait_until(lambda: mxfed_has(mx, sam_said), FEDERATION)
    await wait_until(lambda: synapse_has(ca, bob_token, room_id, sam_said), FEDERATION)
    await wait_until(lambda: synapse_has(cb, sam_token, room_id, invite_only), FEDERATION)
    await wait_until(lambda: synapse_has(cb, sam_token, room_id, bob_said), FEDERATION)
    # Everyone speaks once more, merging the branches everywhere.
    after = [
        await mx.send_text(room_id, alice, "mxfed, after the heal"),
        await ca.send_message(bob_token, room_id, "A, after the heal"),
        await cb.send_message(sam_token, room_id, "B, after the heal"),
    ]
    for event_id in after:
        await wait_until(lambda e=event_id: mxfed_has(mx, e), FEDERATION)
        await wait_until(lambda e=event_id: synapse_has(ca, bob_token, room_id, e), FEDERATION)
        await wait_until(lambda e=event_id: synapse_has(cb, sam_token, room_id, e), FEDERATION)

    # -------------------------------------------------------------- state: the same everywhere
    async def states_agree() -> bool:
        ours = await mxfed_state(mx, room_id)
        on_a = await synapse_state(ca, bob_token, room_id)
        on_b = await synapse_state(cb, sam_token, room_id)
        return ours == on_a == on_b

    await wait_until(states_agree, FEDERATION)
    state = await mxfed_state(mx, room_id)
    assert state[("m.room.join_rules", "")] == invite_only
    banned = (await mx.state(room_id))[("m.room.member", eve)]
    assert banned["content"]["membership"] == "ban"
    assert state.get(("m.room.member", carol)) != carol_joined
    assert state.get(("m.room.name", "")) != daves_name
    assert (await mx.state(room_id))[("m.room.power_levels", "")]["content"]["users"][dave] == 0

    # -------------------------------------------------------------- timelines
    hidden = {daves_name, *eve_said, carol_joined}
    ours = await mxfed_timeline(mx, room_id, marker)
    on_a = await synapse_timeline(ca, bob_token, room_id, marker)
    on_b = await synapse_timeline(cb, sam_token, room_id, marker)
    # mxfed shows what Synapse shows in its place; B accepted its side's
    # events before it heard of the ban, the demotion and the join rules.
    assert ours == on_a
    assert not hidden & ours
    assert on_b == ours | hidden
    assert {sam_said, bob_said, *after} <= ours
    for event_id in hidden:
        assert await mx.status_of(event_id) == events_pb2.EVENT_STATUS_SOFT_FAILED
    # B's side reached mxfed through gap filling (get_missing_events), not pushed:
    # B's topic, dave's name, eve's messages and carol's join came in to connect
    # sam's last message.
    assert _fetched_missing_events(net.mxfed, sam_said) == [len(hidden) + 1]
