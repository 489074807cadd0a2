-- Replicas verify agents' credentials from memory and look for credentials
-- revoked since their last look, twice a second: the look reads this
-- index of revoked tokens instead of the whole table.
CREATE INDEX tokens_revoked_at ON tokens (revoked_at) WHERE revoked_at IS NOT NULL;
-- The agents list pages by name within a status (and the filter by status
-- is no longer ignored).
CREATE INDEX agents_status_name ON agents (status, name, id);
CREATE INDEX agents_name ON agents (name, id);
