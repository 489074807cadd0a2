-- Workflow steps pending on their needs and jobs waiting for their limits
-- are live jobs: the tenants' quotas, /metrics and the count of running
-- workflows read them through these, as the other live states through
-- theirs. Indexes only (additive: docs/upgrade.md).
CREATE INDEX jobs_pending ON jobs (workflow_id) WHERE state = 'pending';
CREATE INDEX jobs_waiting ON jobs (queue) WHERE state = 'waiting';
