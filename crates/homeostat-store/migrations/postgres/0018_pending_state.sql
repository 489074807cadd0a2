-- Workflow steps wait for the steps they need in a state of their own
-- (migration 0019). A new enum value cannot be used in the transaction that
-- adds it, hence a migration of its own.
ALTER TYPE job_state ADD VALUE IF NOT EXISTS 'pending' BEFORE 'scheduled';
