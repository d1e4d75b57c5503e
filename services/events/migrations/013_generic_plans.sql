-- The stream round's statements run with generic plans, made once per session:
-- with the default plan_cache_mode PL/pgSQL would plan them afresh on every
-- call when a generic plan of their array parameters is estimated dearer than
-- a custom one. Their rows are found through the stream_pending indexes
-- whatever the parameters, so the one plan fits every call.
ALTER FUNCTION assign_stream_positions() SET plan_cache_mode = force_generic_plan;
