-- A job queued for a waiting claim that this replica woke is that claim's
-- for a moment: until `promised_until` (ms), claims that were not woken
-- (agents coming back on their own, on any replica) pass it by, so that
-- the woken claim finds it. Without this, at 10,000 agents about one job
-- in eight went to such a claim first and its woken claim found nothing.
-- NULL: anyone's (and on rows queued by earlier builds). Cleared by the
-- claim that takes the job.
ALTER TABLE jobs ADD COLUMN promised_until BIGINT;
