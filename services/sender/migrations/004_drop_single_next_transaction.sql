-- next_transactions (003) replaced the one-destination function of 002.
DROP FUNCTION IF EXISTS next_transaction(text, text, integer, integer, bigint);
