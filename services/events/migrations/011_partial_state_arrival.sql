-- The order in which events were placed on a partial state (their arrival):
-- the resync replays it on the full state to judge soft failure against the
-- room's current state as it was when each event arrived.
ALTER TABLE partial_state_events ADD COLUMN placed bigint GENERATED ALWAYS AS IDENTITY;
