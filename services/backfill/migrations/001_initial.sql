-- The backfill service's tables (schema "backfill"): what failed, so we back off.

-- A backward extremity (an event we lack) that no server would give us.
CREATE TABLE failed_pulls (
    room_id text NOT NULL,
    event_id text NOT NULL,
    failures integer NOT NULL,
    last_attempt_ts bigint NOT NULL,
    next_attempt_ts bigint NOT NULL,
    last_error text NOT NULL DEFAULT '',
    PRIMARY KEY (room_id, event_id)
);

-- A server that failed a history request (unreachable, 5xx, refused).
CREATE TABLE failed_servers (
    server_name text PRIMARY KEY,
    failures integer NOT NULL,
    next_attempt_ts bigint NOT NULL,
    last_error text NOT NULL DEFAULT ''
);
