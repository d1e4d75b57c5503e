"""A part whose database (or a service it calls) is away answers UNAVAILABLE with a
Matrix errcode, the gateway turns that into 503 with Retry-After, and an
idempotent call that fails with UNAVAILABLE is retried once on another replica."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import grpc
import pytest

from gateway.errors import from_grpc_error
from mxfed.internal_plane import DATABASE_UNAVAILABLE
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc
from tests.support.grpc_plane import bind_loopback, channel_to, make_server


async def _events_server(
    answer: Callable[[], Any], calls: list[str], name: str
) -> tuple[grpc.aio.Server, str]:
    async def query_events(
        request: events_pb2.QueryEventsRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.QueryEventsResponse:
        calls.append(name)
        return answer()

    async def input_transaction(
        request: events_pb2.InputTransactionRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.InputTransactionResponse:
        calls.append(name)
        answer()
        return events_pb2.InputTransactionResponse()

    server = make_server("events")
    handler = grpc.method_handlers_generic_handler(
        "mxfed.events.v1.Events",
        {
            "QueryEvents": grpc.unary_unary_rpc_method_handler(
                query_events,
                request_deserializer=events_pb2.QueryEventsRequest.FromString,
                response_serializer=events_pb2.QueryEventsResponse.SerializeToString,
            ),
            "InputTransaction": grpc.unary_unary_rpc_method_handler(
                input_transaction,
                request_deserializer=events_pb2.InputTransactionRequest.FromString,
                response_serializer=events_pb2.InputTransactionResponse.SerializeToString,
            ),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    address = bind_loopback(server, "events")
    await server.start()
    return server, address


def _database_gone() -> Any:
    raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")


async def test_database_loss_is_unavailable_and_a_503_with_retry_after() -> None:
    calls: list[str] = []
    server, address = await _events_server(_database_gone, calls, "only")
    channel = channel_to(address, "events")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            # Federation input is answered at once (the remote retries it later).
            await events_pb2_grpc.EventsStub(channel).InputTransaction(
                events_pb2.InputTransactionRequest(origin="o.example", txn_id="t"), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert caught.value.details() == DATABASE_UNAVAILABLE
        assert calls == ["only", "only"]  # retried once (one replica: the same one)
        error = from_grpc_error(caught.value)
        assert (error.status, error.errcode) == (503, "M_UNKNOWN")
        assert error.headers == {"Retry-After": "5"}
    finally:
        await channel.close()
        await server.stop(grace=None)


async def test_unreachable_service_is_still_a_502() -> None:
    error = from_grpc_error(
        grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details="failed to connect to all addresses",
        )
    )
    assert (error.status, error.errcode) == (502, "M_UNKNOWN")


async def test_an_idempotent_call_failing_unavailable_is_retried_on_the_other_replica() -> None:
    calls: list[str] = []
    broken, broken_address = await _events_server(_database_gone, calls, "broken")
    working, working_address = await _events_server(lambda: None, calls, "working")
    port = working_address.rsplit(":", 1)[1]
    channel = channel_to(f"ipv4:{broken_address},127.0.0.1:{port}", "events")
    stub = events_pb2_grpc.EventsStub(channel)
    transaction = events_pb2.InputTransactionRequest(origin="o.example", txn_id="t")
    try:
        # Until both replicas have been reached (round robin picks among those connected, and
        # either may connect first).
        deadline = asyncio.get_running_loop().time() + 30
        while not {"broken", "working"} <= set(calls):
            assert asyncio.get_running_loop().time() < deadline, calls
            try:
                await stub.InputTransaction(transaction, timeout=10)
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.05)
        calls.clear()
        for _ in range(6):
            await stub.InputTransaction(transaction, timeout=10)
        # Every call answered; those that reached the broken replica first went on to the
        # working one.
        assert calls.count("working") == 6
        assert calls.count("broken") >= 1
        for index, name in enumerate(calls):
            if name == "broken":
                assert calls[index + 1] == "working"
    finally:
        await channel.close()
        await broken.stop(grace=None)
        await working.stop(grace=None)


async def test_a_read_waits_for_the_database_to_come_back_within_its_deadline() -> None:
    calls: list[str] = []

    def down_twice() -> Any:
        if len(calls) <= 2:
            _database_gone()
        return events_pb2.QueryEventsResponse()

    server, address = await _events_server(down_twice, calls, "only")
    channel = channel_to(address, "events")
    try:
        await events_pb2_grpc.EventsStub(channel).QueryEvents(
            events_pb2.QueryEventsRequest(event_ids=["$x"]), timeout=10
        )
        assert calls == ["only"] * 3  # ran again in the server until the database answered
    finally:
        await channel.close()
        await server.stop(grace=None)
