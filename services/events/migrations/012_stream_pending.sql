-- Stream positions are given right after a room's transaction commits, not
-- inside it: a lock held until every room's commit serialised the rooms.
--
-- A room batch commits its streamed events (and the EDU path its ephemeral
-- rows) with only an insertion order, ``stream_pending`` (one sequence, so the
-- rows of a room, written under the room's lock, keep their order). Then
-- ``assign_stream_positions()`` — one short statement of its own — takes the
-- stream lock and gives every committed pending row of both tables a position,
-- in that order, for whichever rooms and replicas wrote them (group commit).
-- Positions are taken only under that lock, which is held to the commit, so
-- they become visible in increasing order: a reader that has read up to P
-- never sees a row at or before P appear later. Rows a crash left pending get
-- positions from the next assignment (any replica's, or the periodic sweep).
CREATE SEQUENCE stream_pending_order;

ALTER TABLE events ADD COLUMN stream_pending bigint;
CREATE UNIQUE INDEX events_stream_pending ON events (stream_pending)
    WHERE stream_pending IS NOT NULL;

ALTER TABLE ephemeral DROP CONSTRAINT ephemeral_pkey;
ALTER TABLE ephemeral ALTER COLUMN stream_position DROP NOT NULL;
ALTER TABLE ephemeral ADD CONSTRAINT ephemeral_stream_position UNIQUE (stream_position);
ALTER TABLE ephemeral ADD COLUMN stream_pending bigint;
CREATE UNIQUE INDEX ephemeral_stream_pending ON ephemeral (stream_pending)
    WHERE stream_pending IS NOT NULL;

-- A repeated local send answers with its event's position, read from the
-- event (it may still be pending when the transaction id is stored).
ALTER TABLE local_transactions DROP COLUMN stream_position;

-- The assigned events' ids and positions (the caller's may have been assigned
-- by another replica's call: it reads those back). Volatile, so each statement
-- sees what committed before it, after the lock is taken.
CREATE FUNCTION assign_stream_positions()
    RETURNS TABLE (assigned_event_id text, assigned_position bigint)
    LANGUAGE plpgsql AS $$
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
    PERFORM pg_notify('mxfed_events_stream', '');
END
$$;
