-- The next transaction of a destination in one round trip (see
-- SenderStorage.next_transaction): checks the lease under the destination's
-- row lock; returns the pending transaction unchanged, or tags the oldest
-- queued rows with a new txn id and records it as pending before returning it.
-- result: 'lease_lost' | 'backoff' | 'empty' | 'ready'.
CREATE FUNCTION next_transaction(
    p_destination text,
    p_owner text,
    p_max_pdus integer,
    p_max_edus integer,
    p_now bigint,
    OUT result text,
    OUT txn text,
    OUT txn_ts bigint,
    OUT retry_until bigint,
    OUT resumed boolean,
    OUT pdu_jsons bytea[],
    OUT edu_types text[],
    OUT edu_contents bytea[]
) LANGUAGE plpgsql AS $$
DECLARE
    d record;
    tagged_pdus integer;
    tagged_edus integer;
BEGIN
    SELECT * INTO d FROM sender.destinations
     WHERE destination = p_destination AND lease_owner = p_owner AND lease_expires_at > now()
     FOR UPDATE;
    IF NOT FOUND THEN
        result := 'lease_lost';
        RETURN;
    END IF;
    retry_until := d.retry_until_ts;
    IF d.retry_until_ts > p_now THEN
        result := 'backoff';
        RETURN;
    END IF;
    txn := d.pending_txn_id;
    resumed := txn IS NOT NULL;
    IF txn IS NULL THEN
        txn := p_now::text || '-' || (d.txn_counter + 1)::text;
        UPDATE sender.pdu_queue SET txn_id = txn
         WHERE destination = p_destination AND stream_position IN (
             SELECT stream_position FROM sender.pdu_queue
              WHERE destination = p_destination AND txn_id IS NULL
              ORDER BY stream_position LIMIT p_max_pdus);
        GET DIAGNOSTICS tagged_pdus = ROW_COUNT;
        UPDATE sender.edu_queue SET txn_id = txn
         WHERE id IN (
             SELECT id FROM sender.edu_queue
              WHERE destination = p_destination AND txn_id IS NULL
              ORDER BY id LIMIT p_max_edus);
        GET DIAGNOSTICS tagged_edus = ROW_COUNT;
        IF tagged_pdus = 0 AND tagged_edus = 0 THEN
            result := 'empty';
            txn := NULL;
            RETURN;
        END IF;
        UPDATE sender.destinations
           SET pending_txn_id = txn, pending_txn_ts = p_now, txn_counter = d.txn_counter + 1
         WHERE destination = p_destination;
        txn_ts := p_now;
    ELSE
        txn_ts := d.pending_txn_ts;
    END IF;
    SELECT coalesce(array_agg(p.pdu_json ORDER BY q.stream_position), '{}')
      INTO pdu_jsons
      FROM sender.pdu_queue q JOIN sender.pdus p USING (stream_position)
     WHERE q.destination = p_destination AND q.txn_id = txn;
    SELECT coalesce(array_agg(e.edu_type ORDER BY e.id), '{}'),
           coalesce(array_agg(e.content_json ORDER BY e.id), '{}')
      INTO edu_types, edu_contents
      FROM sender.edu_queue e
     WHERE e.destination = p_destination AND e.txn_id = txn;
    result := 'ready';
END
$$;
