-- A step's context written by the completion that finished all its needs
-- and released it, so that its claim reads nothing more (before this, a
-- step with needs had its needs' outcomes read after its claim: a round
-- trip of its own, about a tenth of a step's cost).
--
-- `jobs.step`: every step's name, on its job (`root_step` keeps a root's,
-- for the builds before this one), so that a completion has its steps'
-- names in its own rows. `jobs.step_context`: the needs' names and
-- results, as JSON, written by that completion only, and only when every
-- need the step has is among the steps it finished; NULL otherwise, and
-- then the claim reads them as before. Both NULL for steps submitted by
-- earlier builds.
ALTER TABLE jobs ADD COLUMN step TEXT;
ALTER TABLE jobs ADD COLUMN step_context TEXT;
