-- The stream round's generic plan (013) uses the stream_pending indexes, never a
-- sequential scan where an index serves: a plan made while the tables were
-- small chose to scan them, and kept doing so on every round as they grew,
-- until their next ANALYZE. Without JIT: a scan that must stay is costed past
-- jit_above_cost then, and would be compiled on every round.
ALTER FUNCTION assign_stream_positions() SET enable_seqscan = off;
ALTER FUNCTION assign_stream_positions() SET jit = off;
