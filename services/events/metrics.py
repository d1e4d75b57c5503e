"""Prometheus metrics of the events service (prefix ``mxfed_events_``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

PDUS_RECEIVED = Counter(
    "mxfed_events_pdus_received_total",
    "PDUs received in transactions and input batches, by outcome",
    ["outcome"],
)
EDUS_RECEIVED = Counter(
    "mxfed_events_edus_received_total",
    "EDUs received, by type and outcome",
    ["edu_type", "outcome"],
)
TRANSACTIONS = Counter(
    "mxfed_events_transactions_total", "InputTransaction calls, by result", ["result"]
)
STAGE_SECONDS = Histogram(
    "mxfed_events_input_stage_seconds",
    "Time spent per receive stage for one transaction or batch",
    ["stage"],
)
LOCAL_EVENTS = Counter("mxfed_events_local_events_total", "Events built and stored here", ["type"])
STREAM_SUBSCRIBERS_LAGGING = Counter(
    "mxfed_events_stream_subscribers_lagging_total",
    "Times a stream subscriber fell behind and went back to database replay",
)
POLICY_ASKS = Counter(
    "mxfed_events_policy_server_asks_total",
    "Signatures asked of rooms' policy servers (POST /_matrix/policy/v1/sign), by result",
    ["result"],
)
