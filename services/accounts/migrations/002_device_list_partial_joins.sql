-- Local users' joins to rooms joined with a partial state (send_join with
-- omit_members, still resyncing): when the room's resync has ended, the servers
-- the full state shows that the join's device lists did not go to (sent_to)
-- get them too.
CREATE TABLE accounts.device_list_partial_joins (
    event_id text PRIMARY KEY,
    user_id text NOT NULL,
    room_id text NOT NULL,
    sent_to text[] NOT NULL,
    created_ts bigint NOT NULL
);
