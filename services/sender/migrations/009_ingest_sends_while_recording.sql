-- Ingest that records the transactions it hands to idle workers, which send
-- them meanwhile (see SenderStorage.ingest_and_take, ``given``): an event
-- going to a destination whose worker waits idle here is put on the wire as
-- soon as ingest reads it, not after ingest's round trip and commit. The
-- transaction (its id chosen by the sender, its timestamp, the batch's rows
-- for that destination) is recorded as the destination's pending one when the
-- lease is still this replica's and nothing is pending, exactly as if it had
-- been taken: a failure is retried with the same id and contents. When it
-- cannot be recorded (or the statement fails), its events stay queued (or are
-- ingested again from the cursor) and go out again in a later transaction:
-- sent at least once, as before; the receiver ignores PDUs it already has.
-- Rows as 006's ingest returns them, then one per given transaction
-- (r_result 'given' when recorded, 'not_given' when not).
DROP FUNCTION ingest(bigint[], text[], text[], bytea[], bigint, text[], bigint[], bigint, text,
                     text[], text[], text[], text[], text, integer, integer);

CREATE FUNCTION ingest(
    p_positions bigint[],
    p_event_ids text[],
    p_room_ids text[],
    p_pdu_jsons bytea[],
    p_queued_ts bigint,
    p_queue_destinations text[],
    p_queue_positions bigint[],
    p_cursor bigint,
    p_wake_channel text,
    p_wake_payloads text[],
    p_take text[],
    p_completed text[],
    p_completed_txns text[],
    p_owner text,
    p_max_pdus integer,
    p_max_edus integer,
    p_given text[],
    p_given_txns text[],
    p_given_ts bigint[],
    p_given_rows text[],
    p_given_positions bigint[]
) RETURNS TABLE (
    r_destination text,
    r_result text,
    r_txn text,
    r_txn_ts bigint,
    r_retry_until bigint,
    r_resumed boolean,
    r_positions bigint[],
    r_edu_types text[],
    r_edu_contents bytea[],
    r_position bigint,
    r_pdu_json bytea
) LANGUAGE plpgsql
  SET plan_cache_mode = force_generic_plan
  SET enable_seqscan = off
  SET jit = off
AS $$
DECLARE
    v_added bigint;
BEGIN
    INSERT INTO sender.pdus (stream_position, event_id, room_id, pdu_json, queued_ts)
    SELECT p, e, r, j, p_queued_ts
      FROM unnest(p_positions, p_event_ids, p_room_ids, p_pdu_jsons) AS t(p, e, r, j)
    ON CONFLICT DO NOTHING;
    INSERT INTO sender.destinations (destination)
    SELECT DISTINCT d FROM unnest(p_queue_destinations) AS t(d) ORDER BY d
    ON CONFLICT DO NOTHING;
    INSERT INTO sender.pdu_queue (destination, stream_position)
    SELECT d, p FROM unnest(p_queue_destinations, p_queue_positions) AS t(d, p)
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_added = ROW_COUNT;
    UPDATE sender.ingest_cursor SET stream_position = GREATEST(stream_position, p_cursor);
    PERFORM pg_notify(p_wake_channel, w) FROM unnest(p_wake_payloads) AS t(w);
    RETURN QUERY SELECT NULL::text, 'ingested'::text, NULL::text, NULL::bigint, NULL::bigint,
        NULL::boolean, NULL::bigint[], NULL::text[], NULL::bytea[], v_added, NULL::bytea;
    IF cardinality(p_take) > 0 OR cardinality(p_completed) > 0 OR cardinality(p_given) > 0 THEN
        -- Every destination row changed below, locked up front in one order (as
        -- next_transactions does), so no concurrent call deadlocks with this one.
        PERFORM 1 FROM sender.destinations d
          WHERE d.destination = ANY(p_take) OR d.destination = ANY(p_completed)
             OR d.destination = ANY(p_given)
          ORDER BY d.destination FOR UPDATE OF d;
        -- p_queued_ts is now: the new transactions' ids and timestamps come from it.
        -- The 200s go first: a given transaction's destination has nothing pending then.
        RETURN QUERY SELECT * FROM sender.next_transactions(
            p_take, p_completed, p_completed_txns, p_owner, p_max_pdus, p_max_edus, p_queued_ts);
    END IF;
    IF cardinality(p_given) > 0 THEN
        RETURN QUERY
        WITH recorded AS (
            UPDATE sender.destinations d SET pending_txn_id = g.txn, pending_txn_ts = g.ts
              FROM unnest(p_given, p_given_txns, p_given_ts) AS g(dest, txn, ts)
             WHERE d.destination = g.dest AND d.lease_owner = p_owner
               AND d.lease_expires_at > now() AND d.pending_txn_id IS NULL
            RETURNING d.destination, g.txn
        ), tagged AS (
            UPDATE sender.pdu_queue q SET txn_id = recorded.txn
              FROM recorded, unnest(p_given_rows, p_given_positions) AS r(dest, pos)
             WHERE r.dest = recorded.destination AND q.destination = r.dest
               AND q.stream_position = r.pos AND q.txn_id IS NULL
            RETURNING q.destination
        )
        SELECT g.dest, CASE WHEN recorded.destination IS NULL THEN 'not_given' ELSE 'given' END,
               g.txn, g.ts, NULL::bigint, NULL::boolean, NULL::bigint[], NULL::text[],
               NULL::bytea[], NULL::bigint, NULL::bytea
          FROM unnest(p_given, p_given_txns, p_given_ts) AS g(dest, txn, ts)
          LEFT JOIN recorded ON recorded.destination = g.dest;
    END IF;
END
$$;
