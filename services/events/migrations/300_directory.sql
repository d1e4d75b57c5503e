-- The public room directory (directory sub-component of the events service).
CREATE TABLE published_rooms (
    room_id text PRIMARY KEY,
    -- Appservice network id; '' for the server's own directory.
    network_id text NOT NULL DEFAULT '',
    published_ts bigint NOT NULL
);

-- Rooms of a user (QueryRoomsOfUser): member rows by user id.
CREATE INDEX current_state_members_by_user ON current_state (state_key)
    WHERE type = 'm.room.member';
