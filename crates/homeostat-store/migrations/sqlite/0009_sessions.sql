-- Dashboard sessions: a random id (stored hashed) for a signed-in API key,
-- ended by sign-out, by idling or by age, and with the key (a revoked or
-- expired key ends its sessions; a deleted one deletes them).
CREATE TABLE dashboard_sessions (
    hash          BLOB PRIMARY KEY,
    token_id      TEXT NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    created_at    INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL
);
CREATE INDEX dashboard_sessions_seen ON dashboard_sessions (last_seen_at);
CREATE INDEX dashboard_sessions_token ON dashboard_sessions (token_id);

-- Secrets the server keeps for itself, shared by its replicas: the key
-- that binds a sign-in form's token to this server.
CREATE TABLE server_secrets (
    name    TEXT PRIMARY KEY,
    secret  BLOB NOT NULL
);
