-- Repeatable: squidmesh.migrate() runs this file again, after the numbered
-- migrations, whenever its checksum changes, in one transaction with
-- search_path = pg_catalog, pg_temp. CREATE OR REPLACE cannot change a
-- function's return type or its argument names and types: such a change needs
-- a new name (squidmesh.run_json_v2, so code still running the old release
-- keeps its function) or a numbered migration that drops the old function.
--
-- The trigger function of runs_stamp_updated_at. The trigger itself belongs to
-- the table and lives in the numbered migrations (0002_hardening): which table
-- and which events fire it is schema, not code.
--
-- A run's updated_at is the clock at the write, read after PostgreSQL holds
-- the row lock (a BEFORE UPDATE trigger runs then, while an expression in the
-- UPDATE's SET list is evaluated before the wait), and never earlier than the
-- version it replaces (OLD is the row as committed by the writer waited for).

CREATE OR REPLACE FUNCTION squidmesh.stamp_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Qualified rather than SET search_path: a SET clause costs a
    -- configuration save and restore on every row.
    NEW.updated_at := GREATEST(pg_catalog.clock_timestamp(), OLD.updated_at);
    RETURN NEW;
END;
$$;
