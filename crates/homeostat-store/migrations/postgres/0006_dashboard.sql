-- What the dashboard reads at any size of the table: jobs finished per
-- minute over the last hour (a range of this index, not a scan of the
-- history), and the dead jobs that need attention (few, newest first,
-- among a history of succeeded ones).
CREATE INDEX jobs_finished ON jobs (finished_at, state) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_dead ON jobs (id) WHERE state = 'dead';
