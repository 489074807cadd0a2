-- Flow control: limits on how many jobs of a key hold a slot (queued or
-- running) and how often they start (docs/flow-control.md). The same
-- tables and triggers as PostgreSQL's migration 0016, in SQLite's dialect:
-- see that file for why they are shaped so.
CREATE TABLE limits (
    name            TEXT PRIMARY KEY,
    max_running     INTEGER,
    rate_starts     INTEGER,
    rate_window_ms  INTEGER,
    strategy        TEXT NOT NULL,
    key_from        TEXT NOT NULL,
    applies         INTEGER NOT NULL DEFAULT 0,
    applies_queue   TEXT,
    applies_kind    TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

ALTER TABLE jobs ADD COLUMN limit_keys TEXT;
ALTER TABLE jobs ADD COLUMN limit_rated INTEGER;

CREATE TABLE job_limits (
    job_id      TEXT NOT NULL,
    limit_name  TEXT NOT NULL,
    key         TEXT NOT NULL,
    phase       TEXT NOT NULL,
    priority    INTEGER NOT NULL,
    queued_at   INTEGER NOT NULL,
    hold_until  INTEGER,
    PRIMARY KEY (job_id, limit_name)
) WITHOUT ROWID;
CREATE INDEX job_limits_waiting ON job_limits (limit_name, key, priority DESC, queued_at)
    WHERE phase = 'waiting';
CREATE INDEX job_limits_holding ON job_limits (limit_name, key)
    WHERE phase IN ('queued', 'running', 'stopping');

CREATE TABLE limit_starts (
    limit_name  TEXT NOT NULL,
    key         TEXT NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX limit_starts_key ON limit_starts (limit_name, key, at);
CREATE INDEX limit_starts_at ON limit_starts (at);

CREATE TABLE limit_wakeups (
    id          INTEGER PRIMARY KEY,
    limit_name  TEXT NOT NULL,
    key         TEXT NOT NULL,
    due_at      INTEGER NOT NULL
);
CREATE INDEX limit_wakeups_due ON limit_wakeups (due_at);

CREATE TRIGGER jobs_limits_inserted AFTER INSERT ON jobs
WHEN NEW.limit_keys IS NOT NULL
BEGIN
    INSERT OR IGNORE INTO job_limits (job_id, limit_name, key, phase, priority, queued_at)
    SELECT NEW.id, p.value->>0, p.value->>1,
           CASE WHEN NEW.state IN ('waiting', 'queued', 'running') THEN NEW.state ELSE 'idle' END,
           NEW.base_priority, NEW.queued_at
    FROM json_each(NEW.limit_keys) AS p;
    INSERT INTO limit_wakeups (limit_name, key, due_at)
    SELECT p.value->>0, p.value->>1, 0 FROM json_each(NEW.limit_keys) AS p
    WHERE NEW.state = 'waiting';
    UPDATE jobs SET limit_rated = 1 WHERE id = NEW.id AND EXISTS (
        SELECT 1 FROM limits l, json_each(NEW.limit_keys) AS p
        WHERE l.name = p.value->>0 AND l.rate_starts IS NOT NULL);
END;

CREATE TRIGGER jobs_limits_followed AFTER UPDATE OF state ON jobs
WHEN NEW.limit_keys IS NOT NULL AND OLD.state IS NOT NEW.state
     AND NOT (OLD.state = 'waiting' AND NEW.state = 'queued')
     AND NOT (OLD.state = 'queued' AND NEW.state = 'running' AND NEW.limit_rated IS NOT 1)
BEGIN
    -- Finished (not a running job just cancelled, whose agent still has its
    -- lease to stop it): no slot, no row.
    DELETE FROM job_limits WHERE job_id = NEW.id
      AND NEW.state NOT IN ('waiting', 'queued', 'running', 'scheduled', 'awaiting_approval')
      AND NOT (NEW.state = 'cancelled' AND OLD.state = 'running'
               AND OLD.lease_expires_at IS NOT NULL);
    -- Back from a finished state (a retry): its rows again.
    INSERT OR IGNORE INTO job_limits (job_id, limit_name, key, phase, priority, queued_at)
    SELECT NEW.id, p.value->>0, p.value->>1, 'idle', NEW.base_priority, NEW.queued_at
    FROM json_each(NEW.limit_keys) AS p
    WHERE OLD.state IN ('succeeded', 'dead', 'cancelled', 'expired')
      AND NEW.state IN ('waiting', 'queued', 'running', 'scheduled', 'awaiting_approval');
    UPDATE job_limits SET
        phase = CASE WHEN NEW.state IN ('waiting', 'queued', 'running') THEN NEW.state
                     WHEN NEW.state IN ('scheduled', 'awaiting_approval') THEN 'idle'
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

CREATE INDEX jobs_waiting_deadline ON jobs (deadline_at) WHERE state = 'waiting' AND attempt = 0;
