-- Few new events of one or more rooms, with their edges, the forward extremities'
-- changes and the local transaction ids, in one call (one round trip). Every write
-- of few events goes through it.
--
-- p_lock_keys: the rooms' advisory locks, taken first in the order given (sorted,
-- as every writer takes several). A caller that holds no transaction passes them:
-- the call is then its own transaction, holding the locks to its commit, and
-- leaves that commit's WAL flush to the stream round after it (whose synchronous
-- commit makes this one durable). A caller in a transaction that holds the locks
-- passes none.
--
-- p_checked_*: rooms opened on a head this replica kept from its last write (one
-- forward extremity, a current state group) rather than read under the lock.
-- Nothing is written, and false is answered, unless each such head is still the
-- room's, the room has neither waiting redactions nor a partial state, and none of
-- the local transaction ids given was used before. Each statement of a PL/pgSQL
-- function sees what was committed before it began, so these checks, made after
-- the locks are held, see every earlier writer of these rooms.
--
-- p_place_in_stream: streamed events (a non-null p_stream_pending) take their
-- places in the stream queue here, under the locks; otherwise p_stream_pending
-- holds the places reserved when the rooms' heads were read.
CREATE FUNCTION insert_few(
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
    p_checked_groups bigint[]
) RETURNS boolean
LANGUAGE plpgsql
-- As a room transaction's statements (storage.room_transaction): generic plans, made
-- once per session; indexes, never a scan where one serves; no JIT.
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_key bigint;
BEGIN
    FOREACH v_key IN ARRAY p_lock_keys LOOP
        PERFORM pg_advisory_xact_lock(v_key);
    END LOOP;
    IF cardinality(p_lock_keys) > 0 THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
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
                                WHERE f.room_id = x.room_id AND f.event_id = x.extremity)
                OR EXISTS (SELECT 1 FROM events.waiting_redactions w
                            WHERE w.room_id = x.room_id)
                OR EXISTS (SELECT 1 FROM events.partial_state_rooms p
                            WHERE p.room_id = x.room_id))
        OR EXISTS (
            SELECT 1 FROM unnest(p_txn_senders, p_txn_ids) AS k(sender, txn_id)
              JOIN events.local_transactions t USING (sender, txn_id))
    ) THEN
        RETURN false;
    END IF;
    IF cardinality(p_event_ids) > 0 THEN
        INSERT INTO events.events (
            event_id, room_id, type, state_key, sender, membership, depth, origin_server_ts,
            pdu_json, status, rejection_reason, redacted, state_group_before,
            state_group_after, servers_before, relayed_for, stream_pending)
        SELECT r.event_id, r.room_id, r.type, r.state_key, r.sender, r.membership, r.depth,
               r.ts, r.pdu_json, r.status, r.rejection_reason, r.redacted, r.group_before,
               r.group_after,
               -- servers_before is one JSON array per event (arrays of arrays must be
               -- rectangular).
               ARRAY(SELECT j.server FROM jsonb_array_elements_text(r.servers::jsonb)
                     WITH ORDINALITY AS j(server, n) ORDER BY j.n),
               r.relayed_for,
               CASE WHEN p_place_in_stream AND r.stream_pending IS NOT NULL
                    THEN nextval('events.stream_pending_order')
                    ELSE r.stream_pending END
          FROM unnest(p_room_ids, p_event_ids, p_types, p_state_keys, p_senders,
                      p_memberships, p_depths, p_ts, p_pdu_jsons, p_statuses,
                      p_rejection_reasons, p_redacted, p_groups_before, p_groups_after,
                      p_servers, p_relayed_for, p_stream_pending)
               AS r(room_id, event_id, type, state_key, sender, membership, depth, ts,
                    pdu_json, status, rejection_reason, redacted, group_before, group_after,
                    servers, relayed_for, stream_pending);
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
        DELETE FROM events.forward_extremities f
         USING unnest(p_removed_rooms, p_removed_ids) AS g(room_id, event_id)
         WHERE f.room_id = g.room_id AND f.event_id = g.event_id;
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
    RETURN true;
END
$$;
