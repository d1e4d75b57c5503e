-- Rooms joined with a partial state (send_join with omit_members, the
-- answer had members_omitted): the state before our join lacks most member
-- events until the background resync has fetched the full state at the join.
CREATE TABLE partial_state_rooms (
    room_id text PRIMARY KEY,
    join_event_id text NOT NULL,
    -- The resident that answered, then the answer's servers_in_room.
    joined_via text NOT NULL,
    servers text[] NOT NULL,
    members_expected bigint NOT NULL DEFAULT 0,
    resync_state smallint NOT NULL DEFAULT 2,  -- ResyncState values
    resync_attempts integer NOT NULL DEFAULT 0,
    resync_error text NOT NULL DEFAULT '',
    joined_ts bigint NOT NULL
);

-- Events whose state was computed from a partial state (our join and every
-- event placed after it while the room was partial): re-placed on the full
-- state and re-checked when the resync finishes.
CREATE TABLE partial_state_events (
    event_id text PRIMARY KEY,
    room_id text NOT NULL
);
CREATE INDEX partial_state_events_room ON partial_state_events (room_id);
