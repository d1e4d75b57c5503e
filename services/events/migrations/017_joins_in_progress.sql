-- Rooms a local user is joining through a remote server, one row per room while
-- the join runs. A resident may send the room's next PDUs as soon as it has
-- answered our send_join, before the join is stored: /send waits for the join
-- to end (on any replica) instead of dropping them as PDUs of an unknown room.
-- A replica that dies mid-join leaves its row; readers ignore rows older than
-- the wait they would make.
CREATE TABLE joins_in_progress (
    room_id text PRIMARY KEY,
    started_ts bigint NOT NULL
);
