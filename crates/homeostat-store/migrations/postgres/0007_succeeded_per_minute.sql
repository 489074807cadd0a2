-- Jobs that succeeded, counted per minute for the dashboard's chart. 0006's
-- index of every finished job cost each completion an index entry (4.7 % of
-- the server's instructions a job); stores now count completions in memory
-- and add them here every few seconds (src/tally.rs). `slot` is the
-- writing store's, so replicas never wait on each other's row.
CREATE TABLE succeeded_per_minute (
    minute BIGINT NOT NULL,  -- Unix epoch milliseconds / 60000
    slot   BIGINT NOT NULL,
    jobs   BIGINT NOT NULL,
    PRIMARY KEY (minute, slot)
);

INSERT INTO succeeded_per_minute (minute, slot, jobs)
SELECT finished_at / 60000, 0, COUNT(*) FROM jobs
WHERE finished_at IS NOT NULL AND state = 'succeeded'
  AND finished_at >= (date_part('epoch', now()) * 1000)::bigint - 86400000
GROUP BY 1;

-- Failing for good is rare: those jobs keep an index by finish time.
DROP INDEX jobs_finished;
CREATE INDEX jobs_failed_finished ON jobs (finished_at) WHERE state IN ('dead', 'expired');
