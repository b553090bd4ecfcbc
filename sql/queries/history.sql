-- The history read behind get_run(run_id, include_history=True).

-- name: run_history
-- One round trip, however many step runs and attempts the run has: the run,
-- then its step runs (inserted_at, id: step_runs_run_id_step_key finds them
-- by run) each with its attempts (attempt_number:
-- step_attempts_step_run_id_number_key), plus each step run's stored kind
-- and recorded manual decision, the sources of the audit events; then the
-- run's status changes from the transition log, by run_version
-- (run_transitions_pkey serves them in order). Built as one JSON text that
-- msgspec decodes in one pass; the declared-step view and the audit events
-- are derived from it in Python. Timestamps go through
-- squidmesh.utc_iso so the session's TimeZone never matters. Names are
-- schema-qualified (see runs.sql).
-- No row = no such run.
SELECT pg_catalog.json_build_object(
    'run', squidmesh.run_json(r),
    'step_runs', coalesce((
        SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
            'kind', s.kind,
            'manual', s.manual,
            -- The shape of squidmesh.step_run_json(s), written out: that
            -- function holds a sub-select, so PostgreSQL cannot inline it,
            -- and calling it per step run makes this read a third slower.
            'step_run', pg_catalog.json_build_object(
                'id', s.id, 'step', s.step, 'status', s.status, 'input', s.input,
                'output', s.output, 'last_error', s.last_error,
                'attempts', coalesce((
                    SELECT pg_catalog.json_agg(squidmesh.attempt_json(a)
                                               ORDER BY a.attempt_number)
                    FROM squidmesh.step_attempts a
                    WHERE a.step_run_id OPERATOR(pg_catalog.=) s.id), '[]'),
                'inserted_at', squidmesh.utc_iso(s.inserted_at),
                'updated_at', squidmesh.utc_iso(s.updated_at)))
            ORDER BY s.inserted_at, s.id)
        FROM squidmesh.step_runs s WHERE s.run_id OPERATOR(pg_catalog.=) r.id), '[]'),
    -- squidmesh.RunChange's shape; position '' (a history entry is not a
    -- place in the change feed).
    'transitions', coalesce((
        SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
            'position', '', 'run_id', l.run_id, 'workflow', l.workflow,
            'run_version', l.run_version, 'from_status', l.from_status,
            'to_status', l.to_status, 'at', squidmesh.utc_iso(l.at))
            ORDER BY l.run_version)
        FROM squidmesh.run_transitions l WHERE l.run_id OPERATOR(pg_catalog.=) r.id), '[]')
)::pg_catalog.text
FROM squidmesh.runs r
WHERE r.id OPERATOR(pg_catalog.=) $1;
