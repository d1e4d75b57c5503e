-- The stream round's generic plan (013) uses the stream_pending indexes, never a
-- sequential scan: a plan made while the tables were small chose to scan them,
-- and kept doing so on every round as they grew, until their next ANALYZE.
ALTER FUNCTION assign_stream_positions() SET enable_seqscan = off;
