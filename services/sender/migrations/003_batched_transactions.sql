-- Batched transaction bookkeeping (see SenderStorage.next_transactions): one
-- call records the 200s of many destinations and hands out the next
-- transaction of many destinations, so a replica delivering to a thousand
-- destinations makes a few database round trips per round, not thousands.
-- Per destination it does exactly what 002's next_transaction does: the lease
-- is checked under the destination's row lock, a pending transaction comes
-- back unchanged, otherwise the oldest queued rows are tagged with a new txn
-- id recorded as pending before it is returned.

-- The rows of a transaction in flight, found without reading the whole queue
-- of a destination with a long backlog.
CREATE INDEX pdu_queue_in_flight ON pdu_queue (destination, txn_id) WHERE txn_id IS NOT NULL;
CREATE INDEX edu_queue_in_flight ON edu_queue (destination, txn_id) WHERE txn_id IS NOT NULL;
-- Periodic work that must not read every row: typing expiry, backed-off
-- destinations, the destinations with work.
CREATE INDEX edu_queue_typing ON edu_queue (queued_ts) WHERE edu_type = 'm.typing' AND txn_id IS NULL;
CREATE INDEX destinations_backed_off ON destinations (destination) WHERE retry_interval_ms > 0;

-- Result rows: one per destination in p_destinations (r_result 'lease_lost',
-- 'backoff', 'empty' or 'ready'; a ready one lists its PDUs by stream
-- position), then one row per PDU they contain (r_result 'pdu': r_position,
-- r_pdu_json), so an event going to many destinations is sent back once.
CREATE FUNCTION next_transactions(
    p_destinations text[],
    p_completed text[],
    p_completed_txns text[],
    p_owner text,
    p_max_pdus integer,
    p_max_edus integer,
    p_now bigint
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
    v_fresh text[];
BEGIN
    -- Every row this call touches is locked up front, in one order, so that
    -- concurrent calls (this replica's or another's) never deadlock.
    PERFORM 1 FROM sender.destinations d
      WHERE d.destination = ANY(p_destinations) OR d.destination = ANY(p_completed)
      ORDER BY d.destination FOR UPDATE OF d;

    -- Transactions answered with 200: forget what they carried, reset backoff.
    IF cardinality(p_completed) > 0 THEN
        DELETE FROM sender.pdu_queue q
         USING unnest(p_completed, p_completed_txns) AS c(dest, txn)
         WHERE q.destination = c.dest AND q.txn_id = c.txn;
        DELETE FROM sender.edu_queue e
         USING unnest(p_completed, p_completed_txns) AS c(dest, txn)
         WHERE e.destination = c.dest AND e.txn_id = c.txn;
        UPDATE sender.destinations d
           SET pending_txn_id = CASE WHEN d.pending_txn_id = c.txn THEN NULL
                                     ELSE d.pending_txn_id END,
               pending_txn_ts = CASE WHEN d.pending_txn_id = c.txn THEN NULL
                                     ELSE d.pending_txn_ts END,
               retry_until_ts = 0, retry_interval_ms = 0, failures = 0, last_error = NULL,
               last_success_ts = p_now
          FROM unnest(p_completed, p_completed_txns) AS c(dest, txn)
         WHERE d.destination = c.dest;
    END IF;

    -- Destinations that get a new transaction now (if anything is queued).
    SELECT coalesce(array_agg(d.destination), '{}') INTO v_fresh
      FROM sender.destinations d
     WHERE d.destination = ANY(p_destinations)
       AND d.lease_owner = p_owner AND d.lease_expires_at > now()
       AND d.retry_until_ts <= p_now AND d.pending_txn_id IS NULL;

    IF cardinality(v_fresh) > 0 THEN
        UPDATE sender.pdu_queue q SET txn_id = p_now::text || '-' || (d.txn_counter + 1)::text
          FROM sender.destinations d,
               LATERAL (SELECT q2.stream_position FROM sender.pdu_queue q2
                         WHERE q2.destination = d.destination AND q2.txn_id IS NULL
                         ORDER BY q2.stream_position LIMIT p_max_pdus) s
         WHERE d.destination = ANY(v_fresh)
           AND q.destination = d.destination AND q.stream_position = s.stream_position;
        UPDATE sender.edu_queue e SET txn_id = p_now::text || '-' || (d.txn_counter + 1)::text
          FROM sender.destinations d,
               LATERAL (SELECT e2.id FROM sender.edu_queue e2
                         WHERE e2.destination = d.destination AND e2.txn_id IS NULL
                         ORDER BY e2.id LIMIT p_max_edus) s
         WHERE d.destination = ANY(v_fresh) AND e.id = s.id;
        UPDATE sender.destinations d
           SET pending_txn_id = p_now::text || '-' || (d.txn_counter + 1)::text,
               pending_txn_ts = p_now, txn_counter = d.txn_counter + 1
         WHERE d.destination = ANY(v_fresh)
           AND (EXISTS (SELECT 1 FROM sender.pdu_queue q WHERE q.destination = d.destination
                         AND q.txn_id = p_now::text || '-' || (d.txn_counter + 1)::text)
                OR EXISTS (SELECT 1 FROM sender.edu_queue e WHERE e.destination = d.destination
                         AND e.txn_id = p_now::text || '-' || (d.txn_counter + 1)::text));
    END IF;

    RETURN QUERY
    WITH w AS (
        SELECT DISTINCT ON (x.dest) x.dest, d.pending_txn_id, d.pending_txn_ts, d.retry_until_ts,
               CASE WHEN d.destination IS NULL OR d.lease_owner IS DISTINCT FROM p_owner
                         OR NOT (d.lease_expires_at > now()) THEN 'lease_lost'
                    WHEN d.retry_until_ts > p_now THEN 'backoff'
                    WHEN d.pending_txn_id IS NULL THEN 'empty'
                    ELSE 'ready' END AS result
          FROM unnest(p_destinations) AS x(dest)
          LEFT JOIN sender.destinations d ON d.destination = x.dest
    ), ready AS (
        SELECT w.dest, w.pending_txn_id AS txn FROM w WHERE w.result = 'ready'
    ), items AS (
        SELECT q.destination, q.stream_position FROM ready
          JOIN sender.pdu_queue q ON q.destination = ready.dest AND q.txn_id = ready.txn
    )
    SELECT w.dest, w.result, w.pending_txn_id, w.pending_txn_ts, w.retry_until_ts,
           w.result = 'ready' AND NOT (w.dest = ANY(v_fresh)),
           CASE WHEN w.result = 'ready' THEN coalesce(
               (SELECT array_agg(i.stream_position ORDER BY i.stream_position) FROM items i
                 WHERE i.destination = w.dest), '{}') END,
           CASE WHEN w.result = 'ready' THEN coalesce(
               (SELECT array_agg(e.edu_type ORDER BY e.id) FROM sender.edu_queue e
                 WHERE e.destination = w.dest AND e.txn_id = w.pending_txn_id), '{}') END,
           CASE WHEN w.result = 'ready' THEN coalesce(
               (SELECT array_agg(e.content_json ORDER BY e.id) FROM sender.edu_queue e
                 WHERE e.destination = w.dest AND e.txn_id = w.pending_txn_id), '{}') END,
           NULL::bigint, NULL::bytea
      FROM w
    UNION ALL
    SELECT NULL, 'pdu', NULL, NULL, NULL, NULL, NULL, NULL, NULL, p.stream_position, p.pdu_json
      FROM sender.pdus p
     WHERE p.stream_position IN (SELECT i.stream_position FROM items i);
END
$$;
