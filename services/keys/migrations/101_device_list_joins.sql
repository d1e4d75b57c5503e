-- Device lists for servers a local user's join brings in 
-- (https://spec.matrix.org/v1.19/server-server-api/#device-management): the
-- keys process follows the events stream of local events (one replica at a
-- time, under an advisory lock) from this durable cursor, and records the
-- EDUs to send in the outbox in the same transaction as the cursor moves.

-- One row: the last stream position handled. It starts at 0 (the whole
-- stream): following live instead would miss the joins made while the keys
-- process waits for the events service at start-up; replaying old joins on
-- an existing deployment only re-sends device lists (receivers ignore or
-- resync them).
CREATE TABLE device_list_join_cursor (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    stream_position bigint NOT NULL
);
INSERT INTO device_list_join_cursor (only_row, stream_position) VALUES (true, 0);

-- A join whose user's devices (and cross-signing keys) are still to be
-- handed to the sender for `destinations`. The EDUs are built from the
-- devices as they are when handed over; a row is deleted once the sender
-- has stored them.
CREATE TABLE device_list_join_outbox (
    seq bigserial PRIMARY KEY,
    user_id text NOT NULL,
    room_id text NOT NULL,
    event_id text NOT NULL,
    destinations text[] NOT NULL,
    created_ts bigint NOT NULL,
    UNIQUE (event_id)
);
