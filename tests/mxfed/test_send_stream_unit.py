"""``mxfed.client``'s send stream against a scripted events service (in-process gRPC, no
database) that serves it with the events service's own stream code: each send keeps
its own deadline and its own error, and a stream that breaks fails only its unanswered
sends, which the client sends again (same ``txn_id``) on a new stream without losing or
doubling an acknowledged one."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest

from mxfed.client import Client, Forbidden, MatrixError, Unavailable
from mxfed.client.send_stream import SendStream
from mxfed.config import Config
from mxfed.service_errors import Forbidden as ServiceForbidden
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc
from services.events import send_stream
from tests.support.polling import wait_until

ROOM, BOT = "!room:example.org", "@bot:example.org"


class ScriptedEvents(events_pb2_grpc.EventsServicer):
    """Sends stored by (sender, txn_id) as the real service does; a send whose body is in
    ``held`` waits for its event; ``break_after`` names a body after whose storing the
    stream breaks (UNAVAILABLE) before it is answered."""

    def __init__(self) -> None:
        self.stored: dict[tuple[str, str], str] = {}
        self.requests: Counter[str] = Counter()  # by txn_id
        self.held: dict[str, asyncio.Event] = {}
        self.given_up: list[str] = []  # held sends the service stopped waiting for
        self.streams = 0
        self.break_after = ""
        self._breaking = asyncio.Event()
        self.refuse_streams = False

    async def _send(
        self, request: events_pb2.PerformSendEventRequest, together: bool = False
    ) -> tuple[str, int]:
        body = json.loads(request.content_json).get("body", "")
        self.requests[request.txn_id] += 1
        if body == "refuse":
            raise ServiceForbidden("not in the room", retry_after_ms=5)
        if body in self.held:
            try:
                await self.held[body].wait()
            except asyncio.CancelledError:
                self.given_up.append(body)
                raise
        event_id = self.stored.setdefault((request.sender, request.txn_id), f"${len(self.stored)}")
        if body == self.break_after:
            self.break_after = ""
            self._breaking.set()
            await asyncio.Event().wait()  # never answered: the stream breaks first
        return event_id, len(self.stored)

    async def StreamSendEvents(self, request_iterator, context):  # noqa: N802, ANN001, ANN201
        self.streams += 1
        if self.refuse_streams:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "may not call this")
        responses = aiter(send_stream.serve(request_iterator, self._send))
        breaking = asyncio.create_task(self._breaking.wait())
        try:
            while True:
                following = asyncio.ensure_future(anext(responses))
                await asyncio.wait({following, breaking}, return_when=asyncio.FIRST_COMPLETED)
                if breaking.done():
                    following.cancel()
                    self._breaking.clear()
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "the service went away")
                try:
                    yield following.result()
                except StopAsyncIteration:
                    return
        finally:
            breaking.cancel()
            await responses.aclose()  # type: ignore[attr-defined]


@pytest.fixture
async def events() -> AsyncIterator[tuple[ScriptedEvents, Client]]:
    servicer = ScriptedEvents()
    server = grpc.aio.server()
    events_pb2_grpc.add_EventsServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = Client(Config(internal_tls=False), addresses={"events": f"127.0.0.1:{port}"})
    try:
        yield servicer, client
    finally:
        await client.close()
        await server.stop(None)


def _request(body: str) -> events_pb2.PerformSendEventRequest:
    return events_pb2.PerformSendEventRequest(
        room_id=ROOM, sender=BOT, content_json=json.dumps({"body": body}).encode(), txn_id=body
    )


def _stream(client: Client) -> SendStream:
    return SendStream(lambda: client.stub(events_pb2_grpc.EventsStub))


async def test_many_concurrent_sends_each_get_their_own_answer(
    events: tuple[ScriptedEvents, Client],
) -> None:
    servicer, client = events
    sent = await asyncio.gather(
        *(client.send_message(ROOM, BOT, "x", txn_id=f"t{n}") for n in range(500))
    )
    assert {s.txn_id: s.event_id for s in sent} == {
        txn_id: event_id for (_, txn_id), event_id in servicer.stored.items()
    }
    assert len({s.event_id for s in sent}) == 500
    assert servicer.streams == 1


async def test_a_deadline_reaches_only_its_own_send(
    events: tuple[ScriptedEvents, Client],
) -> None:
    servicer, client = events
    servicer.held["slow"] = asyncio.Event()
    stream = _stream(client)
    try:
        slow = asyncio.create_task(stream.send(_request("slow"), 0.2))
        others = [asyncio.create_task(stream.send(_request(f"quick {n}"), 30)) for n in range(20)]
        with pytest.raises(Unavailable) as timed_out:
            await slow
        assert timed_out.value.status is grpc.StatusCode.DEADLINE_EXCEEDED
        assert len({answer.event_id for answer in await asyncio.gather(*others)}) == 20
        # The service gave up on it at its deadline too: released later, it stores nothing.
        await wait_until(lambda: servicer.given_up == ["slow"], what="the service gave up")
        servicer.held["slow"].set()
        assert (await stream.send(_request("after"), 30)).event_id
        assert (BOT, "slow") not in servicer.stored
        assert servicer.streams == 1
    finally:
        await stream.close()


async def test_an_error_reaches_only_its_own_send(events: tuple[ScriptedEvents, Client]) -> None:
    servicer, client = events
    outcomes = await asyncio.gather(
        *(client.send_message(ROOM, BOT, f"fine {n}") for n in range(10)),
        client.send_message(ROOM, BOT, "refuse"),
        *(client.send_message(ROOM, BOT, f"fine {n}") for n in range(10, 20)),
        return_exceptions=True,
    )
    refused = outcomes.pop(10)
    assert isinstance(refused, Forbidden), refused
    assert refused.errcode == "M_FORBIDDEN" and refused.extra == {"retry_after_ms": "5"}
    assert refused.status is grpc.StatusCode.PERMISSION_DENIED
    assert len({o.event_id for o in outcomes if not isinstance(o, BaseException)}) == 20
    assert servicer.streams == 1


async def test_a_broken_stream_fails_its_unanswered_sends_and_they_are_sent_again(
    events: tuple[ScriptedEvents, Client],
) -> None:
    servicer, client = events
    before = await client.send_message(ROOM, BOT, "x", txn_id="before")
    # "w" is read by the service and held: unanswered when the stream breaks. "s" is
    # stored, then the stream breaks before its answer.
    servicer.held["waiting"] = asyncio.Event()
    waiting = asyncio.create_task(client.send_message(ROOM, BOT, "waiting", txn_id="w"))
    await wait_until(lambda: servicer.requests["w"] == 1, what="w read")
    servicer.break_after = "stored"
    stored = await client.send_message(ROOM, BOT, "stored", txn_id="s")
    # Sent again on a new stream: the event stored the first time, not another.
    assert servicer.streams == 2 and servicer.requests["s"] == 2
    assert stored.event_id == servicer.stored[(BOT, "s")]
    assert servicer.given_up == ["waiting"]  # the old stream's sends were abandoned
    await wait_until(lambda: servicer.requests["w"] == 2, what="w sent again")
    servicer.held["waiting"].set()
    assert (await waiting).event_id == servicer.stored[(BOT, "w")]
    assert list(servicer.stored) == [(BOT, "before"), (BOT, "s"), (BOT, "w")]
    assert before.event_id == servicer.stored[(BOT, "before")]


async def test_a_broken_stream_is_unavailable_to_its_unanswered_sends(
    events: tuple[ScriptedEvents, Client],
) -> None:
    servicer, client = events
    servicer.held["waiting"] = asyncio.Event()
    stream = _stream(client)
    try:
        waiting = asyncio.create_task(stream.send(_request("waiting"), 30))
        await wait_until(lambda: servicer.requests["waiting"] == 1, what="read")
        servicer.break_after = "stored"
        answered = await asyncio.gather(stream.send(_request("stored"), 30), waiting,
                                        return_exceptions=True)  # fmt: skip
        assert all(isinstance(a, Unavailable) and a.retryable for a in answered), answered
        # The next send opens a new stream.
        assert (await stream.send(_request("next"), 30)).event_id
        assert servicer.streams == 2
    finally:
        await stream.close()


async def test_a_refused_stream_is_not_retried(events: tuple[ScriptedEvents, Client]) -> None:
    servicer, client = events
    servicer.refuse_streams = True
    with pytest.raises(MatrixError) as refused:
        await client.send_message(ROOM, BOT, "x")
    assert refused.value.status is grpc.StatusCode.PERMISSION_DENIED
    assert servicer.streams == 1


async def test_the_service_stops_reading_a_stream_while_too_many_sends_are_unanswered() -> None:
    """Reading pauses at ``most`` unanswered sends (the caller's writes then wait) and
    goes on as they are answered; every send is answered once."""
    release = asyncio.Event()
    read = 0

    async def requests() -> AsyncIterator[events_pb2.StreamSendEventsRequest]:
        nonlocal read
        for n in range(6):
            read += 1
            yield events_pb2.StreamSendEventsRequest(
                sends=[events_pb2.SendEventItem(id=n, send=_request(f"m{n}"))]
            )

    async def send_one(
        request: events_pb2.PerformSendEventRequest, together: bool
    ) -> tuple[str, int]:
        await release.wait()
        return f"${request.txn_id}", 1

    answered: list[int] = []

    async def follow() -> None:
        async for message in send_stream.serve(requests(), send_one, most=3):
            answered.extend(result.id for result in message.results)

    following = asyncio.create_task(follow())
    await wait_until(lambda: read == 3, what="three read")
    for _ in range(10):  # turns of the event loop: a fourth is not read meanwhile
        await asyncio.sleep(0)
    assert read == 3 and answered == []
    release.set()
    await asyncio.wait_for(following, 30)
    assert read == 6 and sorted(answered) == list(range(6))


async def test_a_send_in_flight_when_the_client_closes_fails_as_cancelled(
    events: tuple[ScriptedEvents, Client],
) -> None:
    """As a unary call cut by the close of its channel: CANCELLED, not sent again (the
    caller closed the client, a retry would open it again)."""
    servicer, client = events
    servicer.held["waiting"] = asyncio.Event()
    waiting = asyncio.create_task(client.send_message(ROOM, BOT, "waiting", txn_id="w"))
    await wait_until(lambda: servicer.requests["w"] == 1, what="w read")
    await client.close()
    with pytest.raises(MatrixError) as closed:
        await waiting
    assert closed.value.status is grpc.StatusCode.CANCELLED and not closed.value.retryable
    assert servicer.requests["w"] == 1 and servicer.streams == 1


async def test_a_send_waiting_to_retry_when_the_client_closes_is_sent_again(
    events: tuple[ScriptedEvents, Client],
) -> None:
    """Its stream broke, and the client was closed while it waited to send again: it is
    sent again as any call after a close (the client opens again), once stored."""
    servicer, client = events
    servicer.break_after = "stored"
    sending = asyncio.create_task(client.send_message(ROOM, BOT, "stored", txn_id="s"))
    await wait_until(lambda: servicer.requests["s"] == 1, what="s read")
    stream = client._send_stream
    assert stream is not None
    await wait_until(lambda: stream._call is None, what="the stream broke")
    await client.close()
    assert (await sending).event_id == servicer.stored[(BOT, "s")]
    assert servicer.requests["s"] == 2 and servicer.streams == 2
