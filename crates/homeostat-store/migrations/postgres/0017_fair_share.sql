-- Fair share between tenants (docs/flow-control.md): claims order a
-- queue's jobs of one priority by `fair_at`, each job's turn, instead of
-- the time it was queued. A tenant's jobs enqueued into a queue take turns
-- spaced by its tier's share from its last queued one, so a backlog of one
-- tenant stretches into the future and another tenant's job slots in
-- between; with no backlog a job's turn is the time it was queued, and the
-- order is the old one. Ageing counts from the turn.
--
-- The tier is the weight of a tenant's share, no longer a base priority:
-- the live jobs' priorities lose it here.
ALTER TABLE jobs ADD COLUMN fair_at BIGINT;
UPDATE jobs SET fair_at = queued_at WHERE state = 'queued';
UPDATE jobs SET base_priority = priority, effective_priority = priority
 WHERE state NOT IN ('succeeded', 'dead', 'cancelled', 'expired') AND base_priority <> priority;

DROP INDEX jobs_claim;
CREATE INDEX jobs_claim ON jobs (queue, effective_priority DESC, fair_at) WHERE state = 'queued';
-- A tenant's last turn in a queue, read by every enqueue.
CREATE INDEX jobs_fair_flow ON jobs (tenant_id, queue, fair_at) WHERE state = 'queued';
