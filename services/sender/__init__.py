"""Sender service: durable per-destination queues of PDUs and EDUs, sent as transactions.

Shards on: destination server name. Replicas split the destinations between
them through leases in PostgreSQL and rebalance when one dies or joins.

The originating server must deliver each of its PDUs to every server in the
room, one transaction in flight per destination, the same txn id retried
until it gets a 200 (https://spec.matrix.org/v1.19/server-server-api/#transactions). This package
does that for every replica count, surviving crashes without losing or
duplicating anything.

**Ingest** (``ingest.py``). One replica at a time — the holder of a
PostgreSQL advisory lock — follows the events service's durable stream of
events sent by local users (``StreamEventBatches(local_senders_only)``: the
items of ``StreamEvents``, those ready together in one message), from a
cursor stored in ``sender.ingest_cursor``. Each stream item carries
``servers_before``: the servers with joined members in the state before the
event (so the server of a user being kicked still gets the kick). For each
batch, in one database transaction on the lock-holding connection, it stores
each event's JSON once (``pdus``), one small row per destination
(``pdu_queue``, our own server left out), and the advanced cursor. A crash
replays from the stored cursor; inserts are ``ON CONFLICT DO NOTHING``; so
nothing is lost or queued twice. A NOTIFY on commit wakes the replicas. When
this replica's worker for a destination waits idle, ingest makes that
destination's transaction from the batch itself (when it fits in one) and hands
it over before the statement: the worker sends it at once, while the same
statement records its last 200 and this transaction as the destination's
pending one, exactly as if taken (below). An event to an idle destination is
on the wire as soon as ingest reads it; the worker waits for the statement
only before it records anything about that transaction (a failure is retried
with the same id and contents). If the statement finds the lease gone (the
replicas are then woken for the destination) or fails, the events stay queued
(or are read again from the cursor) and go again in a later transaction:
delivered at least once, as on every other path.

**Commits.** The ingest statement and the workers' take-and-record calls
commit without waiting for the WAL flush (``storage._replayable_commit``).
Only a crash of the PostgreSQL server can lose such a commit (a crash of any
process, even ``kill -9``, cannot), and what they write can be had again.
The events come again from the events stream (the cursor goes back with them),
a 200 not recorded leaves its transaction pending and resent under its id, and
PDUs taken or handed over but not recorded stay queued for a later transaction
(the receiver ignores PDUs it already has). A call that takes queued EDUs into a
new transaction is flushed before that transaction can leave: EDUs were
acknowledged to whoever queued them and are not sent under a second id.

**EDUs** (``queues.py``) come in through ``PerformSendEdus``: typing and read
receipts go to the servers in the room (``QueryServersInRoom``), device list
and signing key updates to the servers given or those of the rooms given,
to-device messages split per target server (one ``m.direct_to_device`` EDU
per server). Typing and receipts are *volatile* (dropped on long outages; a
newer typing state replaces an unsent older one), the others *durable*.
Presence is off.

**Transactions** (``delivery.py``, ``storage.py``). A worker task per active
destination asks storage for the next transaction: the pending one if there
is one, else the oldest ≤ 50 PDUs and ≤ 100 EDUs in queue order, tagged with a
new txn id ``<ms>-<n>`` (``n`` a persisted per-destination counter). The
txn id and its ``origin_server_ts`` are recorded *before* the request goes
out (committed, for PDUs alone maybe not yet flushed: see Commits), and the
contents are the tagged rows, which never change — so a retry after a
failure, a restart or a takeover by another replica resends the same txn id
with the same contents, which the receiver deduplicates. On 200 the
tagged rows are deleted and the destination's last success recorded (with
the next transaction taken, by the worker or by ingest, or alone once the
worker has waited ``completion_linger`` for one). Only a
definitive refusal of *this* transaction (400 ``M_BAD_JSON``/``M_NOT_JSON``,
413 ``M_TOO_LARGE``: a retry with the same id would be refused forever and
block the queue) gets its contents logged and dropped; every other failure
backs off and retries (``backoff.py``). Workers bound concurrent requests with one
semaphore but wait only for their own destination: a dead destination never
delays another. The workers' database calls are gathered: one
``sender.next_transactions`` call records the 200s of many destinations and
takes the next transactions of many (each PDU's JSON returned once), so a
fan-out to a thousand destinations costs a few round trips, not thousands.

**Leases** (``leases.py``). Replicas heartbeat into ``sender.replicas``; a
destination's preferred replica is the rendezvous-hash winner over the live
list (each takes ~1/N; a joining or leaving replica moves only its share).
That is advice; exclusivity comes from the destination's lease row, taken
only when free or expired (``FOR UPDATE SKIP LOCKED``), renewed with each
heartbeat, expiring ``sender_lease_seconds`` (12 s) after its holder dies, and checked under the row
lock in the same database transaction that starts each transaction. A
replica gives a destination up (finishing its current request first) when the
list says it belongs elsewhere, or when its queue stays empty for a while.

**Backoff** (``backoff.py``). Connection errors, timeouts, 5xx, 401 and 429
are failures: the destination waits ``sender_min_retry_interval``, then
about twice as long each time with jitter, up to
``sender_max_retry_interval``; a 429's ``Retry-After`` is honoured.
``PerformServerUp`` (the gateway calls it when that server authenticates a
request to us) resets the backoff and wakes the queue at once.

**Catch-up**. A destination that was down gets what it missed, in order,
when it returns — its rows simply waited. To bound a long outage, a
backed-off destination with more than 500 unsent PDUs, or backed off for an
hour or more, keeps only the newest 10 unsent PDUs of each room (and drops
its volatile EDUs): small outages lose nothing, and a long one costs the
remote one ``get_missing_events`` per room to fill the gap from the events
it does get, whose ``prev_events`` lead back into what it missed. (500 and 10
are ``sender_catch_up_max_pdus`` and ``sender_catch_up_events_per_room``.)

**Observability** (``metrics.py``): ``mxfed_sender_*`` Prometheus metrics
(totals and the top few queues; per-destination detail only through the
``QueryDestinations`` RPC and ``mxfed destinations``).
"""
