-- The operator's administrative state (mxfed.events.v1.Admin): the server
-- block and allow lists, blocked rooms, and the audit records of every
-- administrative action.

-- One row: the version every replica compares (bumped by each change to the
-- lists or the blocked rooms) and the allow-list mode.
CREATE TABLE admin_policy (
    id smallint PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL,
    allow_list_mode boolean NOT NULL
);
INSERT INTO admin_policy (id, version, allow_list_mode) VALUES (1, 1, false);

CREATE TABLE server_rules (
    pattern text NOT NULL,
    allow boolean NOT NULL,   -- false: a block, true: an allow-list entry
    reason text NOT NULL,
    created_by text NOT NULL,
    created_ts bigint NOT NULL,
    PRIMARY KEY (allow, pattern)
);

CREATE TABLE blocked_rooms (
    room_id text PRIMARY KEY,
    reason text NOT NULL,
    created_by text NOT NULL,
    created_ts bigint NOT NULL
);

CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    ts bigint NOT NULL,
    caller text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    details_json text NOT NULL
);
