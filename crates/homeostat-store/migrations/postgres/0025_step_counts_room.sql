-- A step's counts (`needs_left`, `not_succeeded`, `skipped`) move once for
-- each finished need, and nothing indexes them: with room on its page the
-- new version is a heap-only tuple, written without touching the table's
-- two indexes. Steps are inserted in bulk, which fills pages to the brim,
-- so each page keeps a fifth of itself for those moves (pages written
-- before this migration keep none).
ALTER TABLE workflow_steps SET (fillfactor = 80);
