"""Matrix error responses, produced in one place for the whole gateway.

Spec: https://spec.matrix.org/v1.19/server-server-api/#api-standards

Every error is ``{"errcode": ..., "error": ...}`` with the right HTTP status;
unknown endpoints answer 404 ``M_UNRECOGNIZED`` and a known endpoint with the
wrong method 405 ``M_UNRECOGNIZED``.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.responses import JsonResponse
from mxfed.service_errors import error_info

log = logging.getLogger(__name__)


class MatrixError(Exception):
    def __init__(
        self,
        status: int,
        errcode: str,
        error: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(f"{status} {errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error
        self.headers = headers
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"errcode": self.errcode, "error": self.error, **self.extra}


def bad_json(error: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", error)


def not_found(error: str = "Not found") -> MatrixError:
    return MatrixError(404, "M_NOT_FOUND", error)


def forbidden(error: str) -> MatrixError:
    return MatrixError(403, "M_FORBIDDEN", error)


# gRPC status from a service → the Matrix error a remote server should see.
_GRPC_TO_MATRIX = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "M_INVALID_PARAM"),
    grpc.StatusCode.NOT_FOUND: (404, "M_NOT_FOUND"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "M_FORBIDDEN"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "M_UNKNOWN"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "M_LIMIT_EXCEEDED"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "M_UNAUTHORIZED"),
}


# Seconds a remote is asked to wait when a part answers that its database (or
# a service it needs) is away for the moment: about a PostgreSQL restart.
RETRY_AFTER_SECONDS = 5


def from_grpc_error(exc: grpc.aio.AioRpcError) -> MatrixError:
    """The Matrix error for a failed service call: the one place the gateway maps them.

    A service that knows the Matrix error sends it typed
    (:mod:`mxfed.service_errors`: the errcode in a ``google.rpc.ErrorInfo``, its
    extra fields such as ``room_version`` in the ErrorInfo's metadata); the
    HTTP status follows the gRPC code. UNAVAILABLE said by a service (its
    database or a service it needs is away: ``mxfed.internal_plane``) is 503
    with ``Retry-After``; a service that could not be reached at all (after one
    retry on another replica) is 502. Errors without an errcode get the gRPC
    code's default one.
    """
    info = error_info(exc)
    status, errcode = _GRPC_TO_MATRIX.get(info.code, (502, "M_UNKNOWN"))
    if info.errcode is not None:
        error = MatrixError(status, info.errcode, info.message)
        if info.code == grpc.StatusCode.UNAVAILABLE:
            error.status = 503
            error.headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        error.extra.update(info.extra)
        return error
    if status == 502:
        return MatrixError(502, "M_UNKNOWN", "an internal service is unavailable")
    return MatrixError(status, errcode, info.message)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MatrixError)
    async def _matrix_error(_: Request, exc: MatrixError) -> JsonResponse:
        return JsonResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JsonResponse:
        if exc.status_code == 404:
            body = {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}
        elif exc.status_code == 405:
            body = {"errcode": "M_UNRECOGNIZED", "error": "Method not allowed here"}
        else:
            body = {"errcode": "M_UNKNOWN", "error": str(exc.detail)}
        return JsonResponse(body, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JsonResponse:
        first = exc.errors()[0] if exc.errors() else {}
        location = ".".join(str(part) for part in first.get("loc", ()))
        return JsonResponse(
            {"errcode": "M_INVALID_PARAM", "error": f"{location}: {first.get('msg', 'invalid')}"},
            status_code=400,
        )

    @app.exception_handler(grpc.aio.AioRpcError)
    async def _service_error(_: Request, exc: grpc.aio.AioRpcError) -> JsonResponse:
        error = from_grpc_error(exc)
        if error.status == 503 or exc.code() == grpc.StatusCode.UNAVAILABLE:
            # A part restarting or its database away: expected, and answered 502/503.
            log.warning(
                "service unavailable for now",
                extra={"code": str(exc.code()), "details": exc.details()},
            )
        elif error.status >= 500:
            log.error(
                "service call failed", extra={"code": str(exc.code()), "details": exc.details()}
            )
        return JsonResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JsonResponse:
        log.exception("unhandled error in gateway")
        return JsonResponse(
            {"errcode": "M_UNKNOWN", "error": "Internal server error"}, status_code=500
        )
