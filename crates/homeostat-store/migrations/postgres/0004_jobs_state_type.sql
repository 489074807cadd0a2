-- The jobs table, rebuilt for the CPU its hot path spends per row.
--
-- state becomes an enum: four bytes at a fixed offset instead of text. A
-- claim and a completion each rewrite a row into every index whose
-- predicate holds (not HOT: state is in the predicates), and PostgreSQL
-- reads every indexed or predicate column of both row versions to decide
-- that. A column sitting after a variable-width or a null column is found
-- by walking the row from its start; as text, state was such a column and
-- made every later one such a column too.
--
-- Column order: fixed-width NOT NULL columns first; then deadline_at (set
-- on enqueue, so queue after it keeps a cached offset); state; queue, the
-- one text column the indexes read; the lease columns the hot path writes;
-- the rest. Claims and completions still rewrite one stretch of the row,
-- from attempt to finished_at, which is what an update on the same page
-- logs.
--
-- fillfactor 50: a claim moves a batch of neighbouring rows at once; with
-- half of each page free their new versions stay on their page (logged as
-- a diff, not the whole row, and no search for room elsewhere).
CREATE TYPE job_state AS ENUM (
    'scheduled', 'awaiting_approval', 'queued', 'running',
    'succeeded', 'dead', 'cancelled', 'expired'
);

ALTER TABLE jobs RENAME TO jobs_v3;
ALTER INDEX jobs_pkey RENAME TO jobs_v3_pkey;
DROP INDEX jobs_claim, jobs_live_fingerprint, jobs_running_lease, jobs_scheduled_due,
    jobs_queued_deadline, jobs_approval_expiry;

CREATE TABLE jobs (
    id                   UUID PRIMARY KEY,
    tenant_id            UUID NOT NULL,
    created_at           BIGINT NOT NULL,
    timeout_ms           BIGINT NOT NULL,
    priority             BIGINT NOT NULL,
    max_attempts         BIGINT NOT NULL,
    base_priority        BIGINT NOT NULL,
    effective_priority   BIGINT NOT NULL,
    run_at               BIGINT NOT NULL,
    queued_at            BIGINT NOT NULL,
    occurrences          BIGINT NOT NULL DEFAULT 1,
    deadline_at          BIGINT,
    attempt              BIGINT NOT NULL DEFAULT 0,
    lease_token          BIGINT NOT NULL DEFAULT 0,
    updated_at           BIGINT NOT NULL,
    state                job_state NOT NULL,
    queue                TEXT NOT NULL,
    lease_expires_at     BIGINT,
    timeout_at           BIGINT,
    started_at           BIGINT,
    finished_at          BIGINT,
    lease_agent          UUID,
    approval_expires_at  BIGINT,
    kind                 TEXT NOT NULL,
    payload              TEXT NOT NULL,
    fingerprint          TEXT,
    last_error           TEXT,
    result               TEXT
) WITH (fillfactor = 50);

INSERT INTO jobs (id, tenant_id, created_at, timeout_ms, priority, max_attempts, base_priority,
    effective_priority, run_at, queued_at, occurrences, deadline_at, attempt, lease_token,
    updated_at, state, queue, lease_expires_at, timeout_at, started_at, finished_at, lease_agent,
    approval_expires_at, kind, payload, fingerprint, last_error, result)
SELECT id, tenant_id, created_at, timeout_ms, priority, max_attempts, base_priority,
    effective_priority, run_at, queued_at, occurrences, deadline_at, attempt, lease_token,
    updated_at, state::job_state, queue, lease_expires_at, timeout_at, started_at, finished_at,
    lease_agent, approval_expires_at, kind, payload, fingerprint, last_error, result
FROM jobs_v3;
DROP TABLE jobs_v3;

-- The indexes of 0001, unchanged.
CREATE INDEX jobs_claim ON jobs (queue, effective_priority DESC, queued_at) WHERE state = 'queued';
CREATE UNIQUE INDEX jobs_live_fingerprint ON jobs (tenant_id, fingerprint)
    WHERE fingerprint IS NOT NULL AND state NOT IN ('succeeded', 'dead', 'cancelled', 'expired');
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_scheduled_due ON jobs (run_at) WHERE state = 'scheduled';
CREATE INDEX jobs_queued_deadline ON jobs (deadline_at) WHERE state = 'queued' AND attempt = 0;
CREATE INDEX jobs_approval_expiry ON jobs (approval_expires_at) WHERE state = 'awaiting_approval';
