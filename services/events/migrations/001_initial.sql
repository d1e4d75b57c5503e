-- The events service's tables (schema "events").
--
-- PDU JSON is kept as text (the exact federation bytes, or their redacted
-- copy): text is cheaper to write than jsonb and never reformats numbers.

CREATE TABLE rooms (
    room_id text PRIMARY KEY,
    room_version text NOT NULL,
    create_event_id text,
    -- The state group of the room's current state (resolved over the forward
    -- extremities); NULL until the create event is stored.
    current_state_group bigint
);

-- One stream for everything streamed: accepted events and ephemeral items.
-- Positions are taken under a global advisory lock held to commit, so they
-- become visible in order (a reader never sees N+1 before N).
CREATE SEQUENCE stream_positions;
CREATE SEQUENCE state_group_ids;

CREATE TABLE events (
    nid bigserial UNIQUE,
    event_id text PRIMARY KEY,
    room_id text NOT NULL,
    type text NOT NULL,
    state_key text,
    sender text NOT NULL,
    -- content.membership of m.room.member events, for joined-server lookups.
    membership text,
    depth bigint NOT NULL,
    origin_server_ts bigint NOT NULL,
    pdu_json text NOT NULL,
    -- 1 accepted, 2 soft-failed, 3 rejected, 4 outlier (EventStatus values)
    status smallint NOT NULL,
    rejection_reason text NOT NULL DEFAULT '',
    redacted boolean NOT NULL DEFAULT false,
    stream_position bigint UNIQUE,
    -- State before the event and after it (after = before for non-state
    -- and rejected events). NULL for outliers.
    state_group_before bigint,
    state_group_after bigint,
    -- Servers with a joined member in the state before the event.
    servers_before text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX events_room_depth ON events (room_id, depth, nid);

-- auth_events edges, for auth chains (recursive CTE).
CREATE TABLE event_auth (
    event_id text NOT NULL,
    auth_id text NOT NULL,
    PRIMARY KEY (event_id, auth_id)
);

CREATE TABLE forward_extremities (
    room_id text NOT NULL,
    event_id text NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- A state group is its prev_group's state plus its delta rows; a group with
-- no prev_group holds a full snapshot. ``distance`` counts deltas since the
-- last snapshot, so reading a group touches at most that many groups.
CREATE TABLE state_groups (
    id bigint PRIMARY KEY,
    room_id text NOT NULL,
    prev_group bigint,
    distance integer NOT NULL
);

-- event_id NULL: the key is removed relative to prev_group.
CREATE TABLE state_group_entries (
    group_id bigint NOT NULL,
    type text NOT NULL,
    state_key text NOT NULL,
    event_id text
);
CREATE INDEX state_group_entries_group ON state_group_entries (group_id);

CREATE TABLE current_state (
    room_id text NOT NULL,
    type text NOT NULL,
    state_key text NOT NULL,
    event_id text NOT NULL,
    -- For m.room.member: the membership and the member's server.
    membership text,
    server text,
    PRIMARY KEY (room_id, type, state_key)
);
CREATE INDEX current_state_joined ON current_state (room_id, server)
    WHERE membership = 'join';

-- /send idempotency: the stored response per (origin, txn_id).
CREATE TABLE transactions (
    origin text NOT NULL,
    txn_id text NOT NULL,
    response_json text NOT NULL,
    received_ts bigint NOT NULL,
    PRIMARY KEY (origin, txn_id)
);

-- Typing notifications and read receipts received over federation.
CREATE TABLE ephemeral (
    stream_position bigint PRIMARY KEY,
    room_id text NOT NULL,
    kind text NOT NULL,           -- 'typing' | 'receipt'
    user_id text NOT NULL,
    typing boolean,
    expires_ts bigint,
    receipt_type text,
    event_id text,
    data_json text
);
CREATE INDEX ephemeral_room ON ephemeral (room_id, stream_position);

CREATE TABLE aliases (
    alias text PRIMARY KEY,
    room_id text NOT NULL,
    creator text NOT NULL,
    servers text[] NOT NULL
);

-- Client transaction ids of local senders (PerformSendEvent idempotency).
CREATE TABLE local_transactions (
    sender text NOT NULL,
    txn_id text NOT NULL,
    event_id text NOT NULL,
    stream_position bigint NOT NULL,
    PRIMARY KEY (sender, txn_id)
);
