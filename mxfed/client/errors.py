"""Errors of :mod:`mxfed.client`: every failed call raises a :class:`MatrixError`.

mxfed's services report errors as typed gRPC statuses (``mxfed/service_errors.py``:
a ``google.rpc.Status`` whose ``ErrorInfo`` carries the Matrix errcode and the
error's extra fields); the client turns them back into exceptions carrying the
Matrix ``errcode``, so a bot decides on ``error.errcode`` (or catches a
subclass), never on message text.
"""

from __future__ import annotations

import grpc

from mxfed.service_errors import error_info


class MatrixError(Exception):
    """A call failed. ``errcode`` is the Matrix error code (``M_FORBIDDEN``...).

    ``status`` is the gRPC status code; ``extra`` the error's extra fields
    (e.g. ``room_version`` of ``M_INCOMPATIBLE_ROOM_VERSION``,
    ``retry_after_ms`` of ``M_LIMIT_EXCEEDED``).
    """

    def __init__(
        self,
        errcode: str,
        message: str,
        status: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        extra: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{errcode}: {message}")
        self.errcode = errcode
        self.message = message
        self.status = status
        self.extra = extra or {}
        # The failed call, when the error came from one (and which service it was).
        self.rpc_error: grpc.aio.AioRpcError | None = None
        self.service = ""

    @property
    def retryable(self) -> bool:
        """Worth retrying later (the service or a remote server was unavailable, rate limits)."""
        return self.status in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )


class Forbidden(MatrixError):
    """``M_FORBIDDEN`` and other refusals (PERMISSION_DENIED)."""


class NotFound(MatrixError):
    """``M_NOT_FOUND`` (an unknown room, event, user, alias or media)."""


class Unavailable(MatrixError):
    """The service (or a remote server it needed) could not be reached, or timed out."""


def _subclass(status: grpc.StatusCode, errcode: str) -> type[MatrixError]:
    if status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable
    if errcode == "M_NOT_FOUND" or status is grpc.StatusCode.NOT_FOUND:
        return NotFound
    if errcode == "M_FORBIDDEN" or status is grpc.StatusCode.PERMISSION_DENIED:
        return Forbidden
    return MatrixError


def matrix_error(
    status: grpc.StatusCode,
    errcode: str | None,
    message: str,
    extra: dict[str, str] | None = None,
    service: str = "",
) -> MatrixError:
    """The :class:`MatrixError` of a call that ended with ``status`` (``errcode`` None:
    the service gave none, one is made from the status)."""
    if errcode is None:
        message = message or status.name
        if status is grpc.StatusCode.UNAVAILABLE and service:
            message = f"the {service} service is unavailable: {message}"
        errcode = {
            grpc.StatusCode.PERMISSION_DENIED: "M_FORBIDDEN",
            grpc.StatusCode.NOT_FOUND: "M_NOT_FOUND",
            grpc.StatusCode.INVALID_ARGUMENT: "M_INVALID_PARAM",
            grpc.StatusCode.RESOURCE_EXHAUSTED: "M_LIMIT_EXCEEDED",
        }.get(status, "M_UNKNOWN")
    error = _subclass(status, errcode)(errcode, message, status, extra)
    error.service = service
    return error


def from_rpc_error(error: grpc.aio.AioRpcError, service: str = "") -> MatrixError:
    """The :class:`MatrixError` a failed gRPC call stands for."""
    info = error_info(error)
    converted = matrix_error(error.code(), info.errcode, info.message, dict(info.extra), service)
    converted.rpc_error = error
    return converted


__all__ = ["Forbidden", "MatrixError", "NotFound", "Unavailable", "from_rpc_error", "matrix_error"]
