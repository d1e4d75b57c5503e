-- Accounts (sub-component of the keys service): profiles, devices and
-- end-to-end keys of local users, OpenID tokens, and the cache of other
-- servers' device lists.

CREATE TABLE profiles (
    user_id text PRIMARY KEY,
    fields_json text NOT NULL,
    updated_ts bigint NOT NULL
);

CREATE TABLE devices (
    user_id text NOT NULL,
    device_id text NOT NULL,
    display_name text,
    -- DeviceKeys as uploaded; NULL until the device uploads keys.
    keys_json text,
    created_ts bigint NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- One-time keys are never deleted when claimed, so a key id is handed out
-- at most once ever (a re-upload of a claimed key is a no-op).
CREATE TABLE one_time_keys (
    seq bigserial PRIMARY KEY,
    user_id text NOT NULL,
    device_id text NOT NULL,
    algorithm text NOT NULL,
    key_id text NOT NULL,
    key_json text NOT NULL,
    claimed_ts bigint,
    UNIQUE (user_id, device_id, algorithm, key_id)
);
CREATE INDEX one_time_keys_unclaimed ON one_time_keys (user_id, device_id, algorithm, seq)
    WHERE claimed_ts IS NULL;

CREATE TABLE fallback_keys (
    user_id text NOT NULL,
    device_id text NOT NULL,
    algorithm text NOT NULL,
    key_id text NOT NULL,
    key_json text NOT NULL,
    used boolean NOT NULL DEFAULT false,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- usage: 'master' | 'self_signing' | 'user_signing'
CREATE TABLE cross_signing_keys (
    user_id text NOT NULL,
    usage text NOT NULL,
    key_json text NOT NULL,
    updated_ts bigint NOT NULL,
    PRIMARY KEY (user_id, usage)
);

-- Per local user: the device-list stream id, bumped on every change.
CREATE TABLE device_list_streams (
    user_id text PRIMARY KEY,
    stream_id bigint NOT NULL
);

CREATE TABLE openid_tokens (
    token_hash text PRIMARY KEY,
    user_id text NOT NULL,
    expires_ts bigint NOT NULL
);
CREATE INDEX openid_tokens_expiry ON openid_tokens (expires_ts);

-- Remote users' device lists as last synced from /user/devices and kept
-- current by m.device_list_update / m.signing_key_update EDUs.
CREATE TABLE remote_device_lists (
    user_id text PRIMARY KEY,
    -- stream_id of the last /user/devices resync: every id up to it is known.
    stream_id bigint NOT NULL,
    stale boolean NOT NULL DEFAULT false,
    synced_ts bigint NOT NULL,
    master_key_json text,
    self_signing_key_json text
);

CREATE TABLE remote_devices (
    user_id text NOT NULL,
    device_id text NOT NULL,
    display_name text,
    keys_json text,
    PRIMARY KEY (user_id, device_id)
);

-- stream ids of EDUs applied since the last resync (for prev_id checks).
CREATE TABLE remote_device_stream_ids (
    user_id text NOT NULL,
    stream_id bigint NOT NULL,
    PRIMARY KEY (user_id, stream_id)
);
