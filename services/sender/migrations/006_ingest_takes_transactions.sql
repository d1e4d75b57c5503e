-- Ingest that also hands out transactions (see SenderStorage.ingest_and_take):
-- one call stores a batch of the events stream (each event once, its queue
-- rows, the advanced cursor, the NOTIFYs) and then does what next_transactions
-- (003) does for the destinations whose workers wait idle on this replica:
-- records the 200s they got and takes their next transactions. An event sent
-- to an idle destination is on its way after one round trip and one commit
-- (two of each, and a wake-up in between, when ingest and the worker's call
-- were apart). Rows as next_transactions returns them, and one row
-- (r_result 'ingested', r_position: queue rows added) before them.
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
    p_max_edus integer
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
) LANGUAGE plpgsql AS $$
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
    IF cardinality(p_take) > 0 OR cardinality(p_completed) > 0 THEN
        -- p_queued_ts is now: the new transactions' ids and timestamps come from it.
        RETURN QUERY SELECT * FROM sender.next_transactions(
            p_take, p_completed, p_completed_txns, p_owner, p_max_pdus, p_max_edus, p_queued_ts);
    END IF;
END
$$;
