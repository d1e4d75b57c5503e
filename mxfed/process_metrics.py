"""Metrics every mxfed process exports, for the alerts in contrib/prometheus/alerts.yml.

- Internal gRPC, both ends (interceptors installed by :mod:`mxfed.internal_plane`):
  ``mxfed_grpc_server_handled_total{method,code}`` and
  ``mxfed_grpc_server_handling_seconds{method}``, and the same as
  ``mxfed_grpc_client_*`` for the calls a process makes. ``method`` is the
  full RPC name (a fixed set, ~100); ``code`` a gRPC status name.
- The database pool: ``mxfed_db_pool_size``, ``mxfed_db_pool_in_use``,
  ``mxfed_db_pool_max`` and ``mxfed_db_pool_acquire_seconds`` (the wait for a
  connection), in :mod:`mxfed.pool_metrics` (so the gateway, which has no
  database, does not load the database driver).
- Event-loop lag: ``mxfed_event_loop_lag_seconds`` (how late a timer fired,
  measured every half second; a blocked loop shows here first).

Labels are never remote input (no room or server names), so their number is bounded.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

SERVER_HANDLED = Counter(
    "mxfed_grpc_server_handled_total",
    "Internal RPCs served, by method and status",
    ["method", "code"],
)
SERVER_SECONDS = Histogram(
    "mxfed_grpc_server_handling_seconds",
    "Time to serve an internal RPC (unary: to the reply; streaming: to its end)",
    ["method"],
    buckets=_LATENCY_BUCKETS,
)
CLIENT_HANDLED = Counter(
    "mxfed_grpc_client_handled_total",
    "Internal RPCs made, by method and status",
    ["method", "code"],
)
CLIENT_SECONDS = Histogram(
    "mxfed_grpc_client_handling_seconds",
    "Time an internal unary RPC took, as its caller saw it",
    ["method"],
    buckets=_LATENCY_BUCKETS,
)
LOOP_LAG = Gauge("mxfed_event_loop_lag_seconds", "How late the last event-loop timer fired")
LOOP_LAG_SECONDS = Histogram(
    "mxfed_event_loop_lag_histogram_seconds",
    "How late event-loop timers fire (sampled every half second)",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 5),
)


# gRPC ---------------------------------------------------------------------------


def _code_of(error: BaseException | None) -> str:
    if error is None:
        return "OK"
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN"


def _server_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if error is None:
        return "OK"
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN"


def _timed_handler(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    seconds = SERVER_SECONDS.labels(method)

    def record(
        context: grpc.aio.ServicerContext, started: float, error: BaseException | None
    ) -> None:
        seconds.observe(time.perf_counter() - started)
        SERVER_HANDLED.labels(method, _server_code(context, error)).inc()

    if handler.unary_unary is not None or handler.stream_unary is not None:
        kind = "unary_unary" if handler.unary_unary is not None else "stream_unary"
        inner = getattr(handler, kind)

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                return await inner(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                record(context, started, error)

        return handler._replace(**{kind: unary})
    kind = "unary_stream" if handler.unary_stream is not None else "stream_stream"
    inner_stream = getattr(handler, kind)
    if inspect.isasyncgenfunction(inner_stream):

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                async for item in inner_stream(request, context):
                    yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                record(context, started, error)

        return handler._replace(**{kind: streaming})

    async def writing(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return await inner_stream(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            record(context, started, error)

    return handler._replace(**{kind: writing})


class ServerMetrics(grpc.aio.ServerInterceptor):
    """Counts and times every RPC a server handles (handlers wrapped once per method)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            wrapped = self._wrapped[method] = _timed_handler(handler, method)
        return wrapped


def _method_name(details: grpc.aio.ClientCallDetails) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


class ClientUnaryMetrics(grpc.aio.UnaryUnaryClientInterceptor):
    """Counts and times every unary call a channel makes."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = _method_name(client_call_details)
        started = time.perf_counter()
        call = await continuation(client_call_details, request)
        error: BaseException | None = None
        try:
            await call
        except asyncio.CancelledError:
            self._record(method, started, "CANCELLED")
            raise
        except Exception as exc:  # the caller's own await raises it again
            error = exc
        self._record(method, started, _code_of(error))
        return call

    @staticmethod
    def _record(method: str, started: float, code: str) -> None:
        CLIENT_SECONDS.labels(method).observe(time.perf_counter() - started)
        CLIENT_HANDLED.labels(method, code).inc()


class ClientStreamMetrics(grpc.aio.UnaryStreamClientInterceptor):
    """Counts the server-streaming calls a channel makes, by how they ended."""

    async def intercept_unary_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = _method_name(client_call_details)
        call = await continuation(client_call_details, request)

        def done(finished: Any) -> None:
            code = "CANCELLED" if finished.cancelled() else "DONE"
            CLIENT_HANDLED.labels(method, code).inc()

        call.add_done_callback(done)
        return call


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    return [ClientUnaryMetrics(), ClientStreamMetrics()]


# The event loop ---------------------------------------------------------------


async def measure_loop_lag(interval: float = 0.5) -> None:
    """Forever: sleep ``interval`` and record how late the wake-up came."""
    loop = asyncio.get_running_loop()
    while True:
        expected = loop.time() + interval
        await asyncio.sleep(interval)
        lag = max(0.0, loop.time() - expected)
        LOOP_LAG.set(lag)
        LOOP_LAG_SECONDS.observe(lag)
