-- The transaction guard takes a /send's session lock and, once it has it, reads
-- the answer stored for that transaction, in one round trip. The read is a
-- statement of its own in this volatile function, so (READ COMMITTED) it sees
-- every commit made before the lock was taken: the answer stored by a replica
-- that processed the transaction and then gave the lock back.
CREATE FUNCTION try_transaction_lock(lock_key bigint, txn_origin text, txn text)
    RETURNS TABLE (taken boolean, stored_response text)
    LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_lock(lock_key) THEN
        RETURN QUERY SELECT false, NULL::text;
        RETURN;
    END IF;
    RETURN QUERY SELECT true, (
        SELECT t.response_json FROM events.transactions t
         WHERE t.origin = txn_origin AND t.txn_id = txn
    );
END
$$;
