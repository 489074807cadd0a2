-- A claim's gate: true when the agent may claim, otherwise an error whose
-- message is the agent's status (`missing` when there is no such agent).
-- The claim calls it once per statement, before its locking scan, so an
-- empty claim still says in one statement why it was empty when the agent
-- is the reason; without it the claim returned its rows through a
-- data-modifying CTE to add that status row, and materializing the rows
-- cost about 5,300 server instructions a job, 2.5 % (docs/benchmarks.md).
CREATE FUNCTION agent_may_claim(agent UUID) RETURNS BOOLEAN
LANGUAGE plpgsql STABLE AS $$
DECLARE
    agent_status TEXT;
BEGIN
    SELECT status INTO agent_status FROM agents WHERE id = agent;
    IF agent_status IS DISTINCT FROM 'online' THEN
        RAISE EXCEPTION USING ERRCODE = 'QH001', MESSAGE = COALESCE(agent_status, 'missing');
    END IF;
    RETURN TRUE;
END
$$;
