"""Errors a gRPC servicer reports to its caller as "M_ERRCODE: message".

Every mxfed service raises these (or the pure core's
:class:`~matrix_protocol.membership.MembershipError`) from its logic; the
servicer methods are wrapped with :func:`reports_service_errors`, which turns
them into a gRPC status whose details the gateway maps back to a Matrix
error (``gateway.errors.from_grpc_error``). Extra error fields travel as
trailing metadata (e.g. ``room_version`` of ``M_INCOMPATIBLE_ROOM_VERSION``).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from matrix_protocol.canonical_json import decode_json
from matrix_protocol.membership import MembershipError

T = TypeVar("T")

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

    @property
    def details(self) -> str:
        return f"{self.errcode}: {self.message}"


class BadRequest(ServiceError):
    pass


class Forbidden(ServiceError):
    status = grpc.StatusCode.PERMISSION_DENIED
    errcode = "M_FORBIDDEN"


class NotFound(ServiceError):
    status = grpc.StatusCode.NOT_FOUND
    errcode = "M_NOT_FOUND"


class Conflict(ServiceError):
    status = grpc.StatusCode.ALREADY_EXISTS
    errcode = "M_ROOM_IN_USE"


class Unavailable(ServiceError):
    status = grpc.StatusCode.UNAVAILABLE
    errcode = "M_UNKNOWN"


def reports_service_errors(
    method: Callable[..., Awaitable[T]],
) -> Callable[..., Awaitable[T]]:
    """Wrap a servicer method: service and membership errors become gRPC statuses."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except ServiceError as error:
            await _abort(context, error.status, error.details, error.extra)
        except MembershipError as error:
            status = _HTTP_TO_GRPC.get(error.status, grpc.StatusCode.UNAVAILABLE)
            await _abort(context, status, f"{error.errcode}: {error.message}", error.extra)
        raise AssertionError("unreachable: abort raises")

    return wrapper


async def _abort(
    context: grpc.aio.ServicerContext,
    status: grpc.StatusCode,
    details: str,
    extra: dict[str, Any],
) -> None:
    if extra:
        context.set_trailing_metadata(tuple((key, str(value)) for key, value in extra.items()))
    await context.abort(status, details)


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
