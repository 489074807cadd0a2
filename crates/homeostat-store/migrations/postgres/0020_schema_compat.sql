-- Which builds may use this schema: those that know at least migration
-- `oldest_reader`. A release whose migrations only add (tables, columns
-- that are nullable or have a default, indexes; docs/upgrade.md) leaves
-- it as it is, and the previous release's replicas go on serving on the
-- new schema during a rolling upgrade; a migration that removes or
-- changes what an older build uses raises it to its own version, and
-- older builds then refuse the schema.
CREATE TABLE schema_compat (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    oldest_reader BIGINT NOT NULL
);
INSERT INTO schema_compat (id, oldest_reader) VALUES (1, 20);
