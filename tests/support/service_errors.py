"""Reading the typed errors of mxfed's services in tests."""

from __future__ import annotations

import grpc

from mxfed.service_errors import error_info, error_status


def described(error: grpc.RpcError) -> str:
    """``M_CODE: message`` for a typed error, else the bare status details."""
    info = error_info(error)
    return f"{info.errcode}: {info.message}" if info.errcode else info.message


def errcode(error: grpc.RpcError) -> str | None:
    """The Matrix errcode a failed call carries (None when it carries none)."""
    return error_info(error).errcode


def typed_rpc_error(
    code: grpc.StatusCode, errcode: str, message: str, **extra: str
) -> grpc.aio.AioRpcError:
    """The error a caller gets from a service that raised ``errcode`` (for mapping tests)."""
    status = error_status(code, errcode, message, extra)
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata), status.details
    )
