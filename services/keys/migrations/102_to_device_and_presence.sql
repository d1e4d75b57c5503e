-- Inbound m.direct_to_device and m.presence EDUs 
-- (https://spec.matrix.org/v1.19/server-server-api/#send-to-device-messaging, #presence).

-- Per local device: the last position handed out in its to-device inbox.
-- Bumped with a row lock held until commit, so a device's messages become
-- visible in position order ("everything after N" is a plain range read).
-- Kept when the device is deleted, so a re-created device id never reuses a
-- position a consumer has already seen.
CREATE TABLE to_device_streams (
    user_id text NOT NULL,
    device_id text NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Messages waiting for a local device until its consumer acknowledges them
-- (PerformAckToDeviceMessages deletes them), or the device is deleted.
CREATE TABLE to_device_inbox (
    user_id text NOT NULL,
    device_id text NOT NULL,
    position bigint NOT NULL,
    sender text NOT NULL,
    type text NOT NULL,
    content_json text NOT NULL,
    origin text NOT NULL,
    message_id text NOT NULL,
    received_ts bigint NOT NULL,
    PRIMARY KEY (user_id, device_id, position)
);

-- (origin, message_id) of every m.direct_to_device EDU accepted, so a
-- message re-sent in another transaction is stored once. Rows older than the
-- retention window (services/keys/accounts/to_device.py) are pruned.
CREATE TABLE to_device_dedupe (
    origin text NOT NULL,
    message_id text NOT NULL,
    received_ts bigint NOT NULL,
    PRIMARY KEY (origin, message_id)
);
CREATE INDEX to_device_dedupe_age ON to_device_dedupe (received_ts);

-- The latest m.presence state of each remote user (one row per user).
-- last_active_ts = received_ts - last_active_ago.
CREATE TABLE remote_presence (
    user_id text PRIMARY KEY,
    presence text NOT NULL,
    last_active_ts bigint NOT NULL,
    status_msg text,
    currently_active boolean NOT NULL,
    received_ts bigint NOT NULL
);
