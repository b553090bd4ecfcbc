-- Repeatable: squidmesh.migrate() runs this file again, after the numbered
-- migrations, whenever its checksum changes, in one transaction with
-- search_path = pg_catalog, pg_temp. CREATE OR REPLACE cannot change a
-- function's return type or its argument names and types: such a change needs
-- a new name (squidmesh.run_json_v2, so code still running the old release
-- keeps its function) or a numbered migration that drops the old function.
--
-- The legal moves of a run's status, the same table as squidmesh.state_machine
-- (a test compares all 64 pairs). Written as one CASE so the trigger that
-- calls it pays no table lookup.

CREATE OR REPLACE FUNCTION squidmesh.legal_move(from_status text, to_status text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    -- Not a status at all: NULL, so the trigger leaves it to runs_status_check,
    -- whose error says what is wrong.
    WHEN to_status NOT IN ('pending', 'running', 'retrying', 'paused',
                           'failed', 'completed', 'cancelling', 'cancelled') THEN NULL
    WHEN from_status = 'pending' THEN to_status IN ('running', 'failed', 'cancelled')
    WHEN from_status = 'running'
        THEN to_status IN ('retrying', 'paused', 'failed', 'completed', 'cancelling')
    WHEN from_status = 'retrying' THEN to_status IN ('running', 'failed', 'cancelling')
    WHEN from_status = 'paused' THEN to_status IN ('running', 'failed', 'completed', 'cancelled')
    WHEN from_status = 'cancelling' THEN to_status IN ('cancelled', 'failed')
    ELSE false
END;
