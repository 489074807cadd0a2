-- Workflow steps pending on their needs and jobs waiting for their limits
-- are live jobs, counted through these (PostgreSQL's 0022 says why).
CREATE INDEX jobs_pending ON jobs (workflow_id) WHERE state = 'pending';
CREATE INDEX jobs_waiting ON jobs (queue) WHERE state = 'waiting';
