"""StreamSendEvents: a bridge's many concurrent local sends over one gRPC stream.

A unary PerformSendEvent costs a whole call at each end (headers, a call object,
the interceptors, a deadline timer: ~0.25 ms of CPU per end on loopback); here
each send is an item of a message, and the sends that arrive (or finish) together
share one message each way. Each send keeps what the unary call gives it: its own
deadline (``timeout_ms``), its own typed error (the status PerformSendEvent would
have ended with), waiting for the database when it carries a ``txn_id``, and its
caller's trace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc

from matrix_protocol.membership import MembershipError
from mxfed import tracing
from mxfed.internal_plane import retried_while_database_away, unavailable_details
from mxfed.service_errors import ServiceError, status_code_of
from mxfed_api.events.v1 import events_pb2
from services.events import metrics

log = logging.getLogger(__name__)

# A send's deadline when its item gives none (the client library's CALL_TIMEOUT).
DEFAULT_TIMEOUT = 30.0
# Unanswered sends of one stream at most: past it the stream is not read (the caller's
# writes wait, by HTTP/2 flow control) until some are answered.
MAX_UNANSWERED = 10_000

# One send, and whether others came with it (one message: they had better go together).
SendOne = Callable[[events_pb2.PerformSendEventRequest, bool], Awaitable[tuple[str, int]]]


def _error(
    code: grpc.StatusCode, errcode: str, message: str, extra: Mapping[str, Any] | None = None
) -> events_pb2.SendEventError:
    fields = {key: str(value) for key, value in (extra or {}).items()}
    return events_pb2.SendEventError(
        code=code.value[0], message=message, errcode=errcode, extra=fields
    )


async def _answer(
    item: events_pb2.SendEventItem, send_one: SendOne, together: bool
) -> events_pb2.SendEventResult:
    """One send's result or its error, as PerformSendEvent would have answered it."""
    timeout = item.timeout_ms / 1000 if item.timeout_ms else DEFAULT_TIMEOUT
    deadline = time.monotonic() + timeout
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            with tracing.continued(item.traceparent):
                if item.send.txn_id:  # may run again: waits for the database like the call
                    event_id, position = await retried_while_database_away(
                        lambda: send_one(item.send, together), lambda: deadline - time.monotonic()
                    )
                else:
                    event_id, position = await send_one(item.send, together)
    except (ServiceError, MembershipError) as error:
        failed = _error(status_code_of(error), error.errcode, error.message, error.extra)
        return events_pb2.SendEventResult(id=item.id, error=failed)
    except TimeoutError:
        failed = _error(grpc.StatusCode.DEADLINE_EXCEEDED, "M_UNKNOWN", "the send timed out")
        return events_pb2.SendEventResult(id=item.id, error=failed)
    except Exception as exc:  # noqa: BLE001 - answered as its own call would have ended
        details = unavailable_details(exc)
        if details is not None:
            failed = _error(grpc.StatusCode.UNAVAILABLE, "M_UNKNOWN", details)
        else:
            log.exception("a streamed local send failed", extra={"room_id": item.send.room_id})
            failed = _error(grpc.StatusCode.UNKNOWN, "M_UNKNOWN", f"{type(exc).__name__}: {exc}")
        return events_pb2.SendEventResult(id=item.id, error=failed)
    finally:
        metrics.LOCAL_SEND_SECONDS.observe(time.perf_counter() - started)
    sent = events_pb2.PerformSendEventResponse(event_id=event_id, stream_position=position)
    return events_pb2.SendEventResult(id=item.id, sent=sent)


async def serve(
    requests: AsyncIterator[events_pb2.StreamSendEventsRequest],
    send_one: SendOne,
    most: int = MAX_UNANSWERED,
) -> AsyncIterator[events_pb2.StreamSendEventsResponse]:
    """Each send read from ``requests`` runs at once (reading pauses while ``most`` are
    unanswered); the results ready when the stream can take a message go out together.
    Ends once the caller ended its side and every send is answered; cancelled (the
    caller went away), it abandons the unanswered ones."""
    results: list[events_pb2.SendEventResult] = []
    ready = asyncio.Event()
    answered = asyncio.Event()  # set when a send is answered
    running: set[asyncio.Task[None]] = set()
    unanswered = 0

    async def answer(item: events_pb2.SendEventItem, together: bool) -> None:
        nonlocal unanswered
        result = await _answer(item, send_one, together)
        results.append(result)  # after the await: ``results`` is a new list once sent
        unanswered -= 1
        answered.set()
        ready.set()

    async def read() -> None:
        nonlocal unanswered
        try:
            async for message in requests:
                together = len(message.sends) > 1
                for item in message.sends:
                    unanswered += 1
                    task = asyncio.create_task(answer(item, together), name="events:streamed-send")
                    running.add(task)
                    task.add_done_callback(running.discard)
                while unanswered >= most:
                    answered.clear()
                    await answered.wait()
        finally:
            ready.set()

    reader = asyncio.create_task(read(), name="events:send-stream-reader")
    try:
        while True:
            ready.clear()
            if results:
                batch, results = results, []
                yield events_pb2.StreamSendEventsResponse(results=batch)
                continue
            if reader.done() and not unanswered:
                reader.result()  # the stream's own failure, if any
                return
            await ready.wait()
    finally:
        reader.cancel()
        for task in running:
            task.cancel()
