-- The transaction functions (next_transactions, migration 003; ingest, 009) as
-- before, but every scan of a table is bounded by the call's own keys
-- (destination = ANY(the call's destinations), the queue's rows ordered as the
-- primary key orders them), whatever the tables' sizes when their generic plans
-- (007) were made. Made while the queue held one destination's rows, those plans
-- walked the whole queue in stream order, and scanned every known destination's
-- row, on every call (enable_seqscan = off, 008, only made them scan the indexes
-- whole): with 20,000 known servers and a down server's backlog of 20,000 rows, a
-- call examined 20,000 rows a scan, its cost growing with the server's federation,
-- not with its own destinations. Checked with auto_explain in
-- tests/services/sender/test_plans_as_queues_grow.py.

CREATE OR REPLACE FUNCTION next_transactions(
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
) LANGUAGE plpgsql
  SET plan_cache_mode = force_generic_plan
  SET enable_seqscan = off
  SET jit = off
AS $$
DECLARE
    v_fresh text[];
BEGIN
    -- Every row this call touches is locked up front, in one order, so that
    -- concurrent calls (this replica's or another's) never deadlock.
    PERFORM 1 FROM sender.destinations d
      WHERE d.destination = ANY(p_destinations || p_completed)
      ORDER BY d.destination FOR UPDATE OF d;

    -- Transactions answered with 200: forget what they carried, reset backoff.
    IF cardinality(p_completed) > 0 THEN
        DELETE FROM sender.pdu_queue q
         USING unnest(p_completed, p_completed_txns) AS c(dest, txn)
         WHERE q.destination = ANY(p_completed) AND q.txn_id = ANY(p_completed_txns)
           AND q.destination = c.dest AND q.txn_id = c.txn;
        DELETE FROM sender.edu_queue e
         USING unnest(p_completed, p_completed_txns) AS c(dest, txn)
         WHERE e.destination = ANY(p_completed) AND e.txn_id = ANY(p_completed_txns)
           AND e.destination = c.dest AND e.txn_id = c.txn;
        UPDATE sender.destinations d
           SET pending_txn_id = CASE WHEN d.pending_txn_id = c.txn THEN NULL
                                     ELSE d.pending_txn_id END,
               pending_txn_ts = CASE WHEN d.pending_txn_id = c.txn THEN NULL
                                     ELSE d.pending_txn_ts END,
               retry_until_ts = 0, retry_interval_ms = 0, failures = 0, last_error = NULL,
               last_success_ts = p_now
          FROM unnest(p_completed, p_completed_txns) AS c(dest, txn)
         WHERE d.destination = ANY(p_completed) AND d.destination = c.dest;
    END IF;

    -- Destinations that get a new transaction now (if anything is queued).
    SELECT coalesce(array_agg(d.destination), '{}') INTO v_fresh
      FROM sender.destinations d
     WHERE d.destination = ANY(p_destinations)
       AND d.lease_owner = p_owner AND d.lease_expires_at > now()
       AND d.retry_until_ts <= p_now AND d.pending_txn_id IS NULL;

    IF cardinality(v_fresh) > 0 THEN
        -- Each destination's first rows through its own part of the primary key (an
        -- order no other index gives: stream order alone let a plan walk the whole
        -- queue), then those rows by their keys.
        WITH picked AS MATERIALIZED (
            SELECT d.destination, s.stream_position,
                   p_now::text || '-' || (d.txn_counter + 1)::text AS txn
              FROM sender.destinations d,
                   LATERAL (SELECT q2.stream_position FROM sender.pdu_queue q2
                             WHERE q2.destination = d.destination AND q2.txn_id IS NULL
                             ORDER BY q2.stream_position + 0 LIMIT p_max_pdus) s
             WHERE d.destination = ANY(v_fresh)
        )
        UPDATE sender.pdu_queue q SET txn_id = picked.txn
          FROM picked
         WHERE q.destination = ANY(v_fresh)
           AND q.stream_position = ANY(ARRAY(SELECT p.stream_position FROM picked p))
           AND q.destination = picked.destination AND q.stream_position = picked.stream_position;
        WITH picked AS MATERIALIZED (
            SELECT s.id, p_now::text || '-' || (d.txn_counter + 1)::text AS txn
              FROM sender.destinations d,
                   LATERAL (SELECT e2.id FROM sender.edu_queue e2
                             WHERE e2.destination = d.destination AND e2.txn_id IS NULL
                             ORDER BY e2.id + 0 LIMIT p_max_edus) s
             WHERE d.destination = ANY(v_fresh)
        )
        UPDATE sender.edu_queue e SET txn_id = picked.txn
          FROM picked
         WHERE e.id = ANY(ARRAY(SELECT p.id FROM picked p)) AND e.id = picked.id;
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
          LEFT JOIN sender.destinations d
            ON d.destination = x.dest AND d.destination = ANY(p_destinations)
    ), ready AS (
        SELECT w.dest, w.pending_txn_id AS txn FROM w WHERE w.result = 'ready'
    ), items AS (
        SELECT q.destination, q.stream_position FROM ready
          JOIN sender.pdu_queue q ON q.destination = ready.dest AND q.txn_id = ready.txn
           AND q.destination = ANY(p_destinations)
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
     WHERE p.stream_position = ANY(ARRAY(SELECT i.stream_position FROM items i));
END
$$;

CREATE OR REPLACE FUNCTION ingest(
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
          WHERE d.destination = ANY(p_take || p_completed || p_given)
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
             WHERE d.destination = ANY(p_given) AND d.destination = g.dest
               AND d.lease_owner = p_owner
               AND d.lease_expires_at > now() AND d.pending_txn_id IS NULL
            RETURNING d.destination, g.txn
        ), tagged AS (
            UPDATE sender.pdu_queue q SET txn_id = recorded.txn
              FROM recorded, unnest(p_given_rows, p_given_positions) AS r(dest, pos)
             WHERE q.destination = ANY(p_given_rows) AND q.stream_position = ANY(p_given_positions)
               AND r.dest = recorded.destination AND q.destination = r.dest
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
