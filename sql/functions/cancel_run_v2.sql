-- Repeatable: squidmesh.migrate() runs this file again, after the numbered
-- migrations, whenever its checksum changes, in one transaction with
-- search_path = pg_catalog, pg_temp. CREATE OR REPLACE cannot change a
-- function's return type or its argument names and types: such a change needs
-- a new name (squidmesh.run_json_v2, so code still running the old release
-- keeps its function) or a numbered migration that drops the old function.
--

-- cancel_run_v2: cancel_run (sql/functions/cancel_run.sql, kept for code of the
-- previous release during a rolling deploy) with the expected version: when
-- p_expected_version is given and the run read under the lock has another,
-- nothing is written and the caller raises VersionConflict. It also returns
-- that version, and leaves version and updated_at to the runs_write trigger.
--
-- cancel_run in one round trip, as a function because its steps need fresh
-- snapshots: the run row is locked first, and only then are the paused
-- step's step run and attempt looked up, so a step run or attempt that a
-- worker committed while we waited for the lock is seen and failed too.
-- Decided on the state read under the lock:
--   1. pending or paused -> cancelled;
--   2. running or retrying -> cancelling (the runtime finishes the step);
--   3. anything else: no write; the caller raises InvalidTransition.
-- current_step is cleared in cases 1 and 2. For a paused run, the paused
-- step's step run (if still running) and its latest running attempt are
-- failed with p_error. No row back means the run does not exist.
--
-- A plpgsql body resolves names at call time, in the caller's session, so its
-- search_path is pinned. It needs READ COMMITTED, where each statement sees
-- rows committed while it waited; under a stricter isolation it raises
-- serialization_failure (40001), which squidmesh answers by running it again
-- at READ COMMITTED. Timestamps are the clock after the lock is held.

CREATE OR REPLACE FUNCTION squidmesh.cancel_run_v2(
    p_id uuid, p_error jsonb, p_expected_version bigint)
RETURNS TABLE (from_status text, version bigint, run text, failed_step text,
               attempt_number integer, duration_s double precision)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_status text;
    v_step text;
    v_step_run_id uuid;
    v_started timestamptz;
    v_attempt_started timestamptz;
    v_now timestamptz;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'squidmesh.cancel_run_v2 must run at READ COMMITTED, not %',
            current_setting('transaction_isolation')
            USING ERRCODE = 'serialization_failure';
    END IF;
    SELECT r.status, r.current_step, r.version INTO v_status, v_step, version
    FROM squidmesh.runs r WHERE r.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    from_status := v_status;
    IF v_status NOT IN ('pending', 'paused', 'running', 'retrying')
       OR version <> coalesce(p_expected_version, version) THEN
        RETURN NEXT;
        RETURN;
    END IF;
    v_now := clock_timestamp();
    UPDATE squidmesh.runs r SET
        status = CASE WHEN v_status IN ('pending', 'paused') THEN 'cancelled' ELSE 'cancelling' END,
        current_step = NULL
    WHERE r.id = p_id
    RETURNING squidmesh.run_json(r)::text INTO run;
    IF v_status = 'paused' AND v_step IS NOT NULL THEN
        -- Lock order: run (above), then step run, then attempt.
        UPDATE squidmesh.step_runs s SET
            status = 'failed', last_error = p_error, updated_at = GREATEST(v_now, s.updated_at)
        WHERE s.run_id = p_id AND s.step = v_step AND s.status = 'running'
        RETURNING s.id, s.step, s.inserted_at INTO v_step_run_id, failed_step, v_started;
        IF v_step_run_id IS NOT NULL THEN
            UPDATE squidmesh.step_attempts a SET
                status = 'failed', error = p_error, updated_at = GREATEST(v_now, a.updated_at)
            WHERE a.id = (SELECT a2.id FROM squidmesh.step_attempts a2
                          WHERE a2.step_run_id = v_step_run_id AND a2.status = 'running'
                          ORDER BY a2.attempt_number DESC LIMIT 1
                          FOR UPDATE)
            RETURNING a.attempt_number, a.inserted_at INTO attempt_number, v_attempt_started;
            -- From the attempt's start, or the step run's when it had none, to
            -- a clock read after both were locked: never negative.
            duration_s := extract(epoch FROM
                clock_timestamp() - coalesce(v_attempt_started, v_started));
        END IF;
    END IF;
    RETURN NEXT;
END;
$$;
