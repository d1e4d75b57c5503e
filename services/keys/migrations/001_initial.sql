-- Remote servers' key responses, kept as published (their own signatures
-- only) so that we can serve them as a notary with our signature added.
-- One row per server: the newest response (largest valid_until_ts) wins.
CREATE TABLE server_key_responses (
    server_name text PRIMARY KEY,
    key_json bytea NOT NULL,
    valid_until_ts bigint NOT NULL,
    fetched_at bigint NOT NULL,
    -- 'direct' or the name of the notary it came through
    source text NOT NULL
);

-- Every verify key we have seen, including keys a server has since dropped.
CREATE TABLE server_verify_keys (
    server_name text NOT NULL,
    key_id text NOT NULL,
    -- unpadded base64 ed25519 public key
    verify_key text NOT NULL,
    valid_until_ts bigint NOT NULL,
    -- set for keys listed in old_verify_keys (they verify events only)
    expired_ts bigint,
    fetched_at bigint NOT NULL,
    source text NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

-- Our own keys that were rotated out, published in old_verify_keys.
CREATE TABLE own_old_keys (
    key_id text PRIMARY KEY,
    verify_key text NOT NULL,
    expired_ts bigint NOT NULL
);
