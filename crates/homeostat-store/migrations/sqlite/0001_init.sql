-- Times are integer Unix epoch milliseconds; ids are UUID v7 text.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    tier        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    hash        BLOB NOT NULL UNIQUE,
    tenant_id   TEXT,
    agent_id    TEXT,
    admin       INTEGER NOT NULL DEFAULT 0,
    expires_at  INTEGER,
    uses_left   INTEGER,
    revoked_at  INTEGER,
    created_at  INTEGER NOT NULL
);
CREATE INDEX tokens_expiry ON tokens (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX tokens_used_up ON tokens (id) WHERE uses_left = 0;
CREATE INDEX tokens_revoked ON tokens (id) WHERE revoked_at IS NOT NULL;

CREATE TABLE agents (
    id                 TEXT PRIMARY KEY,
    tenant_id          TEXT,
    name               TEXT NOT NULL,
    labels             TEXT NOT NULL,
    queues             TEXT NOT NULL,
    status             TEXT NOT NULL,
    last_heartbeat_at  INTEGER NOT NULL,
    registered_at      INTEGER NOT NULL
);
CREATE INDEX agents_online_heartbeat ON agents (last_heartbeat_at) WHERE status <> 'offline';

CREATE TABLE jobs (
    id                   TEXT PRIMARY KEY,
    tenant_id            TEXT NOT NULL,
    queue                TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    payload              TEXT NOT NULL,
    priority             INTEGER NOT NULL,
    base_priority        INTEGER NOT NULL,
    effective_priority   INTEGER NOT NULL,
    fingerprint          TEXT,
    occurrences          INTEGER NOT NULL DEFAULT 1,
    state                TEXT NOT NULL,
    attempt              INTEGER NOT NULL DEFAULT 0,
    max_attempts         INTEGER NOT NULL,
    timeout_ms           INTEGER NOT NULL,
    run_at               INTEGER NOT NULL,
    queued_at            INTEGER NOT NULL,
    deadline_at          INTEGER,
    approval_expires_at  INTEGER,
    lease_agent          TEXT,
    lease_token          INTEGER NOT NULL DEFAULT 0,
    lease_expires_at     INTEGER,
    timeout_at           INTEGER,
    last_error           TEXT,
    result               TEXT,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    started_at           INTEGER,
    finished_at          INTEGER
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
    seq        INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    details    TEXT NOT NULL,
    prev_hash  BLOB NOT NULL,
    hash       BLOB NOT NULL
);
CREATE INDEX audit_events_at ON audit_events (at);

-- One row: the head of the chain (for appends) and where the retained chain
-- starts (moved by retention).
CREATE TABLE audit_chain (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    next_seq         INTEGER NOT NULL,
    head_hash        BLOB NOT NULL,
    first_seq        INTEGER NOT NULL,
    first_prev_hash  BLOB NOT NULL
);
INSERT INTO audit_chain VALUES (1, 1, zeroblob(32), 1, zeroblob(32));

CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT,
    epoch       INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);

CREATE TABLE notifications (
    id               TEXT PRIMARY KEY,
    event            TEXT NOT NULL,
    payload          TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    sent_at          INTEGER
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE state = 'pending';
