"""The gRPC API: EDUs out, server-up, destination inspection, and ``mxfed destinations``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import yaml

from matrix_protocol.canonical_json import encode_json
from mxfed.cli import main as cli_main
from mxfed.internal_plane import Caller
from mxfed_api.events.v1 import events_pb2_grpc
from mxfed_api.sender.v1 import sender_pb2, sender_pb2_grpc
from services.sender.queues import EduQueuer
from services.sender.server import servers_in_room_via
from services.sender.servicer import SenderServicer
from services.sender.storage import SenderStorage
from tests.support.grpc_plane import bind_loopback, channel_to, make_server, session_tls_dir
from tests.support.polling import wait_until
from tests.support.sender_queues import OUR_SERVER, queue_pdus

ROOM = "!room:sender-test.example"
ALICE = f"@alice:{OUR_SERVER}"


@pytest.fixture
async def sender_api(
    sender_storage: SenderStorage, fake_events
) -> AsyncIterator[tuple[sender_pb2_grpc.SenderStub, list[str]]]:
    woken: list[str] = []
    events_channel = channel_to(fake_events.address, "events", Caller.part("sender"))
    queuer = EduQueuer(
        sender_storage,
        OUR_SERVER,
        servers_in_room_via(events_pb2_grpc.EventsStub(events_channel)),
    )
    server = make_server("sender")
    sender_pb2_grpc.add_SenderServicer_to_server(
        SenderServicer(sender_storage, queuer, woken.extend), server
    )
    address = bind_loopback(server, "sender")
    await server.start()
    channel = channel_to(address, "sender")
    stub = sender_pb2_grpc.SenderStub(channel)
    stub.address = address  # type: ignore[attr-defined]
    yield stub, woken
    await channel.close()
    await events_channel.close()
    await server.stop(grace=0)


def edu(edu_type: str, content: dict, **kwargs) -> sender_pb2.Edu:
    return sender_pb2.Edu(edu_type=edu_type, content_json=encode_json(content), **kwargs)


async def test_typing_and_receipts_go_to_the_servers_in_the_room(
    sender_storage: SenderStorage, fake_events, sender_api, receiver_factory, replica_factory
) -> None:
    stub, woken = sender_api
    one, two = await receiver_factory(), await receiver_factory()
    fake_events.servers[ROOM] = [OUR_SERVER, one.server_name, two.server_name]
    await replica_factory()
    receipt = {ROOM: {"m.read": {ALICE: {"event_ids": ["$e"], "data": {"ts": 1}}}}}
    reply = await stub.PerformSendEdus(
        sender_pb2.PerformSendEdusRequest(
            edus=[
                edu("m.typing", {"room_id": ROOM, "user_id": ALICE, "typing": True}),
                edu("m.receipt", receipt),
            ]
        )
    )
    assert reply.queued == 4
    assert set(woken) == {one.server_name, two.server_name}
    for receiver in (one, two):
        await wait_until(lambda r=receiver: len(r.edus()) == 2)
        assert [e["edu_type"] for e in receiver.edus()] == ["m.typing", "m.receipt"]
        assert receiver.edus()[0]["content"] == {"room_id": ROOM, "user_id": ALICE, "typing": True}
        assert receiver.edus()[1]["content"] == receipt
        assert receiver.bad_signatures == 0


async def test_a_newer_typing_state_replaces_an_unsent_one(
    sender_storage: SenderStorage, fake_events, sender_api
) -> None:
    stub, _ = sender_api
    fake_events.servers[ROOM] = ["x.example"]
    for typing in (True, False):
        await stub.PerformSendEdus(
            sender_pb2.PerformSendEdusRequest(
                edus=[edu("m.typing", {"room_id": ROOM, "user_id": ALICE, "typing": typing})]
            )
        )
    rows = await sender_storage.pool.fetch("SELECT content_json FROM sender.edu_queue")
    assert [json.loads(r["content_json"])["typing"] for r in rows] == [False]


async def test_to_device_messages_are_grouped_per_server(
    sender_storage: SenderStorage, sender_api, receiver_factory, replica_factory
) -> None:
    stub, _ = sender_api
    one, two = await receiver_factory(), await receiver_factory()
    await replica_factory()
    messages = {
        f"@bob:{one.server_name}": {"DEV1": {"k": 1}},
        f"@carol:{one.server_name}": {"*": {"k": 2}},
        f"@dan:{two.server_name}": {"DEV2": {"k": 3}},
        f"@erin:{OUR_SERVER}": {"DEV3": {"k": 4}},
    }
    reply = await stub.PerformSendEdus(
        sender_pb2.PerformSendEdusRequest(
            to_device=[
                sender_pb2.ToDevice(
                    sender=ALICE, type="m.room_key_request", messages_json=encode_json(messages)
                )
            ]
        )
    )
    assert reply.queued == 2
    await wait_until(lambda: len(one.edus()) == 1 and len(two.edus()) == 1)
    content = one.edus()[0]["content"]
    assert one.edus()[0]["edu_type"] == "m.direct_to_device"
    assert content["sender"] == ALICE and content["type"] == "m.room_key_request"
    assert set(content["messages"]) == {f"@bob:{one.server_name}", f"@carol:{one.server_name}"}
    assert 0 < len(content["message_id"]) <= 32
    assert set(two.edus()[0]["content"]["messages"]) == {f"@dan:{two.server_name}"}


@pytest.mark.parametrize(
    "request_",
    [
        sender_pb2.PerformSendEdusRequest(
            edus=[edu("m.receipt", {ROOM: {"m.read.private": {ALICE: {}}}})]
        ),
        sender_pb2.PerformSendEdusRequest(
            edus=[edu("m.presence", {"push": []}, destinations=["x.example"])]
        ),
        sender_pb2.PerformSendEdusRequest(
            edus=[edu("m.typing", {"room_id": ROOM, "user_id": "@bob:x.example", "typing": True})]
        ),
        sender_pb2.PerformSendEdusRequest(
            to_device=[
                sender_pb2.ToDevice(
                    sender=ALICE, type="t", message_id="x" * 33, messages_json=b"{}"
                )
            ]
        ),
        sender_pb2.PerformSendEdusRequest(edus=[edu("org.example.custom", {})]),
    ],
    ids=["private-receipt", "presence", "remote-typist", "long-message-id", "no-destination"],
)
async def test_edus_that_must_not_be_sent_are_refused(
    sender_storage: SenderStorage, sender_api, request_
) -> None:
    stub, _ = sender_api
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.PerformSendEdus(request_)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await sender_storage.pool.fetchval("SELECT count(*) FROM sender.edu_queue") == 0


async def test_a_long_outage_keeps_durable_edus_and_the_newest_events_per_room(
    sender_storage: SenderStorage, sender_api, replica_factory
) -> None:
    stub, _ = sender_api
    down = "down.example"
    await stub.PerformSendEdus(
        sender_pb2.PerformSendEdusRequest(
            edus=[
                edu(
                    "m.device_list_update",
                    {"user_id": ALICE, "device_id": "D", "stream_id": 1},
                    destinations=[down],
                ),
                edu(
                    "m.typing",
                    {"room_id": ROOM, "user_id": ALICE, "typing": True},
                    destinations=[down],
                ),
            ]
        )
    )
    room_a = await queue_pdus(sender_storage, [down], 30, room_id="!a:sender-test.example")
    room_b = await queue_pdus(sender_storage, [down], 5, room_id="!b:sender-test.example")
    # Backed off for the long-outage interval.
    await sender_storage.record_failure(down, int(time.time() * 1000) + 60_000, 3_600_000, "x")
    replica = await replica_factory()
    await replica.manager.maintain_once()
    kept = await sender_storage.pool.fetch(
        "SELECT p.event_id FROM sender.pdu_queue q JOIN sender.pdus p USING (stream_position)"
        " ORDER BY q.stream_position"
    )
    assert [r["event_id"] for r in kept] == [f"${i}" for i in room_a[-10:] + room_b]
    edu_types = await sender_storage.pool.fetch("SELECT edu_type FROM sender.edu_queue")
    assert [r["edu_type"] for r in edu_types] == ["m.device_list_update"]


async def test_a_short_outage_loses_nothing(sender_storage: SenderStorage, replica_factory) -> None:
    ids = await queue_pdus(sender_storage, ["down.example"], 40)
    await sender_storage.record_failure("down.example", int(time.time() * 1000) + 60_000, 300, "")
    replica = await replica_factory()
    await replica.manager.maintain_once()
    assert await sender_storage.pool.fetchval("SELECT count(*) FROM sender.pdu_queue") == len(ids)


async def test_server_up_and_query_destinations(
    sender_storage: SenderStorage, sender_api, tmp_path: Path
) -> None:
    stub, woken = sender_api
    await queue_pdus(sender_storage, ["a.example"], 3)
    await queue_pdus(sender_storage, ["b.example"], 1)
    now = int(time.time() * 1000)
    await sender_storage.record_failure("a.example", now + 60_000, 20_000, "HTTP 502")
    reply = await stub.QueryDestinations(sender_pb2.QueryDestinationsRequest())
    by_name = {d.destination: d for d in reply.destinations}
    assert [d.destination for d in reply.destinations] == ["a.example", "b.example"]
    a = by_name["a.example"]
    assert a.pending_pdus == 3 and a.backoff_until_ts == now + 60_000
    assert a.failures == 1 and a.last_error == "HTTP 502" and a.oldest_pending_ts > 0
    assert by_name["b.example"].backoff_until_ts == 0

    config = tmp_path / "mxfed.yaml"
    config.write_text(
        yaml.safe_dump({"server_name": OUR_SERVER, "internal_tls_dir": str(session_tls_dir())})
    )
    address = stub.address
    code = await asyncio.to_thread(
        cli_main, ["--config", str(config), "destinations", "--address", address]
    )
    assert code == 0

    up = await stub.PerformServerUp(sender_pb2.PerformServerUpRequest(server_name="a.example"))
    assert up.was_backed_off and "a.example" in woken
    again = await stub.PerformServerUp(sender_pb2.PerformServerUpRequest(server_name="a.example"))
    assert not again.was_backed_off
    reply = await stub.QueryDestinations(
        sender_pb2.QueryDestinationsRequest(destinations=["a.example"])
    )
    assert reply.destinations[0].backoff_until_ts == 0


async def servicer_with_events_at(
    sender_storage: SenderStorage, events_address: str
) -> tuple[grpc.aio.Server, list[grpc.aio.Channel], sender_pb2_grpc.SenderStub, EduQueuer]:
    events_channel = channel_to(events_address, "events", Caller.part("sender"))
    queuer = EduQueuer(
        sender_storage,
        OUR_SERVER,
        servers_in_room_via(events_pb2_grpc.EventsStub(events_channel)),
    )
    server = make_server("sender")
    sender_pb2_grpc.add_SenderServicer_to_server(
        SenderServicer(sender_storage, queuer, lambda _: None), server
    )
    address = bind_loopback(server, "sender")
    await server.start()
    channel = channel_to(address, "sender")
    return server, [channel, events_channel], sender_pb2_grpc.SenderStub(channel), queuer


TYPING = sender_pb2.PerformSendEdusRequest(
    edus=[edu("m.typing", {"room_id": ROOM, "user_id": ALICE, "typing": True})]
)


async def test_typing_sent_while_the_events_service_is_starting_waits_for_it(
    sender_storage: SenderStorage,
) -> None:
    from tests.services.sender.fake_events import FakeEvents

    events = FakeEvents()
    events.servers[ROOM] = [OUR_SERVER, "other.example"]
    server, channels, stub, _ = await servicer_with_events_at(sender_storage, events.address)
    try:
        call = stub.PerformSendEdus(TYPING, timeout=20)
        await asyncio.sleep(1.0)  # the events service comes up a second later
        await events.start()
        assert (await call).queued == 1
    finally:
        for channel in channels:
            await channel.close()
        await server.stop(grace=0)
        await events.stop()


async def test_send_edus_failures_are_grpc_errors(
    sender_storage: SenderStorage, fake_events
) -> None:
    server, channels, stub, queuer = await servicer_with_events_at(
        sender_storage, fake_events.address
    )

    async def unavailable(room_id: str) -> list[str]:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down"
        )

    async def not_found(room_id: str) -> list[str]:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), "no room"
        )

    async def broken(room_id: str) -> list[str]:
        raise RuntimeError("bug")

    try:
        for fake, code in (
            (unavailable, grpc.StatusCode.UNAVAILABLE),
            (not_found, grpc.StatusCode.NOT_FOUND),
            (broken, grpc.StatusCode.INTERNAL),
        ):
            queuer.servers_in_room = fake
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.PerformSendEdus(TYPING)
            assert raised.value.code() == code
    finally:
        for channel in channels:
            await channel.close()
        await server.stop(grace=0)
