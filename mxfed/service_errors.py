"""Typed errors between mxfed's parts: ``google.rpc.Status`` with an ``ErrorInfo``.

A servicer raises :class:`ServiceError` subclasses (or the pure core's
:class:`~matrix_protocol.membership.MembershipError`) from its logic; its
methods are wrapped with :func:`reports_service_errors`, which ends the call
with a gRPC status code, the message as the status details, and a
``google.rpc.Status`` (grpcio-status, in the ``grpc-status-details-bin``
trailer) whose one detail is a ``google.rpc.ErrorInfo``: ``reason`` is the
Matrix errcode, ``domain`` is :data:`ERROR_DOMAIN`, ``metadata`` the error's
extra fields (e.g. ``room_version`` of ``M_INCOMPATIBLE_ROOM_VERSION``).

Callers read it back with :func:`error_info`: the gateway turns it into a
Matrix error (``gateway.errors.from_grpc_error``), the CLI into one line
(``mxfed.commands.common.rpc_error_line``), bots through ``mxfed.client`` into
exceptions (``mxfed.client.errors.from_rpc_error``). Nothing parses the message text.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from matrix_protocol.canonical_json import decode_json
from matrix_protocol.membership import MembershipError

T = TypeVar("T")

ERROR_DOMAIN = "mxfed.org"
"""The ``ErrorInfo.domain`` of mxfed's errors: ``reason`` is a Matrix errcode."""

_HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class ServiceError(Exception):
    status = grpc.StatusCode.INVALID_ARGUMENT
    errcode = "M_INVALID_PARAM"

    def __init__(self, message: str, errcode: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra
        if errcode is not None:
            self.errcode = errcode


class BadRequest(ServiceError):
    pass


class Forbidden(ServiceError):
    status = grpc.StatusCode.PERMISSION_DENIED
    errcode = "M_FORBIDDEN"


UNABLE_DUE_TO_PARTIAL_STATE = "ORG.MATRIX.MSC3895_UNABLE_DUE_TO_PARTIAL_STATE"
"""403 errcode for a request about a room whose state is partial here (MSC3895,
not in the spec yet; the unstable identifier Synapse sends and acts on)."""


class NotFound(ServiceError):
    status = grpc.StatusCode.NOT_FOUND
    errcode = "M_NOT_FOUND"


class Conflict(ServiceError):
    status = grpc.StatusCode.ALREADY_EXISTS
    errcode = "M_ROOM_IN_USE"


class Unavailable(ServiceError):
    status = grpc.StatusCode.UNAVAILABLE
    errcode = "M_UNKNOWN"


def error_status(
    code: grpc.StatusCode, errcode: str, message: str, extra: Mapping[str, Any] | None = None
) -> grpc.Status:
    """The gRPC status carrying ``errcode`` (and ``extra``) as a ``google.rpc.ErrorInfo``."""
    info = error_details_pb2.ErrorInfo(
        reason=errcode,
        domain=ERROR_DOMAIN,
        metadata={key: str(value) for key, value in (extra or {}).items()},
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    return rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=message, details=[detail])
    )


def status_code_of(error: ServiceError | MembershipError) -> grpc.StatusCode:
    """The gRPC status code ``error`` ends a call with."""
    if isinstance(error, MembershipError):
        return _HTTP_TO_GRPC.get(error.status, grpc.StatusCode.UNAVAILABLE)
    return error.status


async def abort(
    context: grpc.aio.ServicerContext, error: ServiceError | MembershipError
) -> NoReturn:
    """End the call with ``error`` as a typed status."""
    status = error_status(status_code_of(error), error.errcode, error.message, error.extra)
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("unreachable: abort raises")


def reports_service_errors(
    method: Callable[..., Awaitable[T]],
) -> Callable[..., Awaitable[T]]:
    """Wrap a servicer method: service and membership errors become typed gRPC statuses."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except (ServiceError, MembershipError) as error:
            await abort(context, error)

    return wrapper


def reports_stream_errors(
    method: Callable[..., AsyncIterator[T]],
) -> Callable[..., AsyncIterator[T]]:
    """:func:`reports_service_errors` for a server-streaming method (an async generator)."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[T]:
        try:
            async for message in method(self, request, context):
                yield message
        except (ServiceError, MembershipError) as error:
            await abort(context, error)

    return wrapper


@dataclass(frozen=True)
class ErrorInfo:
    """What a failed call says about itself: the Matrix errcode when the service gave one."""

    code: grpc.StatusCode
    message: str
    errcode: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def error_info(error: grpc.RpcError) -> ErrorInfo:
    """The typed error of a failed call (``errcode`` None when the service gave none)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else None) or ""
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        status = None
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Is(info.DESCRIPTOR) and detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                return ErrorInfo(code, message, info.reason, dict(info.metadata))
    return ErrorInfo(code, message)


def json_field(data: bytes, what: str, default: Any) -> Any:
    """A request's JSON bytes field: ``default`` when empty, else a value of its type."""
    if not data:
        return default
    try:
        value = decode_json(data)
    except ValueError as error:
        raise BadRequest(f"{what} is not valid JSON: {error}", "M_BAD_JSON") from None
    if type(value) is not type(default):
        raise BadRequest(f"{what} must be a JSON {type(default).__name__}", "M_BAD_JSON")
    return value
