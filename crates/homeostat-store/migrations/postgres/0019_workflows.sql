-- Workflows (docs/workflows.md): steps are jobs that need other steps.
--
-- A step's job carries its workflow (`jobs.workflow_id`; NULL for every
-- other job) and whether other steps need it (`jobs.needed`: the trigger
-- below runs for those alone). A step created
-- with needs is `pending`; `workflow_steps` counts how many of its needs
-- have not finished and how many did not succeed. The trigger runs in the
-- transaction that finishes a step, whatever finishes it (completion,
-- failure, cancel, expiry, a deadline): each dependent's counts move, and a
-- dependent whose last need this was is released (queued, awaiting
-- approval or scheduled, as its job asks) when its condition holds, or
-- skipped (cancelled), which finishes it in turn and moves its own
-- dependents.
--
-- No foreign key points at `jobs`: its checks would run on every update
-- of every job. Retention removes a workflow's rows with its jobs.
CREATE TABLE workflows (
    id            UUID PRIMARY KEY,
    tenant_id     UUID NOT NULL,
    name          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    cancelled_at  BIGINT
);
CREATE INDEX workflows_tenant ON workflows (tenant_id, id);

CREATE TABLE workflow_steps (
    job_id         UUID PRIMARY KEY,
    workflow_id    UUID NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    ord            BIGINT NOT NULL,
    cond           TEXT NOT NULL,
    needs_left     BIGINT NOT NULL,
    not_succeeded  BIGINT NOT NULL DEFAULT 0,
    skipped        BOOLEAN NOT NULL DEFAULT false,
    -- A released step without a deadline of its own expires this long
    -- after its release, not after the workflow's creation.
    deadline_ms    BIGINT NOT NULL,
    UNIQUE (workflow_id, name)
);

CREATE TABLE workflow_needs (
    job_id     UUID NOT NULL,
    parent_id  UUID NOT NULL,
    PRIMARY KEY (parent_id, job_id)
);
CREATE INDEX workflow_needs_job ON workflow_needs (job_id);

ALTER TABLE jobs ADD COLUMN workflow_id UUID;
-- Other steps need this one: only then does its finish move anything (a
-- leaf step, the most of a fan-out, finishes without the trigger).
ALTER TABLE jobs ADD COLUMN needed BOOLEAN;

-- One statement: each dependent's counts move; those whose last need this
-- was are released or skipped; claims waiting on the released steps'
-- queues hear of them at commit, on every replica, as of an enqueue
-- (`crate::signals`; origin 0 is no replica's, so each wakes its own
-- waiters). The counts are the row's before this update: `needs_left = 1`
-- means this was its last need.
CREATE FUNCTION workflow_step_finished() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    announced BIGINT;
BEGIN
    WITH moved AS (
        UPDATE workflow_steps s
           SET needs_left = s.needs_left - 1,
               not_succeeded = s.not_succeeded + (NEW.state <> 'succeeded')::int,
               skipped = s.needs_left = 1 AND NOT (
                   s.cond = 'always'
                   OR (s.cond = 'on_success' AND s.not_succeeded + (NEW.state <> 'succeeded')::int = 0)
                   OR (s.cond = 'on_failure' AND s.not_succeeded + (NEW.state <> 'succeeded')::int > 0))
          FROM workflow_needs n
         WHERE n.parent_id = NEW.id AND s.job_id = n.job_id
        RETURNING s.job_id, s.needs_left, s.skipped, s.cond, s.deadline_ms),
    released AS (
        UPDATE jobs j
           SET state = CASE WHEN m.skipped THEN 'cancelled'::job_state
                            WHEN j.approval_expires_at IS NOT NULL THEN 'awaiting_approval'::job_state
                            WHEN j.run_at > NEW.updated_at THEN 'scheduled'::job_state
                            WHEN j.limit_keys IS NOT NULL THEN 'waiting'::job_state
                            ELSE 'queued'::job_state END,
               queued_at = GREATEST(j.run_at, NEW.updated_at),
               fair_at = GREATEST(j.run_at, NEW.updated_at),
               deadline_at = CASE WHEN m.skipped THEN j.deadline_at
                                  ELSE COALESCE(j.deadline_at, GREATEST(j.run_at, NEW.updated_at) + m.deadline_ms) END,
               finished_at = CASE WHEN m.skipped THEN NEW.updated_at END,
               last_error = CASE WHEN m.skipped THEN 'skipped: its condition (' || m.cond || ') did not hold' END,
               updated_at = NEW.updated_at
          FROM moved m
         WHERE j.id = m.job_id AND m.needs_left = 0 AND j.state = 'pending'
        RETURNING j.tenant_id, j.queue, j.state)
    SELECT count(pg_notify('homeostat_queued', '0 ' || r.n || ' ' || r.tenant_id || ' ' || r.queue))
      INTO announced
      FROM (SELECT tenant_id, queue, count(*) AS n FROM released
             WHERE state = 'queued' GROUP BY tenant_id, queue) r;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_workflow_finished AFTER UPDATE OF state ON jobs
FOR EACH ROW
WHEN (NEW.needed
      AND NEW.state IN ('succeeded', 'dead', 'cancelled', 'expired')
      AND OLD.state NOT IN ('succeeded', 'dead', 'cancelled', 'expired'))
EXECUTE FUNCTION workflow_step_finished();

-- Retention deletes a step's job by its own finish time, like any job's;
-- the step's rows go with it, and a workflow with it its last step. (A
-- step whose job is gone counts as met for a retry.)
CREATE FUNCTION workflow_step_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM workflow_needs WHERE job_id = OLD.id;
    DELETE FROM workflow_needs WHERE parent_id = OLD.id;
    DELETE FROM workflow_steps WHERE job_id = OLD.id;
    DELETE FROM workflows w WHERE w.id = OLD.workflow_id
       AND NOT EXISTS (SELECT 1 FROM workflow_steps s WHERE s.workflow_id = OLD.workflow_id);
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_workflow_deleted AFTER DELETE ON jobs
FOR EACH ROW WHEN (OLD.workflow_id IS NOT NULL)
EXECUTE FUNCTION workflow_step_deleted();

-- A step under limits holds no slot while it is pending (its rows' phase
-- is `idle`, as a scheduled job's), keeps its rows when a retry makes it
-- pending again, and once released waits for its limits like any job
-- (the release writes `waiting` for a job with limit keys). Migration
-- 0016's function, with `pending` among the idle states.
CREATE OR REPLACE FUNCTION job_limits_followed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    phase_now TEXT;
BEGIN
    -- The two changes every job under limits goes through get one statement
    -- each (a row trigger's statements are most of what limits cost).
    -- A claim: the job runs; its start counts in its keys' rates, and the
    -- key is looked at again when the start's window ends.
    IF OLD.state = 'queued' AND NEW.state = 'running' THEN
        WITH u AS (
            UPDATE job_limits SET phase = 'running' WHERE job_id = NEW.id
            RETURNING limit_name, key),
        s AS (
            INSERT INTO limit_starts (limit_name, key, at)
            SELECT u.limit_name, u.key, NEW.started_at
            FROM u JOIN limits l ON l.name = u.limit_name
            WHERE l.rate_starts IS NOT NULL
            RETURNING limit_name, key)
        INSERT INTO limit_wakeups (limit_name, key, due_at)
        SELECT s.limit_name, s.key, NEW.started_at + l.rate_window_ms
        FROM s JOIN limits l ON l.name = s.limit_name;
        RETURN NULL;
    END IF;
    -- An end that frees the job's slots at once: its keys are woken.
    IF OLD.state IN ('queued', 'running')
       AND NEW.state IN ('succeeded', 'dead', 'expired', 'cancelled')
       AND NOT (NEW.state = 'cancelled' AND OLD.state = 'running'
                AND OLD.lease_expires_at IS NOT NULL) THEN
        WITH d AS (DELETE FROM job_limits WHERE job_id = NEW.id RETURNING limit_name, key)
        INSERT INTO limit_wakeups (limit_name, key, due_at) SELECT limit_name, key, 0 FROM d;
        RETURN NULL;
    END IF;
    phase_now := CASE
        WHEN NEW.state = 'waiting' THEN 'waiting'
        WHEN NEW.state = 'queued' THEN 'queued'
        WHEN NEW.state = 'running' THEN 'running'
        WHEN NEW.state IN ('scheduled', 'awaiting_approval', 'pending') THEN 'idle'
        WHEN NEW.state = 'cancelled' AND OLD.state = 'running'
             AND OLD.lease_expires_at IS NOT NULL THEN 'stopping'
        ELSE 'done' END;
    IF phase_now = 'done' THEN
        DELETE FROM job_limits WHERE job_id = NEW.id;
    ELSE
        IF OLD.state IN ('succeeded', 'dead', 'cancelled', 'expired') THEN
            -- Back from a finished state (a retry): its rows again.
            INSERT INTO job_limits (job_id, limit_name, key, phase, priority, queued_at)
            SELECT NEW.id, p->>0, p->>1, phase_now, NEW.base_priority, NEW.queued_at
            FROM jsonb_array_elements(NEW.limit_keys::jsonb) AS p
            ON CONFLICT DO NOTHING;
        END IF;
        UPDATE job_limits SET phase = phase_now, priority = NEW.base_priority,
            queued_at = NEW.queued_at,
            hold_until = CASE WHEN phase_now = 'stopping' THEN OLD.lease_expires_at END
        WHERE job_id = NEW.id;
    END IF;
    IF NEW.state = 'waiting'
       OR (OLD.state IN ('queued', 'running') AND NEW.state NOT IN ('queued', 'running')) THEN
        INSERT INTO limit_wakeups (limit_name, key, due_at)
        SELECT p->>0, p->>1,
               CASE WHEN phase_now = 'stopping' THEN OLD.lease_expires_at ELSE 0 END
        FROM jsonb_array_elements(NEW.limit_keys::jsonb) AS p;
    END IF;
    RETURN NULL;
END
$$;
