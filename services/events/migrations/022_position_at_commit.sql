-- A room transaction whose events are streamed (a /send's rooms, local sends on a head
-- read under the lock) gives the stream positions itself, just before its commit, when
-- the stream lock is free: then its commit is flushed and the caller waits for no round
-- after it (one statement inside the transaction instead of a round's statement and
-- commit after it, each with a WAL flush). As insert_few_then_position does for a write
-- that is its own transaction (migration 019): the lock is only tried, never waited for
-- with the rooms' locks held; taken, every committed pending row and the caller's own
-- get their positions and the lock is held to the commit, so positions still become
-- visible in increasing order; not taken, nothing is positioned and the caller's round
-- does it after the commit.

CREATE FUNCTION position_if_free(OUT positioned_ids text[], OUT positions bigint[])
    LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan
    SET enable_seqscan = off
    SET jit = off
AS $$
BEGIN
    positioned_ids := '{}';
    positions := '{}';
    -- The stream lock ("mxfed" + 1), as assign_stream_positions takes it.
    IF NOT pg_try_advisory_xact_lock(120363881423873) THEN
        RETURN;
    END IF;
    SELECT coalesce(array_agg(p.assigned_event_id), '{}'),
           coalesce(array_agg(p.assigned_position), '{}')
      INTO positioned_ids, positions
      FROM events.position_pending() p;
    -- The transaction may have been told to commit without a flush, the round after it
    -- being what made it durable: with no round to come, its own commit is flushed.
    SET LOCAL synchronous_commit TO DEFAULT;
END
$$;
