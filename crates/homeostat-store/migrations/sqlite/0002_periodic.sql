-- The last cron slot each periodic schedule enqueued a job for: claiming a
-- slot is a conditional update, so one replica wins each slot.
CREATE TABLE periodic_slots (
    name       TEXT PRIMARY KEY,
    last_slot  INTEGER NOT NULL
);
