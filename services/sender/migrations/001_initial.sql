-- Where ingest has got to in the events service's stream of local events.
-- One row; advanced in the same transaction as the queue rows it produced.
CREATE TABLE ingest_cursor (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    stream_position bigint NOT NULL
);
INSERT INTO ingest_cursor (stream_position) VALUES (0);

-- Each outbound event once, however many destinations it goes to.
-- stream_position is the events service's position: queue order.
CREATE TABLE pdus (
    stream_position bigint PRIMARY KEY,
    event_id text NOT NULL,
    room_id text NOT NULL,
    pdu_json bytea NOT NULL,
    queued_ts bigint NOT NULL
);

-- Per-destination state: backoff, lease, the transaction in flight.
CREATE TABLE destinations (
    destination text PRIMARY KEY,
    -- the replica delivering to it (NULL: nobody); database clock
    lease_owner text,
    lease_expires_at timestamptz,
    -- the transaction being sent: its id and origin_server_ts; its contents
    -- are the queue rows tagged with txn_id
    pending_txn_id text,
    pending_txn_ts bigint,
    txn_counter bigint NOT NULL DEFAULT 0,
    -- backoff (ms since the epoch / ms)
    retry_until_ts bigint NOT NULL DEFAULT 0,
    retry_interval_ms bigint NOT NULL DEFAULT 0,
    failures integer NOT NULL DEFAULT 0,
    last_error text,
    last_success_ts bigint NOT NULL DEFAULT 0
);
CREATE INDEX destinations_lease_owner ON destinations (lease_owner);

-- The PDU queue: one row per (destination, event).
CREATE TABLE pdu_queue (
    destination text NOT NULL,
    stream_position bigint NOT NULL,
    txn_id text,
    PRIMARY KEY (destination, stream_position)
);
CREATE INDEX pdu_queue_position ON pdu_queue (stream_position);

-- The EDU queue: one row per (destination, EDU). Volatile EDUs (typing,
-- receipts) are dropped on long outages; keyed ones replace an older unsent
-- EDU with the same key (the newest typing state of a user in a room).
CREATE TABLE edu_queue (
    id bigserial PRIMARY KEY,
    destination text NOT NULL,
    edu_type text NOT NULL,
    content_json bytea NOT NULL,
    volatile boolean NOT NULL,
    edu_key text,
    txn_id text,
    queued_ts bigint NOT NULL
);
CREATE INDEX edu_queue_destination ON edu_queue (destination, id);

-- Live sender replicas; destinations are spread over them by rendezvous
-- hashing on this list.
CREATE TABLE replicas (
    instance_id text PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
);
