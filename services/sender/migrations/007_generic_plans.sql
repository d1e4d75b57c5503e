-- The transaction functions' statements run with generic plans, made once per
-- session. With the default (plan_cache_mode auto) PL/pgSQL kept planning them
-- afresh on every call, since a generic plan of their ANY(array) and LATERAL
-- statements is estimated dearer than a custom one: ~0.7 ms of planning per
-- call, as much as the rest of the call with its commit. Their rows are found
-- by primary key or per-destination index whatever the parameters, so the one
-- plan fits every call.
ALTER FUNCTION next_transactions(text[], text[], text[], text, integer, integer, bigint)
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION ingest(bigint[], text[], text[], bytea[], bigint, text[], bigint[], bigint, text,
                      text[], text[], text[], text[], text, integer, integer)
    SET plan_cache_mode = force_generic_plan;
