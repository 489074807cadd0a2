-- What the leader of each exclusive controller last published about its
-- runs (JSON), so every replica can show it.
ALTER TABLE leases ADD COLUMN status TEXT;

-- An agent's credentials, found by agent (revocation, removal, and whether
-- an agent heard while offline may come back).
CREATE INDEX tokens_agent ON tokens (agent_id) WHERE agent_id IS NOT NULL;

-- Each replica's last readiness write: /readyz's proof that writes succeed
-- (one row a replica, rewritten every few seconds).
CREATE TABLE write_probes (
    replica  TEXT PRIMARY KEY,
    at       BIGINT NOT NULL
);

-- The agent process last heard (a random id each process announces in its
-- heartbeats): a new one means the agent restarted, and the jobs leased to
-- the previous process that the new one does not hold are reclaimed.
ALTER TABLE agents ADD COLUMN incarnation TEXT;
