"""A whole mxfed: events sent by local users reach the remote servers in the room."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest

from mxfed.identity_files import parse_signing_key
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc
from tests.services.sender.receivers import Receiver
from tests.support.databases import create_database, drop_database
from tests.support.mxfed_process import MxfedProcess
from tests.support.polling import wait_until
from tests.support.scene import Scene, event_id_of

pytestmark = pytest.mark.whole_stack


async def test_local_messages_reach_a_joined_remote_server_once_in_order(
    tmp_path: Path,
) -> None:
    database_url = await create_database("mxfed_sender_e2e")
    mxfed = MxfedProcess(
        tmp_path / "mxfed",
        database_url,
        extra_config={"sender_min_retry_interval": 0.5, "sender_max_retry_interval": 2},
    )
    receiver: Receiver | None = None
    scene: Scene | None = None
    try:
        await asyncio.to_thread(mxfed.start)
        key = parse_signing_key((tmp_path / "mxfed" / "signing.key").read_text())
        receiver = await Receiver(mxfed.server_name, key.signing_key.verify_key).start()
        scene = Scene(mxfed, receiver.fake)
        room = await scene.create_room()
        await scene.join(room, receiver.fake.user("bob"))
        sent = [
            await scene.send_local(
                room, "m.room.message", {"msgtype": "m.text", "body": f"hi {i}", "id": f"m{i}"}
            )
            for i in range(5)
        ]
        await wait_until(lambda: receiver is not None and len(receiver.pdu_ids()) >= 5, 30)
        await asyncio.sleep(0.5)
        arrived = [event_id_of(pdu, room.version) for pdu in receiver.pdus()]
        assert arrived == sent  # the remote's own join is not sent back to it
        assert receiver.bad_signatures == 0
        assert all(len(body["pdus"]) <= 50 for body in receiver.delivered.values())
    except BaseException:
        print(mxfed.log_tail(120))
        raise
    finally:
        if scene is not None:
            await scene.close()
        if receiver is not None:
            await receiver.stop()
        await asyncio.to_thread(mxfed.stop)
        await drop_database(database_url)


@pytest.fixture(scope="module")
def synapse_server() -> Iterator[Any]:
    from tests.interop.synapse_harness import SynapseServer  # starts nothing on import

    server = SynapseServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.interop
async def test_messages_reach_a_synapse_user_in_an_mxfed_room_in_order(
    tmp_path: Path, synapse_server: Any
) -> None:
    """An mxfed user's messages in an mxfed room that a Synapse user joined reach
    Synapse, more than one transaction's worth, in order."""
    database_url = await create_database("mxfed_sender_interop")
    mxfed = MxfedProcess(tmp_path / "mxfed", database_url)
    channel: grpc.aio.Channel | None = None
    try:
        await asyncio.to_thread(mxfed.start)
        channel = mxfed.channel("events")
        events = events_pb2_grpc.EventsStub(channel)
        alice = f"@alice:{mxfed.server_name}"
        room_id = (
            await events.PerformCreateRoom(
                events_pb2.PerformCreateRoomRequest(creator=alice, preset="public_chat"),
                timeout=30,
            )
        ).room_id
        async with synapse_server.client() as client:
            bob, token = await client.register(f"bob_{secrets.token_hex(4)}")
            assert await client.join(token, room_id, via=[mxfed.server_name]) == room_id
            bodies = [f"fan-out {i}" for i in range(60)]
            for body in bodies:
                await events.PerformSendEvent(
                    events_pb2.PerformSendEventRequest(
                        room_id=room_id,
                        sender=alice,
                        type="m.room.message",
                        content_json=orjson.dumps({"msgtype": "m.text", "body": body}),
                    ),
                    timeout=30,
                )
            await client.wait_for_event(
                token, room_id, lambda ev: ev.get("content", {}).get("body") == bodies[-1], 60
            )
            page = await client.messages(token, room_id, dir="b", limit=100)
            seen = [
                ev["content"]["body"]
                for ev in reversed(page["chunk"])
                if ev.get("type") == "m.room.message"
            ]
            assert seen == bodies

    except BaseException:
        print(mxfed.log_tail(120))
        raise
    finally:
        if channel is not None:
            await channel.close()
        await asyncio.to_thread(mxfed.stop)
        await drop_database(database_url)
