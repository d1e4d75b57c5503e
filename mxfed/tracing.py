"""OpenTelemetry tracing across the parts: off unless ``tracing_otlp_endpoint`` is set.

When on, each process exports its spans over OTLP/HTTP (service name
``mxfed-<part>``; in a single-process run each part's spans still carry its
own) and traces follow a request through every hop:

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

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from mxfed.config import Config
from mxfed.logs import CURRENT_PART
from mxfed.startup import StartupError

log = logging.getLogger(__name__)

# The installed provider (:func:`_part_tracer_provider`): None while tracing is off.
_parts: Any = None


def enabled() -> bool:
    """Whether this process traces (set once by :func:`setup_tracing`)."""
    return _parts is not None


def setup_tracing(part: str, config: Config, exporter: Any = None) -> bool:
    """Install tracing for this process when configured; returns whether it is on.

    ``exporter`` replaces the OTLP exporter (tests pass an in-memory one). In a
    single-process run every part calls this: the first installs tracing, each adds
    its own service name (:func:`_part_tracer_provider`).
    """
    global _parts
    if not config.tracing_otlp_endpoint and exporter is None:
        return False
    if _parts is not None:
        _parts.add_part(part)
        return True
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.sdk.trace import SpanProcessor
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise StartupError(
            f"tracing_otlp_endpoint is set but the tracing packages are missing ({exc.name})",
            "install them (pip install 'mxfed[tracing]') or unset tracing_otlp_endpoint",
        ) from None
    processor: SpanProcessor
    if exporter is not None:
        processor = SimpleSpanProcessor(exporter)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=config.tracing_otlp_endpoint))
    _parts = _part_tracer_provider(processor, config.tracing_sample_ratio, part)
    trace.set_tracer_provider(_parts)
    AsyncPGInstrumentor().instrument(tracer_provider=_parts)
    AioHttpClientInstrumentor().instrument(tracer_provider=_parts)
    log.info(
        "tracing on",
        extra={
            "endpoint": config.tracing_otlp_endpoint,
            "sample_ratio": config.tracing_sample_ratio,
        },
    )
    return True


def _part_tracer_provider(processor: Any, sample_ratio: float, first_part: str) -> Any:
    """A tracer provider with one SDK provider per part (service name ``mxfed-<part>``)
    sharing ``processor``: a span goes to the provider of the part whose task starts it
    (:data:`mxfed.logs.CURRENT_PART`, set by each part's task in a single-process run;
    otherwise this process's one part). Instrumentations and the grpc interceptors take
    their tracers once, so the part is chosen per span, not per tracer."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    class PartTracer(trace.Tracer):
        def __init__(self, parts: PartTracerProvider, args: Any, kwargs: Any) -> None:
            self._parts = parts
            self._args = args
            self._kwargs = kwargs
            self._by_part: dict[str, trace.Tracer] = {}

        def _tracer(self) -> trace.Tracer:
            part = self._parts.part()
            tracer = self._by_part.get(part)
            if tracer is None:
                provider = self._parts.providers[part]
                tracer = self._by_part[part] = provider.get_tracer(*self._args, **self._kwargs)
            return tracer

        def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
            return self._tracer().start_span(*args, **kwargs)

        def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
            return self._tracer().start_as_current_span(*args, **kwargs)

    class PartTracerProvider(trace.TracerProvider):
        def __init__(self) -> None:
            self.providers: dict[str, TracerProvider] = {}
            self.add_part(first_part)

        def add_part(self, part: str) -> None:
            if part not in self.providers:
                provider = TracerProvider(
                    resource=Resource.create({"service.name": f"mxfed-{part}"}),
                    sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
                )
                provider.add_span_processor(processor)
                self.providers[part] = provider

        def part(self) -> str:
            part = CURRENT_PART.get()
            return part if part in self.providers else first_part

        def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
            return PartTracer(self, args, kwargs)

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return bool(processor.force_flush(timeout_millis))

    return PartTracerProvider()


def server_interceptors() -> list[Any]:
    """The grpc instrumentation's server interceptor (none when tracing is off)."""
    if _parts is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def client_interceptors() -> list[Any]:
    """The grpc instrumentation's client interceptors (none when tracing is off)."""
    if _parts is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())


def asgi_middleware(app: Any) -> Any:
    """``app`` inside the ASGI instrumentation's middleware (itself when tracing is off)."""
    if _parts is None:
        return app
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(app)


def flush() -> None:
    """Export what is buffered (at a clean stop)."""
    if _parts is None:
        return
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is not None:
        force_flush(5000)


# Carrying a trace across the event stream -------------------------------------
#
# A local event is delivered by the sender long after the call that built it,
# from the event stream: the events part notes the building call's
# traceparent by event id (:func:`note_event`), puts it on the stream item,
# and the sender notes it by stream position; its delivery span continues the
# first event's trace and links the others (:func:`delivery_span`). Both notes
# are bounded and best effort (another replica's events carry none).

_NOTES_SIZE = 10_000
_event_notes: dict[str, str] = {}
_position_notes: dict[int, str] = {}


def _bounded_put(notes: dict[Any, str], key: Any, value: str) -> None:
    notes[key] = value
    if len(notes) > _NOTES_SIZE:
        del notes[next(iter(notes))]


def current_traceparent() -> str:
    """The W3C traceparent of the current span ("" when tracing is off or none is current)."""
    if _parts is None:
        return ""
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent", "")


@contextlib.contextmanager
def continued(traceparent: str) -> Iterator[None]:
    """Inside the block, the trace of ``traceparent`` is current (a call's trace carried
    in its message rather than its metadata); nothing when tracing is off or it is empty."""
    if _parts is None or not traceparent:
        yield
        return
    from opentelemetry import context
    from opentelemetry.propagate import extract

    token = context.attach(extract({"traceparent": traceparent}))
    try:
        yield
    finally:
        context.detach(token)


def note_event(event_id: str) -> None:
    """Remember the current trace as the one that built ``event_id``."""
    traceparent = current_traceparent()
    if traceparent:
        _bounded_put(_event_notes, event_id, traceparent)


def traceparent_of_event(event_id: str) -> str:
    # Read, not taken: every subscriber of the stream (the sender, keys...) gets it.
    return _event_notes.get(event_id, "") if _parts is not None else ""


def note_position(position: int, traceparent: str) -> None:
    if _parts is not None and traceparent:
        _bounded_put(_position_notes, position, traceparent)


def delivery_span(name: str, positions: list[int]) -> Any:
    """A span for delivering the events at ``positions``: a child of the first one's
    trace, linked to the others'; a no-op context when tracing is off."""
    if _parts is None:
        return contextlib.nullcontext()
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    contexts = []
    for position in positions:
        traceparent = _position_notes.pop(position, "")
        if traceparent:
            span_context = trace.get_current_span(
                extract({"traceparent": traceparent})
            ).get_span_context()
            if span_context.is_valid:
                contexts.append(span_context)
    tracer = trace.get_tracer("mxfed.sender")
    parent = trace.set_span_in_context(trace.NonRecordingSpan(contexts[0])) if contexts else None
    return tracer.start_as_current_span(
        name,
        context=parent,
        links=[trace.Link(c) for c in contexts[1:]],
        kind=trace.SpanKind.PRODUCER,
    )
