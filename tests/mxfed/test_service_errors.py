"""Typed gRPC errors: a google.rpc.Status with an ErrorInfo, over a real gRPC call,
mapped once by the gateway and once by the CLI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.errors import from_grpc_error
from matrix_protocol.membership import MembershipError
from mxfed.commands.common import rpc_error_line
from mxfed.config import Config
from mxfed.service_errors import (
    ERROR_DOMAIN,
    NotFound,
    ServiceError,
    error_info,
    reports_service_errors,
    reports_stream_errors,
)
from tests.support.service_errors import typed_rpc_error

SERVICE = "mxfed.test.v1.Errors"


class _Servicer:
    def __init__(self) -> None:
        self.error: Exception = NotFound("no such room")

    @reports_service_errors
    async def Fail(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # noqa: N802
        raise self.error

    @reports_stream_errors
    async def FailStreaming(  # noqa: N802
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        raise self.error
        yield b""  # pragma: no cover (makes this an async generator)


@pytest.fixture
async def errors() -> AsyncIterator[tuple[_Servicer, grpc.aio.Channel]]:
    servicer = _Servicer()
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Fail": grpc.unary_unary_rpc_method_handler(servicer.Fail),
            "FailStreaming": grpc.unary_stream_rpc_method_handler(servicer.FailStreaming),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield servicer, channel
    finally:
        await channel.close()
        await server.stop(grace=None)


async def _fail(channel: grpc.aio.Channel, method: str = "Fail") -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if method == "Fail":
            await channel.unary_unary(f"/{SERVICE}/Fail")(b"", timeout=10)
        else:
            async for _ in channel.unary_stream(f"/{SERVICE}/{method}")(b"", timeout=10):
                pass
    return caught.value


async def test_a_service_error_travels_as_a_status_with_error_info(errors: Any) -> None:
    servicer, channel = errors
    error = await _fail(channel)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "no such room"  # the message only: no errcode to parse
    status = rpc_status.from_call(error)
    assert isinstance(status, status_pb2.Status)
    (detail,) = status.details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    assert (info.reason, info.domain) == ("M_NOT_FOUND", ERROR_DOMAIN)
    read = error_info(error)
    assert (read.code, read.errcode, read.message) == (
        grpc.StatusCode.NOT_FOUND,
        "M_NOT_FOUND",
        "no such room",
    )


async def test_extra_fields_and_streams_are_typed_too(errors: Any) -> None:
    servicer, channel = errors
    servicer.error = MembershipError(
        400, "M_INCOMPATIBLE_ROOM_VERSION", "we do not speak 12", room_version="12"
    )
    for method in ("Fail", "FailStreaming"):
        read = error_info(await _fail(channel, method))
        assert read.code == grpc.StatusCode.INVALID_ARGUMENT
        assert (read.errcode, read.extra) == ("M_INCOMPATIBLE_ROOM_VERSION", {"room_version": "12"})


async def test_an_untyped_failure_has_no_errcode(errors: Any) -> None:
    servicer, channel = errors
    servicer.error = RuntimeError("a bug")
    read = error_info(await _fail(channel))
    assert read.code == grpc.StatusCode.UNKNOWN and read.errcode is None


def test_the_gateway_maps_typed_errors_to_matrix_errors() -> None:
    error = from_grpc_error(
        typed_rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT, "M_INCOMPATIBLE_ROOM_VERSION", "no", room_version="12"
        )
    )
    assert (error.status, error.body()) == (
        400,
        {"errcode": "M_INCOMPATIBLE_ROOM_VERSION", "error": "no", "room_version": "12"},
    )
    forbidden = from_grpc_error(
        typed_rpc_error(grpc.StatusCode.PERMISSION_DENIED, "M_FORBIDDEN", "x")
    )
    assert (forbidden.status, forbidden.errcode) == (403, "M_FORBIDDEN")
    away = from_grpc_error(typed_rpc_error(grpc.StatusCode.UNAVAILABLE, "M_UNKNOWN", "db away"))
    assert (away.status, away.errcode, away.headers) == (503, "M_UNKNOWN", {"Retry-After": "5"})
    # Message text that looks like an errcode is only text.
    plain = grpc.aio.AioRpcError(
        grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), "M_FORBIDDEN: no"
    )
    assert (from_grpc_error(plain).errcode, from_grpc_error(plain).error) == (
        "M_NOT_FOUND",
        "M_FORBIDDEN: no",
    )


def test_the_cli_describes_typed_and_untyped_errors() -> None:
    config = Config(server_name="example.org", events_address="127.0.0.1:7001")
    typed = typed_rpc_error(grpc.StatusCode.NOT_FOUND, "M_NOT_FOUND", "unknown room !r")
    assert rpc_error_line(typed, config, "events") == "M_NOT_FOUND: unknown room !r"
    down = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "refused"
    )
    line = rpc_error_line(down, config, "events")
    assert line.startswith("UNAVAILABLE: the events service at 127.0.0.1:7001 does not answer")
    plain = grpc.aio.AioRpcError(
        grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), "M_FORBIDDEN: no"
    )
    assert rpc_error_line(plain, config, "events") == "NOT_FOUND: M_FORBIDDEN: no"


def test_every_service_error_has_a_matrix_errcode() -> None:
    def subclasses(cls: type) -> list[type]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    for cls in subclasses(ServiceError):
        assert cls.errcode.startswith("M_"), cls
