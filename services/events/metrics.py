"""Prometheus metrics of the events service (prefix ``mxfed_events_``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
# Partial-state joins (send_join with omit_members) and their resyncs.
PARTIAL_STATE_ROOMS = Gauge(
    "mxfed_events_partial_state_rooms",
    "Rooms joined with a partial state whose resync has not finished (this replica's view)",
)
RESYNC_MEMBERS = Gauge(
    "mxfed_events_resync_members",
    "Member events of rooms being resynced: known now, and expected once /state_ids answered",
    ["kind"],
)
RESYNCS = Counter(
    "mxfed_events_resyncs_total",
    "Resync attempts of partial-state rooms, by result",
    ["result"],
)
RESYNC_SECONDS = Histogram(
    "mxfed_events_resync_seconds",
    "Time from a partial-state join to the room's full state, per resync stage",
    ["stage"],
)
