-- Device lists for servers a local user's join brings in (edus.md §5): the
-- keys process follows the events stream of local events (one replica at a
-- time, under an advisory lock) from this durable cursor, and records the
-- EDUs to send in the outbox in the same transaction as the cursor moves.

-- One row. NULL: never consumed; the first run follows the stream live
-- instead of replaying every join ever made.
CREATE TABLE device_list_join_cursor (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    stream_position bigint
);
INSERT INTO device_list_join_cursor (only_row, stream_position) VALUES (true, NULL);

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
