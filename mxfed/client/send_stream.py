"""Local sends over one long-lived ``StreamSendEvents`` call (the events service's API).

A bridge's many concurrent sends would each cost a unary call at both ends; here
each is an item of a stream message, and the sends made while the previous
message was being written go together in the next one. Every send stays an
awaited call of its own: its deadline (also told to the service), its own typed
error, its own answer. When the stream breaks, every unanswered send fails
:class:`~mxfed.client.errors.Unavailable` (the caller retries it with its
``txn_id``, so an event the service already stored is returned, not sent
twice) and the next send opens a new stream.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import grpc

from mxfed import tracing
from mxfed.client.errors import MatrixError, Unavailable, from_rpc_error, matrix_error
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc

_CODES = {code.value[0]: code for code in grpc.StatusCode}
# A stream ending with one of these was refused as such (the caller may not send, or the
# service is too old): its sends fail with it. Any other end is the stream's, not theirs:
# they fail Unavailable and are retried.
_REFUSED = {
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED,
}


def _failure(error: events_pb2.SendEventError) -> MatrixError:
    code = _CODES.get(error.code, grpc.StatusCode.UNKNOWN)
    return matrix_error(code, error.errcode, error.message, dict(error.extra), "events")


def _stream_failure(error: grpc.aio.AioRpcError | None, why: str) -> MatrixError:
    # UNAVAILABLE is the unary calls' Unavailable too, with what to check (the CLI's hint).
    if error is not None and (
        error.code() in _REFUSED or error.code() is grpc.StatusCode.UNAVAILABLE
    ):
        return from_rpc_error(error, "events")
    if error is not None:
        why = f"the send stream ended: {error.code().name} {error.details() or ''}".rstrip()
    return Unavailable("M_UNKNOWN", why, grpc.StatusCode.UNAVAILABLE)


class SendStream:
    """Sends over one ``StreamSendEvents`` call, opened on first use and again after it
    broke. Belongs to one event loop (the client's)."""

    def __init__(self, stub: Callable[[], events_pb2_grpc.EventsStub]) -> None:
        self._stub = stub
        self._ids = itertools.count(1)
        # Unanswered sends by id; the items not yet written; the open call and its tasks.
        self._pending: dict[int, asyncio.Future[events_pb2.PerformSendEventResponse]] = {}
        self._queue: list[events_pb2.SendEventItem] = []
        self._queued = asyncio.Event()
        self._call: grpc.aio.StreamStreamCall | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def send(
        self, request: events_pb2.PerformSendEventRequest, deadline: float
    ) -> events_pb2.PerformSendEventResponse:
        """``request``'s answer, or its :class:`MatrixError` (:class:`Unavailable` when
        no answer came within ``deadline`` seconds or the stream broke)."""
        if self._call is None:
            self._open()
        send_id = next(self._ids)
        answer = asyncio.get_running_loop().create_future()
        self._pending[send_id] = answer
        self._queue.append(
            events_pb2.SendEventItem(
                id=send_id,
                send=request,
                timeout_ms=round(deadline * 1000),
                traceparent=tracing.current_traceparent(),
            )
        )
        self._queued.set()
        try:
            async with asyncio.timeout(deadline):
                return await answer
        except TimeoutError:
            raise Unavailable(
                "M_UNKNOWN",
                f"the events service did not answer within {deadline:g} s",
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ) from None
        finally:
            self._pending.pop(send_id, None)

    async def close(self) -> None:
        self._broken(self._call, None, "the client was closed", closed=True)

    def _open(self) -> None:
        # No deadline on the stream itself: it lives as long as the client, each send has one.
        call = self._stub().StreamSendEvents()
        self._call = call
        self._tasks = [
            asyncio.create_task(self._write(call), name="client:send-stream-writer"),
            asyncio.create_task(self._read(call), name="client:send-stream-reader"),
        ]

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            while True:
                await self._queued.wait()
                self._queued.clear()
                items, self._queue = self._queue, []
                if items:
                    await call.write(events_pb2.StreamSendEventsRequest(sends=items))
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as error:
            self._broken(call, error, "")

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            async for response in call:
                for result in response.results:
                    answer = self._pending.get(result.id)
                    if answer is None or answer.done():
                        continue  # given up on (its deadline passed)
                    if result.HasField("error"):
                        answer.set_exception(_failure(result.error))
                    else:
                        answer.set_result(result.sent)
        except grpc.aio.AioRpcError as error:
            self._broken(call, error, "")
        else:
            self._broken(call, None, "the events service ended the send stream")

    def _broken(
        self,
        call: grpc.aio.StreamStreamCall | None,
        error: grpc.aio.AioRpcError | None,
        why: str,
        *,
        closed: bool = False,
    ) -> None:
        """``call`` is over: its unanswered sends fail and the next send opens a new
        stream. ``closed``: by the caller, its sends fail CANCELLED (not retried), as a
        unary call's when its channel is closed."""
        if call is not self._call or call is None:
            return
        self._call = None
        call.cancel()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._tasks = []
        self._queue = []
        pending, self._pending = self._pending, {}
        for answer in pending.values():
            if not answer.done():
                answer.set_exception(
                    MatrixError("M_UNKNOWN", why, grpc.StatusCode.CANCELLED)
                    if closed
                    else _stream_failure(error, why)
                )
