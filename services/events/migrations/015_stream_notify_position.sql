-- The stream round's NOTIFY says the last position it gave (it said nothing): a
-- replica whose stream hub has already published up to there (the round was its
-- own, handed over as it returned) needs no read of the new rows. The function
-- is otherwise that of migration 012, with migration 013's generic plans.
CREATE OR REPLACE FUNCTION assign_stream_positions()
    RETURNS TABLE (assigned_event_id text, assigned_position bigint)
    LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    orders bigint[];
    first_position bigint;
BEGIN
    -- Nothing committed is pending: what the caller wrote has its position.
    IF NOT EXISTS (SELECT 1 FROM events.events e WHERE e.stream_pending IS NOT NULL)
       AND NOT EXISTS (SELECT 1 FROM events.ephemeral x WHERE x.stream_pending IS NOT NULL)
    THEN
        RETURN;
    END IF;
    -- The stream lock ("mxfed" + 1), released when this statement's transaction commits.
    PERFORM pg_advisory_xact_lock(120363881423873);
    SELECT array_agg(pending.o ORDER BY pending.o) INTO orders FROM (
        SELECT e.stream_pending AS o FROM events.events e WHERE e.stream_pending IS NOT NULL
        UNION ALL
        SELECT x.stream_pending FROM events.ephemeral x WHERE x.stream_pending IS NOT NULL
    ) pending;
    IF orders IS NULL THEN
        RETURN;  -- another call gave them positions while we waited for the lock
    END IF;
    -- Only this function takes stream positions, under the lock: reserve the block.
    first_position := nextval('events.stream_positions');
    PERFORM setval('events.stream_positions', first_position + cardinality(orders) - 1);
    RETURN QUERY
    WITH assigned AS (
        SELECT t.o, first_position + t.n - 1 AS pos
          FROM unnest(orders) WITH ORDINALITY AS t(o, n)
    ), ephemeral_rows AS (
        UPDATE events.ephemeral x SET stream_position = a.pos, stream_pending = NULL
          FROM assigned a WHERE x.stream_pending = a.o
    )
    UPDATE events.events e SET stream_position = a.pos, stream_pending = NULL
      FROM assigned a WHERE e.stream_pending = a.o
    RETURNING e.event_id, e.stream_position;
    PERFORM pg_notify('mxfed_events_stream', (first_position + cardinality(orders) - 1)::text);
END
$$;
