"""An events-service replica SIGKILLed in the middle of a transaction loses nothing.

Two real events processes share one database (a whole ``mxfed run`` plus a
second ``mxfed run --service events``). A remote server's 50-PDU
transaction goes to the second replica, which is killed with SIGKILL while it
works; the remote retries the same transaction on the surviving replica, as
a real sender does. Every event must then be stored exactly once, in order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from matrix_protocol.auth_events import select_auth_event_ids
from matrix_protocol.canonical_json import decode_json, encode_json
from matrix_protocol.room_versions import room_version
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc
from services.events.storage import lock_key
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.mxfed_process import MxfedProcess
from tests.support.ports import HeldPort

pytestmark = pytest.mark.whole_stack


@pytest.fixture
async def remote() -> AsyncIterator[FakeHomeserver]:
    server = FakeHomeserver()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def mxfed(tmp_path: Path, own_database_url: str):
    process = MxfedProcess(tmp_path / "data", own_database_url)
    process.start()
    yield process
    process.stop()


def start_second_replica(mxfed: MxfedProcess, port: HeldPort) -> tuple[subprocess.Popen, str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MXFED_")},
        "MXFED_EVENTS_LISTEN": f"127.0.0.1:{port.port}",
        "MXFED_EVENTS_METRICS_LISTEN": "127.0.0.1:0",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mxfed.cli",
            "--config",
            str(mxfed.config_path),
            "run",
            "--service",
            "events",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, f"127.0.0.1:{port.port}"


async def wait_serving(mxfed: MxfedProcess, address: str) -> events_pb2_grpc.EventsStub:
    channel = mxfed.channel("events", address=address)
    stub = events_pb2_grpc.EventsStub(channel)
    for _ in range(200):
        try:
            await stub.QueryRoomInfo(events_pb2.QueryRoomInfoRequest(room_id="!x:y"), timeout=1)
            return stub
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)
    raise TimeoutError(f"no events replica at {address}")


async def wait_for_lock_waiter(conn: asyncpg.Connection) -> None:
    """Until some session waits for an advisory lock (the victim, mid-batch)."""
    for _ in range(300):
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the replica never reached the room's lock")


async def test_sigkilled_replica_loses_nothing(mxfed: MxfedProcess, remote: FakeHomeserver) -> None:
    survivor = await wait_serving(mxfed, mxfed.grpc_address("events"))
    created = await survivor.PerformCreateRoom(
        events_pb2.PerformCreateRoomRequest(
            creator=f"@admin:{mxfed.server_name}", preset="public_chat", room_version="10"
        )
    )
    room_id = created.room_id
    version = room_version("10")
    info = await survivor.QueryRoomInfo(events_pb2.QueryRoomInfoRequest(room_id=room_id))
    current = await survivor.QueryCurrentState(events_pb2.QueryCurrentStateRequest(room_id=room_id))
    state = {}
    for record in current.events:
        pdu = decode_json(record.pdu_json)
        state[(pdu["type"], pdu["state_key"])] = record.event_id
    extremities, depth = list(info.forward_extremities), info.max_depth
    user = remote.user("sigkill")

    def next_pdu(event_type: str, content: dict, state_key: str | None = None):
        nonlocal extremities, depth
        depth += 1
        auth = select_auth_event_ids(event_type, user, state_key, content, version, state)
        event_id, pdu = remote.build_pdu(
            version,
            room_id=room_id,
            sender=user,
            event_type=event_type,
            content=content,
            prev_events=extremities,
            auth_events=auth,
            depth=depth,
            state_key=state_key,
        )
        extremities = [event_id]
        if state_key is not None:
            state[(event_type, state_key)] = event_id
        return event_id, pdu

    join_id, join = next_pdu("m.room.member", {"membership": "join"}, user)
    joined = await survivor.InputTransaction(
        events_pb2.InputTransactionRequest(
            origin=remote.server_name, txn_id="join", pdus=[encode_json(join)]
        )
    )
    assert decode_json(joined.response_json) == {"pdus": {join_id: {}}}

    messages = [next_pdu("m.room.message", {"body": f"m{n}"}) for n in range(50)]
    request = events_pb2.InputTransactionRequest(
        origin=remote.server_name,
        txn_id=uuid.uuid4().hex,
        pdus=[encode_json(pdu) for _, pdu in messages],
    )

    victim_port = HeldPort()
    victim, address = start_second_replica(mxfed, victim_port)
    # Holding the room's processing lock parks the victim inside its batch's
    # database transaction (after format and signature checks), so the kill
    # lands mid-batch every time rather than by luck of timing.
    blocker = await asyncpg.connect(mxfed.database_url)
    try:
        await blocker.execute("SELECT pg_advisory_lock($1)", lock_key("room:" + room_id))
        doomed = await wait_serving(mxfed, address)
        call = asyncio.ensure_future(doomed.InputTransaction(request, timeout=30))
        await wait_for_lock_waiter(blocker)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        with pytest.raises(grpc.aio.AioRpcError):
            await call
        await blocker.execute("SELECT pg_advisory_unlock($1)", lock_key("room:" + room_id))
    finally:
        await blocker.close()
        if victim.poll() is None:
            victim.kill()
            victim.wait()
        victim_port.release()

    # The remote retries the same transaction elsewhere.
    reply = await survivor.InputTransaction(request, timeout=60)
    expected = {event_id: {} for event_id, _ in messages}
    assert decode_json(reply.response_json) == {"pdus": expected}
    again = await survivor.InputTransaction(request, timeout=60)
    assert again.response_json == reply.response_json

    timeline = await survivor.QueryTimeline(
        events_pb2.QueryTimelineRequest(room_id=room_id, backwards=True, limit=100)
    )
    stored = [
        r.event_id for r in timeline.events if decode_json(r.pdu_json)["type"] == "m.room.message"
    ]
    assert sorted(stored) == sorted(expected)
    assert len(stored) == len(set(stored)) == 50
    positions = {r.event_id: r.stream_position for r in timeline.events}
    ordered = [event_id for event_id, _ in messages]
    assert [positions[e] for e in ordered] == sorted(positions[e] for e in ordered)
    info = await survivor.QueryRoomInfo(events_pb2.QueryRoomInfoRequest(room_id=room_id))
    assert list(info.forward_extremities) == [messages[-1][0]]
