-- Redactions whose target we did not hold when they were stored
-- (https://spec.matrix.org/v1.19/rooms/v3/#handling-redactions: a redaction is applied once we have both
-- events). When the target arrives in the room — whatever the input kind —
-- the room batch redacts it if any row allows it, then drops the rows: the
-- decision is final, a redaction that may not redact it stays stored unapplied.
CREATE TABLE waiting_redactions (
    room_id text NOT NULL,
    target_id text NOT NULL,
    redaction_id text NOT NULL,
    -- The redactor's power level reached "redact" in the state before the
    -- redaction.
    authorised boolean NOT NULL,
    -- Without the power: the target must come from this server (its sender's
    -- server; in v1/v2 rooms the domain of its event id).
    redactor_server text NOT NULL,
    PRIMARY KEY (room_id, target_id, redaction_id)
);
