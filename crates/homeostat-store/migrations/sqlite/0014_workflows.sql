-- Workflows (docs/workflows.md): the same tables and trigger as
-- PostgreSQL's migration 0019, in SQLite's dialect: see that file for why
-- they are shaped so. A skipped step finishes in the trigger, which then
-- runs for it in turn (the store turns `recursive_triggers` on).
CREATE TABLE workflows (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    name          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    cancelled_at  INTEGER
);
CREATE INDEX workflows_tenant ON workflows (tenant_id, id);

CREATE TABLE workflow_steps (
    job_id         TEXT PRIMARY KEY,
    workflow_id    TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    ord            INTEGER NOT NULL,
    cond           TEXT NOT NULL,
    needs_left     INTEGER NOT NULL,
    not_succeeded  INTEGER NOT NULL DEFAULT 0,
    skipped        INTEGER NOT NULL DEFAULT 0,
    deadline_ms    INTEGER NOT NULL,
    UNIQUE (workflow_id, name)
);

CREATE TABLE workflow_needs (
    job_id     TEXT NOT NULL,
    parent_id  TEXT NOT NULL,
    PRIMARY KEY (parent_id, job_id)
);
CREATE INDEX workflow_needs_job ON workflow_needs (job_id);

ALTER TABLE jobs ADD COLUMN workflow_id TEXT;
ALTER TABLE jobs ADD COLUMN needed INTEGER;

CREATE TRIGGER jobs_workflow_finished AFTER UPDATE OF state ON jobs
WHEN NEW.needed
     AND NEW.state IN ('succeeded', 'dead', 'cancelled', 'expired')
     AND OLD.state NOT IN ('succeeded', 'dead', 'cancelled', 'expired')
BEGIN
    UPDATE workflow_steps
       SET needs_left = needs_left - 1,
           not_succeeded = not_succeeded + (NEW.state <> 'succeeded')
     WHERE job_id IN (SELECT job_id FROM workflow_needs WHERE parent_id = NEW.id);
    UPDATE workflow_steps SET skipped = 1
     WHERE job_id IN (SELECT n.job_id FROM workflow_needs n JOIN jobs j ON j.id = n.job_id
                       WHERE n.parent_id = NEW.id AND j.state = 'pending')
       AND needs_left = 0
       AND NOT (cond = 'always' OR (cond = 'on_success' AND not_succeeded = 0)
                OR (cond = 'on_failure' AND not_succeeded > 0));
    UPDATE jobs
       SET state = CASE WHEN s.skipped THEN 'cancelled'
                        WHEN jobs.approval_expires_at IS NOT NULL THEN 'awaiting_approval'
                        WHEN jobs.run_at > NEW.updated_at THEN 'scheduled'
                        WHEN jobs.limit_keys IS NOT NULL THEN 'waiting'
                        ELSE 'queued' END,
           queued_at = MAX(jobs.run_at, NEW.updated_at),
           fair_at = MAX(jobs.run_at, NEW.updated_at),
           deadline_at = CASE WHEN s.skipped THEN jobs.deadline_at
                              ELSE COALESCE(jobs.deadline_at, MAX(jobs.run_at, NEW.updated_at) + s.deadline_ms) END,
           finished_at = CASE WHEN s.skipped THEN NEW.updated_at END,
           last_error = CASE WHEN s.skipped THEN 'skipped: its condition (' || s.cond || ') did not hold' END,
           updated_at = NEW.updated_at
      FROM workflow_steps s
     WHERE s.job_id = jobs.id AND s.needs_left = 0 AND jobs.state = 'pending'
       AND jobs.id IN (SELECT job_id FROM workflow_needs WHERE parent_id = NEW.id);
END;

-- Retention deletes a step's job by its own finish time; the step's rows
-- go with it, and a workflow with its last step (PostgreSQL's 0019).
CREATE TRIGGER jobs_workflow_deleted AFTER DELETE ON jobs
WHEN OLD.workflow_id IS NOT NULL
BEGIN
    DELETE FROM workflow_needs WHERE job_id = OLD.id;
    DELETE FROM workflow_needs WHERE parent_id = OLD.id;
    DELETE FROM workflow_steps WHERE job_id = OLD.id;
    DELETE FROM workflows WHERE id = OLD.workflow_id
       AND NOT EXISTS (SELECT 1 FROM workflow_steps s WHERE s.workflow_id = OLD.workflow_id);
END;

-- A step under limits holds no slot while it is pending, keeps its rows
-- when a retry makes it pending again, and once released waits for its
-- limits (PostgreSQL's migration 0019 says why). Migration 0012's
-- trigger, with `pending` among the idle states.
DROP TRIGGER jobs_limits_followed;
CREATE TRIGGER jobs_limits_followed AFTER UPDATE OF state ON jobs
WHEN NEW.limit_keys IS NOT NULL AND OLD.state IS NOT NEW.state
     AND NOT (OLD.state = 'waiting' AND NEW.state = 'queued')
     AND NOT (OLD.state = 'queued' AND NEW.state = 'running' AND NEW.limit_rated IS NOT 1)
BEGIN
    -- Finished (not a running job just cancelled, whose agent still has its
    -- lease to stop it): no slot, no row.
    DELETE FROM job_limits WHERE job_id = NEW.id
      AND NEW.state NOT IN ('waiting', 'queued', 'running', 'scheduled', 'awaiting_approval', 'pending')
      AND NOT (NEW.state = 'cancelled' AND OLD.state = 'running'
               AND OLD.lease_expires_at IS NOT NULL);
    -- Back from a finished state (a retry): its rows again.
    INSERT OR IGNORE INTO job_limits (job_id, limit_name, key, phase, priority, queued_at)
    SELECT NEW.id, p.value->>0, p.value->>1, 'idle', NEW.base_priority, NEW.queued_at
    FROM json_each(NEW.limit_keys) AS p
    WHERE OLD.state IN ('succeeded', 'dead', 'cancelled', 'expired')
      AND NEW.state IN ('waiting', 'queued', 'running', 'scheduled', 'awaiting_approval', 'pending');
    UPDATE job_limits SET
        phase = CASE WHEN NEW.state IN ('waiting', 'queued', 'running') THEN NEW.state
                     WHEN NEW.state IN ('scheduled', 'awaiting_approval', 'pending') THEN 'idle'
                     ELSE 'stopping' END,
        priority = NEW.base_priority,
        queued_at = NEW.queued_at,
        hold_until = CASE WHEN NEW.state = 'cancelled' THEN OLD.lease_expires_at END
    WHERE job_id = NEW.id;
    INSERT INTO limit_starts (limit_name, key, at)
    SELECT jl.limit_name, jl.key, NEW.started_at
    FROM job_limits jl JOIN limits l ON l.name = jl.limit_name
    WHERE NEW.state = 'running' AND jl.job_id = NEW.id AND l.rate_starts IS NOT NULL;
    INSERT INTO limit_wakeups (limit_name, key, due_at)
    SELECT jl.limit_name, jl.key, NEW.started_at + l.rate_window_ms
    FROM job_limits jl JOIN limits l ON l.name = jl.limit_name
    WHERE NEW.state = 'running' AND jl.job_id = NEW.id AND l.rate_starts IS NOT NULL;
    INSERT INTO limit_wakeups (limit_name, key, due_at)
    SELECT p.value->>0, p.value->>1,
           CASE WHEN NEW.state = 'cancelled' AND OLD.state = 'running'
                     AND OLD.lease_expires_at IS NOT NULL THEN OLD.lease_expires_at ELSE 0 END
    FROM json_each(NEW.limit_keys) AS p
    WHERE NEW.state = 'waiting'
       OR (OLD.state IN ('queued', 'running') AND NEW.state NOT IN ('queued', 'running'));
END;
