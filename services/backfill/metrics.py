"""Prometheus metrics of the backfill service (prefix ``mxfed_backfill_``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SERVED_REQUESTS = Counter(
    "mxfed_backfill_served_requests_total",
    "History requests answered for other servers, by endpoint and outcome",
    ["endpoint", "outcome"],
)
SERVED_EVENTS = Counter(
    "mxfed_backfill_served_events_total",
    "Events returned to other servers, by endpoint",
    ["endpoint"],
)
FETCHED_EVENTS = Counter(
    "mxfed_backfill_fetched_events_total",
    "Events fetched from other servers, by operation and outcome (stored, refused, known)",
    ["operation", "outcome"],
)
FETCH_FAILURES = Counter(
    "mxfed_backfill_fetch_failures_total",
    "Failed requests to other servers, by operation",
    ["operation"],
)
FETCH_SECONDS = Histogram(
    "mxfed_backfill_fetch_seconds",
    "Time per fetch operation (requests, verification and storage)",
    ["operation"],
)
