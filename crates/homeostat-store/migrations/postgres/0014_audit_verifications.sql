-- Verifications of the audit chain: requested by an operator (or by the
-- audit-chain-verify controller's own schedule), walked by that
-- controller's leader, progress and outcome stored so that every replica
-- reads them.
CREATE TABLE audit_verifications (
    id            UUID PRIMARY KEY,
    seq           BIGINT GENERATED ALWAYS AS IDENTITY,
    state         TEXT NOT NULL,
    requested_by  TEXT NOT NULL,
    requested_at  BIGINT NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT,
    attempts      BIGINT NOT NULL DEFAULT 0,
    checked       BIGINT NOT NULL DEFAULT 0,
    total         BIGINT NOT NULL DEFAULT 0,
    first_seq     BIGINT,
    break_seq     BIGINT,
    break_reason  TEXT,
    error         TEXT
);

-- Newest first by `seq` (ids made in one millisecond do not sort by time).
CREATE INDEX audit_verifications_seq ON audit_verifications (seq);

-- At most one verification is open (pending or running): a request while
-- one is open joins it.
CREATE UNIQUE INDEX audit_verifications_open ON audit_verifications ((state IN ('pending', 'running')))
    WHERE state IN ('pending', 'running');
