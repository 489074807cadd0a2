-- The name of a workflow step that needs no other step, on its job: all a
-- claim tells the agent of such a step, so its claim reads nothing more
-- (a step with needs has its needs' outcomes read after its claim). NULL
-- for every other job, and for steps submitted by a build before this
-- column, whose claims read their names as before.
ALTER TABLE jobs ADD COLUMN root_step TEXT;

-- From this release `jobs.needed` may also be false, on PostgreSQL: the
-- step was needed, and the completion that finished it moved its
-- dependents itself (the store's completion statement for the steps a
-- replica leased), so the trigger of migration 0019, whose WHEN asks for
-- `needed`, leaves it alone. Only a step that succeeded is marked so, and
-- a succeeded step never runs again.
