-- Migration 019 kept insert_few's name and arguments but changed what it answers (a
-- boolean, now a row). A replica still running the code from before 019 would read
-- that row as true, i.e. as written, also when its head check failed and nothing was.
-- Under a new name its call fails loudly instead, as a call of a dropped function does.
ALTER FUNCTION insert_few(
    bigint[], boolean, text[], text[], text[], text[], text[], text[], bigint[], bigint[],
    text[], smallint[], text[], boolean[], bigint[], bigint[], text[], text[], bigint[],
    text[], text[], text[], text[], text[], text[], text[], text[], text[], text[], text[],
    text[], text[], bigint[]) RENAME TO insert_few_then_position;
