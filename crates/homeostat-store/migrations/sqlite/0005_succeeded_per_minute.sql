-- Jobs that succeeded, counted per minute for the dashboard's chart, instead
-- of 0004's index of every finished job (an index entry per completion);
-- stores count completions in memory and add them here every few seconds
-- (src/tally.rs).
CREATE TABLE succeeded_per_minute (
    minute INTEGER NOT NULL,  -- Unix epoch milliseconds / 60000
    slot   INTEGER NOT NULL,
    jobs   INTEGER NOT NULL,
    PRIMARY KEY (minute, slot)
) WITHOUT ROWID;

INSERT INTO succeeded_per_minute (minute, slot, jobs)
SELECT finished_at / 60000, 0, COUNT(*) FROM jobs
WHERE finished_at IS NOT NULL AND state = 'succeeded'
  AND finished_at >= CAST(strftime('%s', 'now') AS INTEGER) * 1000 - 86400000
GROUP BY 1;

-- Failing for good is rare: those jobs keep an index by finish time.
DROP INDEX jobs_finished;
CREATE INDEX jobs_failed_finished ON jobs (finished_at) WHERE state IN ('dead', 'expired');
