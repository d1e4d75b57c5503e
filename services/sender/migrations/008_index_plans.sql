-- The transaction functions' generic plans (007) use the indexes, never a
-- sequential scan where an index serves: a plan made while pdu_queue was small
-- (a fresh start, a quiet destination) chose to scan it, and kept doing so on
-- every call as the queue grew (a destination down for an hour holds many
-- thousands of rows). Without JIT: a scan that must stay (the one-row
-- ingest_cursor) is costed past jit_above_cost then, and compiling it took
-- 40-90 ms per call.
ALTER FUNCTION next_transactions(text[], text[], text[], text, integer, integer, bigint)
    SET enable_seqscan = off;
ALTER FUNCTION next_transactions(text[], text[], text[], text, integer, integer, bigint)
    SET jit = off;
ALTER FUNCTION ingest(bigint[], text[], text[], bytea[], bigint, text[], bigint[], bigint, text,
                      text[], text[], text[], text[], text, integer, integer)
    SET enable_seqscan = off;
ALTER FUNCTION ingest(bigint[], text[], text[], bytea[], bigint, text[], bigint[], bigint, text,
                      text[], text[], text[], text[], text, integer, integer)
    SET jit = off;
