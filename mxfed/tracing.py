"""OpenTelemetry tracing across the parts: off unless ``tracing_otlp_endpoint`` is set.

When on, each process exports its spans over OTLP/HTTP (service name
``mxfed-<part>``) and traces follow a request through every hop:

- the gateway opens a server span per federation request (ASGI middleware,
  outermost, so the access log records its trace id);
- every internal gRPC call carries the W3C trace context (``traceparent``) in
  its metadata, with a client span on the caller and a server span on the
  callee (the grpc instrumentation's interceptors on every internal channel
  and server, :mod:`mxfed.internal_plane`);
- database work (asyncpg) and outbound HTTP (aiohttp: the federation client)
  are spans of whatever request caused them.

Sampling is parent-based: a trace started at the gateway (or at a part, for
a local actor's call) is kept with probability ``tracing_sample_ratio`` and
the parts follow that decision. Every log record carries ``trace_id`` and
``span_id`` while a span is current (:mod:`mxfed.logs`).

When off, nothing is installed: no middleware, no interceptors, no
instrumentation; the log formatter's check of the current span is all that
runs. The packages are the ``tracing`` extra (``pip install 'mxfed[tracing]'``).
"""

from __future__ import annotations

import logging
from typing import Any

from mxfed.config import Config
from mxfed.startup import StartupError

log = logging.getLogger(__name__)

_enabled = False


def enabled() -> bool:
    """Whether this process traces (set once by :func:`setup_tracing`)."""
    return _enabled


def setup_tracing(part: str, config: Config, exporter: Any = None) -> bool:
    """Install tracing for this process when configured; returns whether it is on.

    ``exporter`` replaces the OTLP exporter (tests pass an in-memory one).
    """
    global _enabled
    if not config.tracing_otlp_endpoint and exporter is None:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise StartupError(
            f"tracing_otlp_endpoint is set but the tracing packages are missing ({exc.name})",
            "install them (pip install 'mxfed[tracing]') or unset tracing_otlp_endpoint",
        ) from None
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"mxfed-{part}"}),
        sampler=ParentBased(TraceIdRatioBased(config.tracing_sample_ratio)),
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=config.tracing_otlp_endpoint))
        )
    trace.set_tracer_provider(provider)
    AsyncPGInstrumentor().instrument(tracer_provider=provider)
    AioHttpClientInstrumentor().instrument(tracer_provider=provider)
    _enabled = True
    log.info(
        "tracing on",
        extra={
            "endpoint": config.tracing_otlp_endpoint,
            "sample_ratio": config.tracing_sample_ratio,
        },
    )
    return True


def server_interceptors() -> list[Any]:
    """The grpc instrumentation's server interceptor (none when tracing is off)."""
    if not _enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def client_interceptors() -> list[Any]:
    """The grpc instrumentation's client interceptors (none when tracing is off)."""
    if not _enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())


def asgi_middleware(app: Any) -> Any:
    """``app`` inside the ASGI instrumentation's middleware (itself when tracing is off)."""
    if not _enabled:
        return app
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(app)


def flush() -> None:
    """Export what is buffered (at a clean stop)."""
    if not _enabled:
        return
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is not None:
        force_flush(5000)
