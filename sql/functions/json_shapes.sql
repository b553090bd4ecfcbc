-- Repeatable: squidmesh.migrate() runs this file again, after the numbered
-- migrations, whenever its checksum changes, in one transaction with
-- search_path = pg_catalog, pg_temp. CREATE OR REPLACE cannot change a
-- function's return type or its argument names and types: such a change needs
-- a new name (squidmesh.run_json_v2, so code still running the old release
-- keeps its function) or a numbered migration that drops the old function.
--
-- SQL-standard bodies (RETURN ...) resolve every name once, when created:
-- built-ins through the pinned search_path, squidmesh's own names qualified.
-- A file of functions called from such a body sorts before its callers; here
-- utc_iso and attempt_json come before the functions that use them.

-- The one JSON shape of a run that every query returns, decoded by msgspec
-- straight into squidmesh.Run in one pass. Timestamps are formatted in UTC
-- explicitly so that the session's TimeZone setting never matters.
CREATE OR REPLACE FUNCTION squidmesh.utc_iso(ts timestamptz) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');

CREATE OR REPLACE FUNCTION squidmesh.run_json(r squidmesh.runs) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN json_build_object(
        'id', r.id,
        'workflow', r.workflow,
        'trigger', r.trigger,
        'status', r.status,
        'payload', r.payload,
        'context', r.context,
        'current_step', r.current_step,
        'last_error', r.last_error,
        'replayed_from_run_id', r.replayed_from_run_id,
        'version', r.version,
        'idempotency_key', r.idempotency_key,
        'inserted_at', squidmesh.utc_iso(r.inserted_at),
        'updated_at', squidmesh.utc_iso(r.updated_at));

-- The JSON shapes of a step attempt and of a step run (its attempts in
-- attempt_number order), decoded by msgspec into squidmesh.StepAttempt and
-- squidmesh.StepRun; used by every step query and the history read.
CREATE OR REPLACE FUNCTION squidmesh.attempt_json(a squidmesh.step_attempts) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN json_build_object(
        'id', a.id,
        'attempt_number', a.attempt_number,
        'status', a.status,
        'error', a.error,
        'inserted_at', squidmesh.utc_iso(a.inserted_at),
        'updated_at', squidmesh.utc_iso(a.updated_at));

CREATE OR REPLACE FUNCTION squidmesh.step_run_json(s squidmesh.step_runs) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN json_build_object(
        'id', s.id,
        'step', s.step,
        'status', s.status,
        'input', s.input,
        'output', s.output,
        'last_error', s.last_error,
        -- step_attempts_step_run_id_number_key serves this in order.
        'attempts', coalesce((
            SELECT json_agg(squidmesh.attempt_json(a) ORDER BY a.attempt_number)
            FROM squidmesh.step_attempts a WHERE a.step_run_id = s.id), '[]'),
        'inserted_at', squidmesh.utc_iso(s.inserted_at),
        'updated_at', squidmesh.utc_iso(s.updated_at));
