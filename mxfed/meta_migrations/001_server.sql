-- The server this database belongs to (one row), and the signing keys it has used.
CREATE TABLE server (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    server_name text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE signing_keys (
    key_id text PRIMARY KEY,
    verify_key text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
