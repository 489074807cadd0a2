-- What the leader of each exclusive controller last published about its
-- runs (JSON), so every replica can show it.
ALTER TABLE leases ADD COLUMN status TEXT;
