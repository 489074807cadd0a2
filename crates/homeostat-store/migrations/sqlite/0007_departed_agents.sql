-- agent-health forgets agents offline past retention, oldest first: this
-- index holds only offline agents, by when each was last heard.
CREATE INDEX agents_offline_heard ON agents (last_heartbeat_at) WHERE status = 'offline';
