"""Tracing across the parts of a running mxfed, exported to a real OTLP/HTTP receiver.

One inbound /send is one trace with spans from the gateway, keys (the
request's signature) and events (the transaction and its database work); a
local send is one trace too, from events to the sender's delivery and its
outbound HTTP request (the trace context crosses the event stream). Log
records carry the trace id, and the access log names it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import orjson
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from mxfed_api.events.v1 import events_pb2, events_pb2_grpc, membership_pb2, membership_pb2_grpc
from tests.support.databases import create_database, drop_database
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.join_resident import V10, Resident, add_routes
from tests.support.mxfed_process import MxfedProcess

pytestmark = pytest.mark.whole_stack

PATIENCE = 30.0


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    kind: int
    attributes: dict[str, str]


class Receiver:
    """An OTLP/HTTP traces endpoint keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _traces(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource_spans in export.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "",
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: str(a.value).strip() for a in span.attributes}
                    self.spans.append(
                        Span(service, span.name, span.trace_id.hex(), span.kind, attributes)
                    )
        return web.Response(content_type="application/x-protobuf", body=b"")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/v1/traces"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, found: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + PATIENCE
        while not found():
            if time.monotonic() > deadline:
                seen = sorted({(s.service, s.name) for s in self.spans})
                raise AssertionError(f"no {what} after {PATIENCE} s; spans seen: {seen}")
            await asyncio.sleep(0.1)


@dataclass
class Scene:
    mxfed: MxfedProcess
    server: FakeHomeserver
    receiver: Receiver
    rooms: dict[str, Resident]


@pytest.fixture(scope="module")
async def scene(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scene]:
    receiver = Receiver()
    await receiver.start()
    database_url = await create_database("mxfed_tracing_test")
    server = FakeHomeserver(key_version="trace1")
    rooms: dict[str, Resident] = {}
    add_routes(server, rooms)
    await server.start()
    mxfed = MxfedProcess(
        tmp_path_factory.mktemp("tracing") / "mxfed",
        database_url,
        extra_config={"tracing_otlp_endpoint": receiver.url, "tracing_sample_ratio": 1.0},
    )
    # The standard SDK setting: export every 100 ms instead of every 5 s.
    saved = os.environ.get("OTEL_BSP_SCHEDULE_DELAY")
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    try:
        await asyncio.to_thread(mxfed.start)
        yield Scene(mxfed, server, receiver, rooms)
    finally:
        if saved is None:
            os.environ.pop("OTEL_BSP_SCHEDULE_DELAY", None)
        else:
            os.environ["OTEL_BSP_SCHEDULE_DELAY"] = saved
        await server.stop()
        await asyncio.to_thread(mxfed.stop)
        await drop_database(database_url)
        await receiver.stop()


async def test_one_inbound_send_is_one_trace_through_gateway_keys_and_events(
    scene: Scene,
) -> None:
    room = Resident(scene.server, serve_event=True)
    scene.rooms[room.room_id] = room
    user = f"@u{secrets.token_hex(4)}:{scene.mxfed.server_name}"
    async with scene.mxfed.channel("events") as channel:
        joined = await membership_pb2_grpc.MembershipStub(channel).PerformJoin(
            membership_pb2.PerformJoinRequest(
                room_id_or_alias=room.room_id, user_id=user, servers=[scene.server.server_name]
            ),
            timeout=30,
        )
    event_id, pdu = scene.server.build_pdu(
        V10,
        room_id=room.room_id,
        sender=scene.server.user("alice"),
        event_type="m.room.message",
        content={"msgtype": "m.text", "body": "traced"},
        prev_events=[joined.event_id],
        auth_events=[room.create, room.join, room.pl2],
        depth=room.depth + 1,
    )
    txn_id = f"t{secrets.token_hex(4)}"
    body = {"origin": scene.server.server_name, "origin_server_ts": 1, "pdus": [pdu], "edus": []}
    response = await scene.server.federation_request(
        scene.mxfed.federation_url,
        scene.mxfed.server_name,
        "PUT",
        f"/_matrix/federation/v1/send/{txn_id}",
        body,
    )
    assert response.status_code == 200, response.text
    assert response.json()["pdus"][event_id] == {}
    spans = scene.receiver.spans

    def send_span() -> Span | None:
        return next(
            (
                s
                for s in spans
                if s.service == "mxfed-gateway"
                and s.name.endswith("/send/{txn_id}")
                and s.kind == 2
            ),
            None,
        )

    await scene.receiver.wait_for(lambda: send_span() is not None, "gateway span of the /send")
    trace_id = send_span().trace_id  # type: ignore[union-attr]

    def in_trace(service: str, name_part: str) -> bool:
        return any(
            s.service == service and name_part in s.name for s in spans if s.trace_id == trace_id
        )

    await scene.receiver.wait_for(
        lambda: in_trace("mxfed-keys", "VerifyRequest"), "keys span in the /send's trace"
    )
    await scene.receiver.wait_for(
        lambda: in_trace("mxfed-events", "InputTransaction"), "events span in the /send's trace"
    )
    # The gateway's client side and the database work of events belong to it too.
    assert in_trace("mxfed-gateway", "VerifyRequest")
    await scene.receiver.wait_for(
        lambda: any(
            s.service == "mxfed-events" and s.trace_id == trace_id and s.kind == 3 for s in spans
        ),
        "a database span of events in the /send's trace",
    )
    # Log records carry the trace id: the access record of the /send names it.
    log = (scene.mxfed.data_dir / "mxfed.log").read_text()
    assert any(
        line.startswith("{")
        and orjson.loads(line).get("logger") == "mxfed.access"
        and orjson.loads(line).get("trace_id") == trace_id
        for line in log.splitlines()
    )


async def test_a_local_send_has_spans_in_events_and_the_senders_outbound_request(
    scene: Scene,
) -> None:
    room = Resident(scene.server, serve_event=True)
    scene.rooms[room.room_id] = room
    user = f"@u{secrets.token_hex(4)}:{scene.mxfed.server_name}"
    async with scene.mxfed.channel("events") as channel:
        await membership_pb2_grpc.MembershipStub(channel).PerformJoin(
            membership_pb2.PerformJoinRequest(
                room_id_or_alias=room.room_id, user_id=user, servers=[scene.server.server_name]
            ),
            timeout=30,
        )
        sent = await events_pb2_grpc.EventsStub(channel).PerformSendEvent(
            events_pb2.PerformSendEventRequest(
                room_id=room.room_id,
                sender=user,
                type="m.room.message",
                content_json=orjson.dumps({"msgtype": "m.text", "body": "out"}),
            )
        )
    spans = scene.receiver.spans
    await scene.receiver.wait_for(
        lambda: any(s.service == "mxfed-events" and "PerformSendEvent" in s.name for s in spans),
        "events span of the local send",
    )
    await scene.receiver.wait_for(
        lambda: any(
            p.get("event_id") == sent.event_id or p["content"].get("body") == "out"
            for p in room.pdus
        ),
        "the event at the remote",
    )

    [send_trace] = {
        s.trace_id for s in spans if s.service == "mxfed-events" and "PerformSendEvent" in s.name
    }

    def outbound_send() -> bool:
        return any(
            s.service == "mxfed-sender"
            and s.trace_id == send_trace
            and s.kind == 3  # CLIENT
            and s.name.startswith("PUT")
            and str(scene.server.port) in " ".join(s.attributes.values())
            for s in spans
        )

    await scene.receiver.wait_for(outbound_send, "the sender's outbound PUT in the send's trace")
    assert any(
        s.service == "mxfed-sender" and s.name == "send transaction" and s.trace_id == send_trace
        for s in spans
    )
