"""Structured logs: one JSON object (or one key=value line) per record.

Fields passed with ``extra={...}`` become fields of the record, so call
sites log facts (``log.info("restarted", extra={"part": "events"})``) rather
than formatted sentences. While a trace span is current (``mxfed.tracing``),
every record also carries ``trace_id`` and ``span_id``.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson

try:  # tracing (mxfed.tracing): every record names the current trace and span
    from opentelemetry.trace import get_current_span as _get_current_span
except ImportError:  # pragma: no cover - the API comes with FastAPI
    _get_current_span = None  # type: ignore[assignment]

_STANDARD_ATTRIBUTES = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()) | {
    "message",
    "asctime",
    "taskName",
    # uvicorn's copy of the message with terminal colour codes.
    "color_message",
}


def _span_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, as hex; None without one."""
    if _get_current_span is None:
        return None
    context = _get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def current_trace_id() -> str | None:
    ids = _span_ids()
    return ids[0] if ids else None


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in record.__dict__.items():
        if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
            fields[key] = value
    ids = _span_ids()
    if ids is not None:
        fields.setdefault("trace_id", ids[0])
        fields.setdefault("span_id", ids[1])
    if record.exc_info:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


# In a single-process run (``mxfed run --single-process``) every part's task sets its
# name here, so each record names the part that wrote it whatever handler is installed.
CURRENT_PART: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "mxfed_part", default=None
)


class JsonFormatter(logging.Formatter):
    def __init__(self, part: str) -> None:
        super().__init__()
        self.part = part

    def format(self, record: logging.LogRecord) -> str:
        fields = {"part": CURRENT_PART.get() or self.part, **_fields(record)}
        return orjson.dumps(fields, default=str).decode()


class KeyValueFormatter(logging.Formatter):
    def __init__(self, part: str) -> None:
        super().__init__()
        self.part = part

    def format(self, record: logging.LogRecord) -> str:
        fields = {"part": CURRENT_PART.get() or self.part, **_fields(record)}
        return " ".join(f"{key}={_quote(value)}" for key, value in fields.items())


def _quote(value: Any) -> str:
    text = str(value)
    if not text or any(ch in text for ch in ' "=\n'):
        return orjson.dumps(text).decode()
    return text


def setup_logging(part: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(part) if fmt == "json" else KeyValueFormatter(part))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter at INFO drowns the service's own records (uvicorn's
    # start and stop lines; the gateway logs its own "gateway starting", "ready"
    # and access records; pgserver's initdb and pg_ctl output).
    for noisy in ("uvicorn.access", "uvicorn.error", "asyncio", "aiohttp.access", "pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
