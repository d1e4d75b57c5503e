-- insert_few_then_position (migrations 018-021) as before, but a write that is its own
-- transaction takes the stream lock, when it is free, before it inserts its events, and
-- inserts them with their stream positions: before, it inserted them pending and then
-- gave the positions, which rewrote each new event row at once (the whole row, its JSON
-- included, a second time in the WAL and in every index of events.events, and a dead
-- row for VACUUM). Rows other writers left pending are positioned first, as before, so
-- the order is the same: theirs, then this write's in the order given. Not taken, the
-- events are inserted pending and a round after the commit positions them, as before.

CREATE OR REPLACE FUNCTION insert_few_then_position(
    p_lock_keys bigint[],
    p_place_in_stream boolean,
    p_room_ids text[],
    p_event_ids text[],
    p_types text[],
    p_state_keys text[],
    p_senders text[],
    p_memberships text[],
    p_depths bigint[],
    p_ts bigint[],
    p_pdu_jsons text[],
    p_statuses smallint[],
    p_rejection_reasons text[],
    p_redacted boolean[],
    p_groups_before bigint[],
    p_groups_after bigint[],
    p_servers text[],
    p_relayed_for text[],
    p_stream_pending bigint[],
    p_auth_event_ids text[],
    p_auth_ids text[],
    p_prev_ids text[],
    p_prev_event_ids text[],
    p_removed_rooms text[],
    p_removed_ids text[],
    p_added_rooms text[],
    p_added_ids text[],
    p_txn_senders text[],
    p_txn_ids text[],
    p_txn_event_ids text[],
    p_checked_rooms text[],
    p_checked_extremities text[],
    p_checked_groups bigint[],
    OUT written boolean,
    OUT positioned_ids text[],
    OUT positions bigint[]
)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_key bigint;
    -- The stream lock taken by this write (its own transaction): its events are inserted
    -- with their positions.
    v_positioned boolean := false;
    v_own_ids text[];
    v_own_positions bigint[];
BEGIN
    positioned_ids := '{}';
    positions := '{}';
    FOREACH v_key IN ARRAY p_lock_keys LOOP
        PERFORM pg_advisory_xact_lock(v_key);
    END LOOP;
    IF cardinality(p_checked_rooms) > 0 AND (
        EXISTS (
            SELECT 1
              FROM unnest(p_checked_rooms, p_checked_extremities, p_checked_groups)
                   AS x(room_id, extremity, state_group)
             WHERE (SELECT r.current_state_group FROM events.rooms r
                     WHERE r.room_id = x.room_id) IS DISTINCT FROM x.state_group
                OR (SELECT count(*) FROM events.forward_extremities f
                     WHERE f.room_id = x.room_id) <> 1
                OR NOT EXISTS (SELECT 1 FROM events.forward_extremities f
                                WHERE f.room_id = x.room_id AND f.event_id = x.extremity
                               OFFSET 0)
                OR EXISTS (SELECT 1 FROM events.waiting_redactions w
                            WHERE w.room_id = x.room_id OFFSET 0)
                OR EXISTS (SELECT 1 FROM events.partial_state_rooms p
                            WHERE p.room_id = x.room_id OFFSET 0))
        OR EXISTS (
            SELECT 1 FROM unnest(p_txn_senders, p_txn_ids) AS k(sender, txn_id)
             WHERE EXISTS (SELECT 1 FROM events.local_transactions t
                            WHERE t.sender = k.sender AND t.txn_id = k.txn_id OFFSET 0))
    ) THEN
        written := false;
        RETURN;
    END IF;
    -- Its own transaction: positioned now if the stream lock is free (never waited
    -- for with the rooms' locks held), the commit then flushed as a round's is. Rows
    -- left pending by others first: they were committed before this write.
    IF cardinality(p_lock_keys) > 0
       AND EXISTS (SELECT 1 FROM unnest(p_stream_pending) AS s(o) WHERE s.o IS NOT NULL)
       AND pg_try_advisory_xact_lock(120363881423873)
    THEN
        v_positioned := true;
        SELECT coalesce(array_agg(p.assigned_event_id), '{}'),
               coalesce(array_agg(p.assigned_position), '{}')
          INTO positioned_ids, positions
          FROM events.position_pending() p;
    END IF;
    IF cardinality(p_event_ids) > 0 THEN
        WITH inserted AS (
        INSERT INTO events.events (
            event_id, room_id, type, state_key, sender, membership, depth, origin_server_ts,
            pdu_json, status, rejection_reason, redacted, state_group_before,
            state_group_after, servers_before, relayed_for, stream_pending, stream_position)
        SELECT r.event_id, r.room_id, r.type, r.state_key, r.sender, r.membership, r.depth,
               r.ts, r.pdu_json, r.status, r.rejection_reason, r.redacted, r.group_before,
               r.group_after,
               -- servers_before is one JSON array per event (arrays of arrays must be
               -- rectangular).
               ARRAY(SELECT j.server FROM jsonb_array_elements_text(r.servers::jsonb)
                     WITH ORDINALITY AS j(server, n) ORDER BY j.n),
               r.relayed_for,
               CASE WHEN v_positioned THEN NULL
                    WHEN p_place_in_stream AND r.stream_pending IS NOT NULL
                    THEN nextval('events.stream_pending_order')
                    ELSE r.stream_pending END,
               -- Under the stream lock: positions taken in the order given.
               CASE WHEN v_positioned AND r.stream_pending IS NOT NULL
                    THEN nextval('events.stream_positions') END
          FROM unnest(p_room_ids, p_event_ids, p_types, p_state_keys, p_senders,
                      p_memberships, p_depths, p_ts, p_pdu_jsons, p_statuses,
                      p_rejection_reasons, p_redacted, p_groups_before, p_groups_after,
                      p_servers, p_relayed_for, p_stream_pending)
               AS r(room_id, event_id, type, state_key, sender, membership, depth, ts,
                    pdu_json, status, rejection_reason, redacted, group_before, group_after,
                    servers, relayed_for, stream_pending)
        RETURNING event_id, stream_position
        )
        SELECT coalesce(array_agg(i.event_id ORDER BY i.stream_position), '{}'),
               coalesce(array_agg(i.stream_position ORDER BY i.stream_position), '{}')
          INTO v_own_ids, v_own_positions
          FROM inserted i WHERE i.stream_position IS NOT NULL;
    END IF;
    IF cardinality(p_auth_event_ids) > 0 THEN
        INSERT INTO events.event_auth (event_id, auth_id)
        SELECT * FROM unnest(p_auth_event_ids, p_auth_ids);
    END IF;
    IF cardinality(p_prev_ids) > 0 THEN
        INSERT INTO events.event_edges (prev_event_id, event_id)
        SELECT * FROM unnest(p_prev_ids, p_prev_event_ids);
    END IF;
    IF cardinality(p_removed_ids) > 0 THEN
        -- By the arrays' values through the key's index (joined with the pairs, the
        -- whole table was hashed), then the exact pairs.
        DELETE FROM events.forward_extremities f
         WHERE f.room_id = ANY(p_removed_rooms) AND f.event_id = ANY(p_removed_ids)
           AND (f.room_id, f.event_id) IN (
               SELECT * FROM unnest(p_removed_rooms, p_removed_ids));
    END IF;
    IF cardinality(p_added_ids) > 0 THEN
        INSERT INTO events.forward_extremities (room_id, event_id)
        SELECT * FROM unnest(p_added_rooms, p_added_ids) ON CONFLICT DO NOTHING;
    END IF;
    IF cardinality(p_txn_ids) > 0 THEN
        -- No ON CONFLICT: a transaction id another write used meanwhile (its sender
        -- sending into another room at once) fails the call, which is then done again
        -- and answers with that write's event.
        INSERT INTO events.local_transactions (sender, txn_id, event_id)
        SELECT * FROM unnest(p_txn_senders, p_txn_ids, p_txn_event_ids);
    END IF;
    written := true;
    IF cardinality(p_lock_keys) = 0 THEN
        RETURN;  -- the caller's transaction goes on: positions come after its commit
    END IF;
    IF v_positioned THEN
        positioned_ids := positioned_ids || v_own_ids;
        positions := positions || v_own_positions;
        -- (position_pending notified only if others had rows pending)
        PERFORM pg_notify('mxfed_events_stream', '');
        RETURN;
    END IF;
    -- Not positioned: the round after it flushes the WAL past this commit.
    PERFORM set_config('synchronous_commit', 'off', true);
END
$$;
