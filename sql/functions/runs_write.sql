-- Repeatable: squidmesh.migrate() runs this file again, after the numbered
-- migrations, whenever its checksum changes, in one transaction with
-- search_path = pg_catalog, pg_temp. CREATE OR REPLACE cannot change a
-- function's return type or its argument names and types: such a change needs
-- a new name (squidmesh.run_json_v2, so code still running the old release
-- keeps its function) or a numbered migration that drops the old function.
--
-- The trigger function of runs_write (the trigger belongs to the table: see
-- sql/migrations/0003_operate.sql), fired BEFORE every UPDATE of a run:
--   * version: bumped by one, unless the statement set it itself (code of an
--     earlier release does, and must not bump twice during a rolling deploy);
--   * updated_at: the clock at the write, read after PostgreSQL holds the row
--     lock (a BEFORE ROW trigger runs then, while an expression in the
--     UPDATE's SET list is evaluated before the wait), never earlier than the
--     version it replaces (OLD is the row as committed by the writer waited for);
--   * status: an illegal move is refused, whoever sends it, with SQLSTATE
--     SQM01 and the two statuses as JSON in DETAIL (squidmesh maps it to
--     InvalidTransition). An operator repairing a run (or a test setting one
--     up) may allow any move for one transaction:
--     SET LOCAL squidmesh.unchecked_moves = on. Version and updated_at are
--     still written;
--   * the transition log: a status change appends its row to
--     squidmesh.run_transitions (sql/migrations/0005_feed.sql), in the
--     writer's transaction and under the row lock, so one run's changes get
--     increasing seq. Raw SQL changes are logged too: the feed stays complete.
-- Names are qualified rather than pinned with SET search_path: a SET clause
-- costs a configuration save and restore on every row.

CREATE OR REPLACE FUNCTION squidmesh.runs_write() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    legal boolean;
BEGIN
    IF NEW.version OPERATOR(pg_catalog.=) OLD.version THEN
        NEW.version := OLD.version OPERATOR(pg_catalog.+) 1;
    END IF;
    NEW.updated_at := GREATEST(pg_catalog.clock_timestamp(), OLD.updated_at);
    -- A value that is not a status at all is left to runs_status_check, whose
    -- error says what is wrong.
    IF NEW.status OPERATOR(pg_catalog.<>) OLD.status
       AND NEW.status OPERATOR(pg_catalog.=) ANY ('{pending,running,retrying,paused,failed,completed,cancelling,cancelled}'::pg_catalog.text[]) THEN
        -- The legal moves: the table of squidmesh.state_machine (a test tries
        -- all 64 pairs). Written inline: a call of a SQL function here cost
        -- 8 % of transition_run at concurrency 1, this costs nothing measurable.
        legal := CASE
               WHEN OLD.status OPERATOR(pg_catalog.=) 'pending' THEN NEW.status
                   OPERATOR(pg_catalog.=) ANY ('{running,failed,cancelled}'::pg_catalog.text[])
               WHEN OLD.status OPERATOR(pg_catalog.=) 'running' THEN NEW.status
                   OPERATOR(pg_catalog.=) ANY ('{retrying,paused,failed,completed,cancelling}'::pg_catalog.text[])
               WHEN OLD.status OPERATOR(pg_catalog.=) 'retrying' THEN NEW.status
                   OPERATOR(pg_catalog.=) ANY ('{running,failed,cancelling}'::pg_catalog.text[])
               WHEN OLD.status OPERATOR(pg_catalog.=) 'paused' THEN NEW.status
                   OPERATOR(pg_catalog.=) ANY ('{running,failed,completed,cancelled}'::pg_catalog.text[])
               WHEN OLD.status OPERATOR(pg_catalog.=) 'cancelling' THEN NEW.status
                   OPERATOR(pg_catalog.=) ANY ('{cancelled,failed}'::pg_catalog.text[])
               ELSE false
           END;
        IF NOT legal AND pg_catalog.current_setting('squidmesh.unchecked_moves', true)
           IS DISTINCT FROM 'on' THEN
            RAISE EXCEPTION 'cannot move run % from % to %', OLD.id, OLD.status, NEW.status
                USING ERRCODE = 'SQM01',
                      DETAIL = pg_catalog.json_build_object(
                          'from_status', OLD.status, 'to_status', NEW.status)::pg_catalog.text;
        END IF;
        -- squidmesh:log (benchmarks/bench_feed.py cuts this statement out to
        -- measure what the log costs)
        INSERT INTO squidmesh.run_transitions
            (run_id, run_version, workflow, from_status, to_status, at)
        VALUES (NEW.id, NEW.version, NEW.workflow, OLD.status, NEW.status, NEW.updated_at);
        -- squidmesh:end-log
    END IF;
    RETURN NEW;
END;
$$;
