"""Prometheus metrics of the sender service (prefix ``mxfed_sender_``).

Queue depth per destination would be one time series per remote server, so
only totals, a histogram over destinations and the top few destinations are
exported; the full per-destination view is the ``QueryDestinations`` RPC
(``mxfed destinations``). Queue gauges describe the shared queues (the same
value on every replica: aggregate with ``max``); counters are per replica.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TRANSACTIONS = Counter(
    "mxfed_sender_transactions_total",
    "Transactions attempted, by outcome (sent, failed, refused, blocked, lease_lost)",
    ["outcome"],
)
GIVEN_TRANSACTIONS = Counter(
    "mxfed_sender_given_transactions_total",
    "Transactions made by ingest for an idle destination and sent while ingest recorded"
    " them, by what the recording did (recorded, not_recorded, statement_failed)",
    ["outcome"],
)
PDUS_SENT = Counter("mxfed_sender_pdus_sent_total", "PDUs delivered (200 received)")
EDUS_SENT = Counter("mxfed_sender_edus_sent_total", "EDUs delivered (200 received)")
PDUS_DROPPED = Counter(
    "mxfed_sender_pdus_dropped_total",
    "Queued PDUs dropped, by reason (catch_up, refused, blocked)",
    ["reason"],
)
EDUS_DROPPED = Counter(
    "mxfed_sender_edus_dropped_total",
    "Queued EDUs dropped, by reason (catch_up, refused, blocked, expired)",
    ["reason"],
)
EVENTS_INGESTED = Counter(
    "mxfed_sender_events_ingested_total", "Local events read from the events stream"
)
QUEUE_ROWS_INGESTED = Counter(
    "mxfed_sender_queue_rows_ingested_total", "PDU queue rows written (one per destination)"
)
EDUS_QUEUED = Counter("mxfed_sender_edus_queued_total", "EDU queue rows written", ["edu_type"])
TRANSACTION_SECONDS = Histogram(
    "mxfed_sender_transaction_seconds",
    "Time from sending a transaction to its answer",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
_FAST_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
INGEST_SECONDS = Histogram(
    "mxfed_sender_ingest_seconds",
    "Time to store one batch of the events stream (its events, queue rows and cursor)",
    buckets=_FAST_BUCKETS,
)
NEXT_TRANSACTIONS_SECONDS = Histogram(
    "mxfed_sender_next_transactions_seconds",
    "Time of one call recording delivered transactions and taking the next ones",
    buckets=_FAST_BUCKETS,
)
ACTIVE_DESTINATIONS = Gauge(
    "mxfed_sender_active_destinations", "Destinations this replica is delivering to now"
)
INGEST_LEADER = Gauge(
    "mxfed_sender_ingest_leader", "1 while this replica holds the ingest lock, else 0"
)
INGEST_POSITION = Gauge(
    "mxfed_sender_ingest_position", "Events stream position ingest has stored up to"
)
QUEUED_PDUS = Gauge("mxfed_sender_queued_pdus", "PDU queue rows over all destinations")
QUEUED_EDUS = Gauge("mxfed_sender_queued_edus", "EDU queue rows over all destinations")
DESTINATIONS_PENDING = Gauge(
    "mxfed_sender_destinations_pending", "Destinations with something queued"
)
DESTINATIONS_BACKED_OFF = Gauge(
    "mxfed_sender_destinations_backed_off", "Destinations currently in backoff"
)
TOP_QUEUE_DEPTH = Gauge(
    "mxfed_sender_top_queue_depth",
    "Queue rows of the destinations with the longest queues (top few only)",
    ["destination"],
)
OLDEST_QUEUED_AGE = Gauge(
    "mxfed_sender_oldest_queued_age_seconds",
    "Age of the oldest PDU or EDU still queued for any destination (0: nothing queued)",
)
