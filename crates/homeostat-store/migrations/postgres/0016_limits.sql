-- Flow control: limits on how many jobs of a key hold a slot (queued or
-- running) and how often they start (docs/flow-control.md).
--
-- A job under limits carries its resolved (limit, key) pairs in
-- `jobs.limit_keys`, a JSON array of pairs; NULL for every other job, so the
-- triggers below never run for them. The triggers keep `job_limits` in step
-- with the job's state whatever changes it (enqueue, claim, completion,
-- failure, cancel, release, reclaim, expiry): a slot is freed in the
-- transaction that frees it, and the change leaves a wake-up for the keys
-- it concerns. Admission (waiting -> queued) is the store's, under a lock
-- per key (src/limits.rs).
CREATE TABLE limits (
    name            TEXT PRIMARY KEY,
    max_running     BIGINT,
    rate_starts     BIGINT,
    rate_window_ms  BIGINT,
    strategy        TEXT NOT NULL,
    key_from        TEXT NOT NULL,
    applies         BOOLEAN NOT NULL DEFAULT false,
    applies_queue   TEXT,
    applies_kind    TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

ALTER TABLE jobs ADD COLUMN limit_keys TEXT;
-- Whether one of the job's limits has a rate (NULL for every other job):
-- only then does its claim have anything to record (a start), so only
-- then does the trigger run on its claim. Set at insert, and for the jobs
-- of a limit that gains a rate (src/limits.rs).
ALTER TABLE jobs ADD COLUMN limit_rated BOOLEAN;

-- One row per job and limit while the job is live (and, for a running job
-- that was cancelled, until its agent has had its lease to stop it).
-- phase: waiting | queued | running | stopping | idle (scheduled or
-- awaiting approval).
CREATE TABLE job_limits (
    job_id      UUID NOT NULL,
    limit_name  TEXT NOT NULL,
    key         TEXT NOT NULL,
    phase       TEXT NOT NULL,
    priority    BIGINT NOT NULL,
    queued_at   BIGINT NOT NULL,
    hold_until  BIGINT,
    PRIMARY KEY (job_id, limit_name)
);
-- A key's waiting jobs in the order they are admitted.
CREATE INDEX job_limits_waiting ON job_limits (limit_name, key, priority DESC, queued_at)
    WHERE phase = 'waiting';
-- A key's slots.
CREATE INDEX job_limits_holding ON job_limits (limit_name, key)
    WHERE phase IN ('queued', 'running', 'stopping');

-- Starts of jobs under limits with a rate, kept for the longest window.
CREATE TABLE limit_starts (
    limit_name  TEXT NOT NULL,
    key         TEXT NOT NULL,
    at          BIGINT NOT NULL
);
CREATE INDEX limit_starts_key ON limit_starts (limit_name, key, at);
CREATE INDEX limit_starts_at ON limit_starts (at);

-- Keys to look at again: a slot was freed, a job began to wait, or a rate
-- window will have room (`due_at`).
CREATE TABLE limit_wakeups (
    id          BIGSERIAL PRIMARY KEY,
    limit_name  TEXT NOT NULL,
    key         TEXT NOT NULL,
    due_at      BIGINT NOT NULL
);
CREATE INDEX limit_wakeups_due ON limit_wakeups (due_at);

CREATE FUNCTION job_limits_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_limits (job_id, limit_name, key, phase, priority, queued_at)
    SELECT NEW.id, p->>0, p->>1,
           CASE NEW.state WHEN 'waiting' THEN 'waiting' WHEN 'queued' THEN 'queued'
                          WHEN 'running' THEN 'running' ELSE 'idle' END,
           NEW.base_priority, NEW.queued_at
    FROM jsonb_array_elements(NEW.limit_keys::jsonb) AS p
    ON CONFLICT DO NOTHING;
    IF NEW.state = 'waiting' THEN
        INSERT INTO limit_wakeups (limit_name, key, due_at)
        SELECT p->>0, p->>1, 0 FROM jsonb_array_elements(NEW.limit_keys::jsonb) AS p;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_limits_inserted AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.limit_keys IS NOT NULL)
    EXECUTE FUNCTION job_limits_inserted();

CREATE FUNCTION job_limits_rated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.limit_rated := EXISTS (
        SELECT 1 FROM limits l, jsonb_array_elements(NEW.limit_keys::jsonb) AS p
        WHERE l.name = p->>0 AND l.rate_starts IS NOT NULL);
    RETURN NEW;
END
$$;

CREATE TRIGGER jobs_limits_rated BEFORE INSERT ON jobs
    FOR EACH ROW WHEN (NEW.limit_keys IS NOT NULL)
    EXECUTE FUNCTION job_limits_rated();

CREATE FUNCTION job_limits_followed() RETURNS trigger
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
        WHEN NEW.state IN ('scheduled', 'awaiting_approval') THEN 'idle'
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

CREATE TRIGGER jobs_limits_followed AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.limit_keys IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state
                       AND NOT (OLD.state = 'waiting' AND NEW.state = 'queued')
                       AND NOT (OLD.state = 'queued' AND NEW.state = 'running'
                                AND NEW.limit_rated IS NOT TRUE))
    EXECUTE FUNCTION job_limits_followed();
-- Admission (waiting -> queued) moves its jobs' slots in its own statement,
-- a set at a time (src/admission.rs). A claim of a job under no rate
-- changes nothing a limit counts (queued and running both hold a slot): no
-- trigger runs, and its slot's phase stays `queued` (what limits show reads
-- the job's state).

-- A job under limits that goes back to be run again (a retry, a reclaim, a
-- release) waits for its limits again rather than being queued: its start
-- already counts in its keys' rates, and a second one must be admitted.
-- The statements that requeue say so themselves (`CASE WHEN limit_keys IS
-- NULL THEN 'queued' ELSE 'waiting' END`): a BEFORE trigger that rewrote
-- the state would run for every update of every job.

-- Waiting jobs expire by their start-by deadline as queued ones do.
CREATE INDEX jobs_waiting_deadline ON jobs (deadline_at) WHERE state = 'waiting' AND attempt = 0;
