-- Jobs under limits wait for a slot or a start in their own state (flow
-- control, migration 0016). A new enum value cannot be used in the
-- transaction that adds it, hence a migration of its own.
ALTER TYPE job_state ADD VALUE IF NOT EXISTS 'waiting' BEFORE 'queued';
