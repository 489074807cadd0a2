-- Times are BIGINT Unix epoch milliseconds (exact comparisons, same as the
-- SQLite schema); ids are UUID v7.

CREATE TABLE tenants (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    tier        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE tokens (
    id          UUID PRIMARY KEY,
    kind        TEXT NOT NULL,
    hash        BYTEA NOT NULL UNIQUE,
    tenant_id   UUID,
    agent_id    UUID,
    admin       BOOLEAN NOT NULL DEFAULT FALSE,
    expires_at  BIGINT,
    uses_left   BIGINT,
    revoked_at  BIGINT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX tokens_expiry ON tokens (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX tokens_used_up ON tokens (id) WHERE uses_left = 0;
CREATE INDEX tokens_revoked ON tokens (id) WHERE revoked_at IS NOT NULL;

CREATE TABLE agents (
    id                 UUID PRIMARY KEY,
    tenant_id          UUID,
    name               TEXT NOT NULL,
    labels             TEXT NOT NULL,
    queues             TEXT[] NOT NULL,
    status             TEXT NOT NULL,
    last_heartbeat_at  BIGINT NOT NULL,
    registered_at      BIGINT NOT NULL
);
CREATE INDEX agents_online_heartbeat ON agents (last_heartbeat_at) WHERE status <> 'offline';

CREATE TABLE jobs (
    id                   UUID PRIMARY KEY,
    tenant_id            UUID NOT NULL,
    queue                TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    payload              TEXT NOT NULL,
    priority             BIGINT NOT NULL,
    base_priority        BIGINT NOT NULL,
    effective_priority   BIGINT NOT NULL,
    fingerprint          TEXT,
    occurrences          BIGINT NOT NULL DEFAULT 1,
    state                TEXT NOT NULL,
    attempt              BIGINT NOT NULL DEFAULT 0,
    max_attempts         BIGINT NOT NULL,
    timeout_ms           BIGINT NOT NULL,
    run_at               BIGINT NOT NULL,
    queued_at            BIGINT NOT NULL,
    deadline_at          BIGINT,
    approval_expires_at  BIGINT,
    lease_agent          UUID,
    lease_token          BIGINT NOT NULL DEFAULT 0,
    lease_expires_at     BIGINT,
    timeout_at           BIGINT,
    last_error           TEXT,
    result               TEXT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    started_at           BIGINT,
    finished_at          BIGINT
);
-- Claims: per queue, highest effective priority first, then oldest.
CREATE INDEX jobs_claim ON jobs (queue, effective_priority DESC, queued_at) WHERE state = 'queued';
-- Dedup: one live job per tenant and fingerprint. Terminal states are the
-- whitelist; any other state, including future ones, is live.
CREATE UNIQUE INDEX jobs_live_fingerprint ON jobs (tenant_id, fingerprint)
    WHERE fingerprint IS NOT NULL AND state NOT IN ('succeeded', 'dead', 'cancelled', 'expired');
-- Running jobs are few (bounded by the agents' capacity): one partial index
-- serves the lease, timeout and offline-agent sweeps, and every write on the
-- hot path maintains as few indexes as possible.
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_scheduled_due ON jobs (run_at) WHERE state = 'scheduled';
CREATE INDEX jobs_queued_deadline ON jobs (deadline_at) WHERE state = 'queued' AND attempt = 0;
-- Retention walks the primary key: ids are UUID v7, ordered by creation, and
-- a job created before the retention cutoff is almost always finished.
CREATE INDEX jobs_approval_expiry ON jobs (approval_expires_at) WHERE state = 'awaiting_approval';

CREATE TABLE audit_events (
    seq        BIGINT PRIMARY KEY,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    details    TEXT NOT NULL,
    prev_hash  BYTEA NOT NULL,
    hash       BYTEA NOT NULL
);
CREATE INDEX audit_events_at ON audit_events (at);

-- One row: the head of the chain (for appends) and where the retained chain
-- starts (moved by retention).
CREATE TABLE audit_chain (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    next_seq         BIGINT NOT NULL,
    head_hash        BYTEA NOT NULL,
    first_seq        BIGINT NOT NULL,
    first_prev_hash  BYTEA NOT NULL
);
INSERT INTO audit_chain VALUES (1, 1, '\x0000000000000000000000000000000000000000000000000000000000000000', 1, '\x0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT,
    epoch       BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);

CREATE TABLE notifications (
    id               UUID PRIMARY KEY,
    event            TEXT NOT NULL,
    payload          TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    sent_at          BIGINT
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE state = 'pending';
