-- A key's waiting jobs in admission's whole order, the job's id last (the
-- tie between jobs queued in the same millisecond at one priority), so
-- that admission reads a key's first few waiting jobs straight from the
-- index instead of sorting every waiting job of the key: limited jobs
-- about 1.1x a second at a claim batch of 10 (docs/benchmarks.md).
CREATE INDEX job_limits_waiting_order
    ON job_limits (limit_name, key, priority DESC, queued_at, job_id)
    WHERE phase = 'waiting';
DROP INDEX job_limits_waiting;
