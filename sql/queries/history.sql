-- The history read behind get_run(run_id, include_history=True).

-- name: run_history
-- One round trip, however many step runs and attempts the run has: one
-- statement (one snapshot) whose rows are plain columns, as three plain
-- SELECTs would return them, with nothing built per row on the server. Every
-- row has the thirteen columns of a run (see runs.sql) and then "part", which
-- says what the row is:
--   0  the run;
--   1  an attempt: id, status, last_error = its error, replayed_from_run_id
--      = its step run's id, version = its attempt_number, inserted_at,
--      updated_at (step_attempts_step_run_id_number_key finds them);
--   2  a step run: id, workflow = its step, trigger = its kind, status,
--      payload = its input, context = its output, current_step = its
--      recorded manual decision, last_error, inserted_at, updated_at
--      (step_runs_run_id_step_key finds them by run);
--   3  a status change from the transition log: workflow, trigger = its
--      from_status, status = its to_status, version = its run_version,
--      inserted_at and updated_at = its at (run_transitions_pkey finds them).
-- The other columns are NULL; the types are those of the run's columns (ids
-- as uuid_send bytea, jsonb as text, timestamps as float8 seconds since
-- 1970 UTC, so neither a pool's codecs nor the session's TimeZone matter).
-- In part order (the run, then the attempts, so that they are at hand for
-- their step runs); attempts by attempt_number, step runs by (inserted_at,
-- id), changes by run_version. squidmesh/_history.py builds the Run, its
-- StepRuns with their attempts, the declared-step view and the audit events.
-- No part-0 row = no such run. Names are schema-qualified (see runs.sql).
SELECT pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
       r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
       r.current_step, r.last_error::pg_catalog.text AS last_error,
       pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
       r.version, r.idempotency_key,
       pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
       pg_catalog.date_part('epoch', r.updated_at) AS updated_at,
       0 AS part
FROM squidmesh.runs r
WHERE r.id OPERATOR(pg_catalog.=) $1
UNION ALL
SELECT pg_catalog.uuid_send(a.id), NULL, NULL, a.status, NULL, NULL, NULL,
       a.error::pg_catalog.text, pg_catalog.uuid_send(a.step_run_id), a.attempt_number,
       NULL, pg_catalog.date_part('epoch', a.inserted_at),
       pg_catalog.date_part('epoch', a.updated_at), 1
FROM squidmesh.step_runs s
JOIN squidmesh.step_attempts a ON a.step_run_id OPERATOR(pg_catalog.=) s.id
WHERE s.run_id OPERATOR(pg_catalog.=) $1
UNION ALL
SELECT pg_catalog.uuid_send(s.id), s.step, s.kind, s.status, s.input::pg_catalog.text,
       s.output::pg_catalog.text, s.manual::pg_catalog.text, s.last_error::pg_catalog.text,
       NULL, NULL, NULL, pg_catalog.date_part('epoch', s.inserted_at),
       pg_catalog.date_part('epoch', s.updated_at), 2
FROM squidmesh.step_runs s
WHERE s.run_id OPERATOR(pg_catalog.=) $1
UNION ALL
SELECT NULL, l.workflow, l.from_status, l.to_status, NULL, NULL, NULL, NULL, NULL,
       l.run_version, NULL, pg_catalog.date_part('epoch', l.at),
       pg_catalog.date_part('epoch', l.at), 3
FROM squidmesh.run_transitions l
WHERE l.run_id OPERATOR(pg_catalog.=) $1
ORDER BY part, version, inserted_at, id;
