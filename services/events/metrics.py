"""Prometheus metrics of the events service (prefix ``mxfed_events_``)."""

from __future__ import annotations

from collections.abc import Mapping

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
STREAM_ROUND_SECONDS = Histogram(
    "mxfed_events_stream_round_seconds",
    "One round giving committed rows their stream positions (under the stream lock)",
)
WRITES_ON_KEPT_HEADS = Counter(
    "mxfed_events_writes_on_kept_heads_total",
    "Writes that were their own transaction (lone local sends, transactions of groups on"
    " kept room heads), by who gave their stream positions: the write itself (the stream"
    " lock was free) or a round after it (the lock was taken: rounds contend for it)",
    ["positioned_by"],
)
STREAMED_TRANSACTIONS = Counter(
    "mxfed_events_streamed_room_transactions_total",
    "Room transactions whose events are streamed, by who gave their stream positions: the"
    " transaction itself just before its commit (the stream lock was free) or a round after"
    " it (the lock was taken)",
    ["positioned_by"],
)
LOCAL_EVENTS = Counter("mxfed_events_local_events_total", "Events built and stored here", ["type"])
LOCAL_SEND_GROUPS = Histogram(
    "mxfed_events_local_send_group_size",
    "Local sends written together into one room (in one database transaction)",
    buckets=(1, 2, 5, 10, 20, 50, 100),
)
LOCAL_SEND_STALE_HEADS = Counter(
    "mxfed_events_local_send_stale_heads_total",
    "Lone local sends, or transactions of groups of sends, opened on the room heads kept"
    " from the last sends and done again on the heads read under the locks (another writer"
    " had moved one, or a transaction id was used before)",
)
LOCAL_SEND_SECONDS = Histogram(
    "mxfed_events_local_send_seconds",
    "A local send from its request to its answer (PerformSendEvent, or one send of"
    " StreamSendEvents)",
)
LOCAL_SEND_STAGE_SECONDS = Histogram(
    "mxfed_events_local_send_stage_seconds",
    "Time per stage of a local send, or of sends written together: room_open (a pooled"
    " connection, BEGIN with the room's lock, the head), build (and sign; with others: and"
    " add), store (add to the batch), write, commit, stream_round; policy_server (its"
    " signature asked, the lock let go)",
    ["stage"],
)
LOCAL_SENDS_WAITING = Gauge(
    "mxfed_events_local_sends_waiting",
    "Local sends waiting for their room's current write to end (they go together next)",
)
LOCAL_SEND_GROUPS_WAITING = Gauge(
    "mxfed_events_local_send_groups_waiting",
    "Rooms' groups of local sends waiting for the next transaction of groups (the one"
    " before is being written)",
)
TRANSACTIONS_WAITING_FOR_JOINS = Gauge(
    "mxfed_events_transactions_waiting_for_joins",
    "Received transactions with PDUs of rooms a local user is joining, waiting for the join",
)
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
RESYNC_REJUDGED = Counter(
    "mxfed_events_resync_rejudged_total",
    "Events of partial-state windows judged differently once the full state was known "
    "(to_rejected: accepted or soft-failed before; rejected_to_accepted; "
    "rejected_to_soft_failed; accepted_to_soft_failed)",
    ["change"],
)
RESYNC_SECONDS = Histogram(
    "mxfed_events_resync_seconds",
    "Time from a partial-state join to the room's full state, per resync stage "
    "(fetch: /state_ids, downloads and checks; checks: steps 1-3 of the fetched events; "
    "store; total)",
    ["stage"],
)
# Our joins through another server (full or partial), per stage of the attempt.
JOIN_SECONDS = Histogram(
    "mxfed_events_remote_join_seconds",
    "Time of a join through another server, per stage (make_join; send_join: until its answer "
    "is decoded; checks: steps 1 and 3 of the answer's events, and waiting for step 2 when the "
    "answer is not stored meanwhile; auth_fetch: auth events it left out; store: outliers, the "
    "join and the write, while the signatures are verified when the answer lacks nothing)",
    ["stage"],
)

# Inbound PDUs accepted into a transaction and not yet stored (waiting for a
# gap fill, a room's lock or its batch). Rooms are labels only for the
# BACKLOG_TOP busiest, refreshed as the backlog changes, so at most that many
# series exist besides the total.
BACKLOG_TOP = 5
INBOUND_BACKLOG = Gauge(
    "mxfed_events_inbound_backlog_pdus", "Inbound PDUs received and not yet stored, all rooms"
)
INBOUND_BACKLOG_TOP = Gauge(
    "mxfed_events_inbound_backlog_top_pdus",
    f"Inbound PDUs not yet stored, for the {BACKLOG_TOP} rooms with the most",
    ["room_id"],
)


class InboundBacklog:
    """Counts PDUs in flight per room; exports the total and the top rooms."""

    def __init__(self) -> None:
        self.rooms: dict[str, int] = {}
        self._shown: set[str] = set()

    def add(self, counts: Mapping[str, int]) -> None:
        """``counts``: PDUs per room (the rooms of a transaction, exported once)."""
        for room_id, count in counts.items():
            self.rooms[room_id] = self.rooms.get(room_id, 0) + count
        self._export()

    def done(self, counts: Mapping[str, int]) -> None:
        for room_id, count in counts.items():
            left = self.rooms.get(room_id, 0) - count
            if left > 0:
                self.rooms[room_id] = left
            else:
                self.rooms.pop(room_id, None)
        self._export()

    def _export(self) -> None:
        INBOUND_BACKLOG.set(sum(self.rooms.values()))
        top = sorted(self.rooms.items(), key=lambda item: -item[1])[:BACKLOG_TOP]
        shown = {room_id for room_id, _ in top}
        for room_id in self._shown - shown:
            INBOUND_BACKLOG_TOP.remove(room_id)
        for room_id, count in top:
            INBOUND_BACKLOG_TOP.labels(room_id).set(count)
        self._shown = shown


BACKLOG = InboundBacklog()
