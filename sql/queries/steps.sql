-- Named queries over squidmesh.step_runs and squidmesh.step_attempts: the
-- step history writes of a runtime, and pause_run.
--
-- Every step-run query returns the step run as one JSON text (attempts
-- included, by attempt_number) that msgspec decodes straight into
-- squidmesh.StepRun; attempt queries return a squidmesh.StepAttempt the same
-- way. JSON goes in as $n::text::jsonb so any pool codec works.
--
-- Lock order everywhere: run row, then step run row, then attempt row. The
-- step writes below lock only the row they change (the UPDATE or INSERT
-- takes it); inserting a step run also takes a KEY SHARE lock on its run
-- through the foreign key, so it waits behind a transaction that holds the
-- run FOR UPDATE (cancel_run, pause_run).
--
-- Every name is schema-qualified: see the header of runs.sql. Step runs and
-- attempts are stamped with the clock at the write, never earlier than the
-- stored value (the run row is stamped by its trigger, see runs.sql).

-- name: begin_step
-- One round trip. $1 new id, $2 run id, $3 step, $4 input, $5/$6 the
-- registered workflows declaring $3 with a manual kind, and those kinds.
-- ON CONFLICT DO UPDATE (not DO NOTHING plus a SELECT) because only it
-- returns a row committed by a concurrent caller after this statement's
-- snapshot was taken: two racing callers both get the one step run. A
-- scheduled (pending) step run is started; any other is returned as is.
-- No row = the run does not exist.
WITH run AS (
    SELECT id, workflow FROM squidmesh.runs WHERE id OPERATOR(pg_catalog.=) $2
)
INSERT INTO squidmesh.step_runs AS s
    (id, run_id, step, kind, status, input, inserted_at, updated_at)
SELECT $1, run.id, $3,
       coalesce((SELECT m.kind
                 FROM ROWS FROM (pg_catalog.unnest($5::pg_catalog.text[]),
                           pg_catalog.unnest($6::pg_catalog.text[]))
                     AS m(workflow, kind)
                 WHERE m.workflow OPERATOR(pg_catalog.=) run.workflow), 'step'),
       'running', $4::pg_catalog.text::pg_catalog.jsonb, c.ts, c.ts
FROM run, (SELECT pg_catalog.clock_timestamp() AS ts) c
ON CONFLICT (run_id, step) DO UPDATE SET
    status = CASE WHEN s.status OPERATOR(pg_catalog.=) 'pending' THEN 'running'
                  ELSE s.status END,
    input = CASE WHEN s.status OPERATOR(pg_catalog.=) 'pending' THEN EXCLUDED.input
                 ELSE s.input END,
    updated_at = CASE WHEN s.status OPERATOR(pg_catalog.=) 'pending'
                      THEN GREATEST(pg_catalog.clock_timestamp(), s.updated_at)
                      ELSE s.updated_at END
RETURNING squidmesh.step_run_json(s)::pg_catalog.text;

-- name: schedule_step
-- One round trip, the same shape as begin_step: a new step run is pending;
-- an existing one is returned unchanged (the no-op update is what makes
-- RETURNING hand back a row a concurrent caller just committed).
WITH run AS (
    SELECT id, workflow FROM squidmesh.runs WHERE id OPERATOR(pg_catalog.=) $2
)
INSERT INTO squidmesh.step_runs AS s
    (id, run_id, step, kind, status, input, inserted_at, updated_at)
SELECT $1, run.id, $3,
       coalesce((SELECT m.kind
                 FROM ROWS FROM (pg_catalog.unnest($5::pg_catalog.text[]),
                           pg_catalog.unnest($6::pg_catalog.text[]))
                     AS m(workflow, kind)
                 WHERE m.workflow OPERATOR(pg_catalog.=) run.workflow), 'step'),
       'pending', $4::pg_catalog.text::pg_catalog.jsonb, c.ts, c.ts
FROM run, (SELECT pg_catalog.clock_timestamp() AS ts) c
ON CONFLICT (run_id, step) DO UPDATE SET status = s.status
RETURNING squidmesh.step_run_json(s)::pg_catalog.text;

-- name: finish_step
-- One round trip: complete ($2 = 'completed', output $3) or fail ($2 =
-- 'failed', last_error $4) a step run. A NULL $3 / $4 keeps the stored value.
-- No row = no such step run.
UPDATE squidmesh.step_runs s SET
    status = $2,
    output = coalesce($3::pg_catalog.text::pg_catalog.jsonb, s.output),
    last_error = coalesce($4::pg_catalog.text::pg_catalog.jsonb, s.last_error),
    updated_at = GREATEST(pg_catalog.clock_timestamp(), s.updated_at)
WHERE s.id OPERATOR(pg_catalog.=) $1
RETURNING squidmesh.step_run_json(s)::pg_catalog.text;

-- name: complete_manual_step
-- One round trip: complete a manual step run with output $2 and record the
-- human decision in `manual` (event $3, actor $4, comment $5, metadata $6,
-- at $7, or the clock at the write when NULL), always formatted in UTC.
UPDATE squidmesh.step_runs s SET
    status = 'completed',
    output = coalesce($2::pg_catalog.text::pg_catalog.jsonb, s.output),
    manual = pg_catalog.jsonb_build_object(
        'event', $3::pg_catalog.text, 'actor', $4::pg_catalog.text,
        'comment', $5::pg_catalog.text,
        'metadata', $6::pg_catalog.text::pg_catalog.jsonb,
        'at', squidmesh.utc_iso(coalesce($7::pg_catalog.timestamptz,
                                         pg_catalog.clock_timestamp()))),
    updated_at = GREATEST(pg_catalog.clock_timestamp(), s.updated_at)
WHERE s.id OPERATOR(pg_catalog.=) $1
RETURNING squidmesh.step_run_json(s)::pg_catalog.text;

-- name: record_resume
-- One round trip: store what a paused step resumes to; status unchanged.
UPDATE squidmesh.step_runs s SET
    resume = $2::pg_catalog.text::pg_catalog.jsonb,
    updated_at = GREATEST(pg_catalog.clock_timestamp(), s.updated_at)
WHERE s.id OPERATOR(pg_catalog.=) $1
RETURNING squidmesh.step_run_json(s)::pg_catalog.text;

-- name: lock_step_run
-- The locking read of begin_attempt's contended path (see lock_and_begin_attempt).
SELECT id FROM squidmesh.step_runs WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE;

-- name: lock_and_begin_attempt
-- $1 new id, $2 step run id. Locks the step run, then inserts number max + 1
-- (step_attempts_step_run_id_number_key serves the max).
-- Under READ COMMITTED the max is read from the statement's snapshot, which
-- predates a competitor that committed while we waited for (or just before
-- we took) the lock; max + 1 then collides with that competitor's number and
-- the unique constraint refuses it. Never a wrong number, but the caller must
-- retry: it does so as lock_step_run + lock_and_begin_attempt in one
-- transaction, where this statement's snapshot is taken after the lock is held.
-- No row = no such step run.
WITH step_run AS (
    SELECT id FROM squidmesh.step_runs WHERE id OPERATOR(pg_catalog.=) $2 FOR UPDATE
)
INSERT INTO squidmesh.step_attempts AS a
    (id, step_run_id, attempt_number, status, inserted_at, updated_at)
SELECT $1, sr.id,
       1 OPERATOR(pg_catalog.+) coalesce((
           SELECT pg_catalog.max(x.attempt_number) FROM squidmesh.step_attempts x
           WHERE x.step_run_id OPERATOR(pg_catalog.=) sr.id), 0),
       'running', c.ts, c.ts
FROM step_run sr, (SELECT pg_catalog.clock_timestamp() AS ts) c
RETURNING squidmesh.attempt_json(a)::pg_catalog.text;

-- name: finish_attempt
-- One round trip: $2 = 'completed' or 'failed', error $3 (NULL keeps it).
-- No row = no such attempt.
UPDATE squidmesh.step_attempts a SET
    status = $2,
    error = coalesce($3::pg_catalog.text::pg_catalog.jsonb, a.error),
    updated_at = GREATEST(pg_catalog.clock_timestamp(), a.updated_at)
WHERE a.id OPERATOR(pg_catalog.=) $1
RETURNING squidmesh.attempt_json(a)::pg_catalog.text;

-- name: lock_and_pause_run
-- One round trip for every branch, decided on the state read under the lock.
-- $1 run, $2 step run, $3 attempt (NULL = none), $4 the states paused may
-- be entered from, $5..$10 the (given?, value) field writes, $11 the
-- cancellation error, $12 the expected version (NULL = any).
--   0. another version than $12: no write, the caller raises VersionConflict;
--   1. failed / completed / cancelled: the run is untouched; the step run and
--      attempt are failed if still running (the cancellation error for a
--      cancelled run, else "run already finalized before pause progression"
--      with the status);
--   2. cancelling: the same finalisation with the cancellation error, and
--      the run moves to cancelled keeping only the given context
--      (current_step and last_error cleared, as progress_run does);
--   3. a legal move to paused: write it with the fields;
--   4. anything else: no write, the caller raises InvalidTransition.
-- Nothing is written unless the step run belongs to the run and the attempt
-- (when given) to the step run; the found flags let the caller say which.
-- Locks: the run (locked), then the step run (step joins locked), then the
-- attempt (attempt joins step): the data dependencies fix that order.
-- duration_s counts to the clock after the locks are held, so it is never
-- negative however long the wait. The row starts with the run's columns
-- (those of every query that returns a run, see runs.sql): as written
-- (branches 2 and 3), else as read under the lock.
WITH locked AS (
    SELECT r.id, r.status, r.version, r AS run
    FROM squidmesh.runs r WHERE r.id OPERATOR(pg_catalog.=) $1 FOR UPDATE
), step AS (
    SELECT s.id, s.step, s.inserted_at
    FROM squidmesh.step_runs s JOIN locked ON s.run_id OPERATOR(pg_catalog.=) locked.id
    WHERE s.id OPERATOR(pg_catalog.=) $2 FOR UPDATE OF s
), attempt AS (
    SELECT a.id
    FROM squidmesh.step_attempts a JOIN step ON a.step_run_id OPERATOR(pg_catalog.=) step.id
    WHERE a.id OPERATOR(pg_catalog.=) $3 FOR UPDATE OF a
), decision AS (
    SELECT locked.id,
           CASE WHEN $12::pg_catalog.int8 IS NOT NULL
                     AND locked.version OPERATOR(pg_catalog.<>) $12
                    THEN 'conflict'
                WHEN locked.status OPERATOR(pg_catalog.=)
                         ANY ('{failed,completed,cancelled}'::pg_catalog.text[])
                    THEN 'terminal'
                WHEN locked.status OPERATOR(pg_catalog.=) 'cancelling' THEN 'cancel'
                WHEN locked.status OPERATOR(pg_catalog.=) ANY ($4::pg_catalog.text[])
                    THEN 'pause'
                ELSE 'illegal' END AS branch,
           CASE WHEN locked.status OPERATOR(pg_catalog.=)
                         ANY ('{cancelled,cancelling}'::pg_catalog.text[])
                    THEN $11::pg_catalog.text::pg_catalog.jsonb
                ELSE pg_catalog.jsonb_build_object(
                    'message', 'run already finalized before pause progression',
                    'status', locked.status) END AS error,
           pg_catalog.clock_timestamp() AS at
    FROM locked
    WHERE EXISTS (SELECT 1 FROM step)
      AND ($3::pg_catalog.uuid IS NULL OR EXISTS (SELECT 1 FROM attempt))
), moved AS (
    UPDATE squidmesh.runs r SET
        status = CASE WHEN d.branch OPERATOR(pg_catalog.=) 'cancel' THEN 'cancelled'
                      ELSE 'paused' END,
        context = CASE WHEN $5 THEN $6::pg_catalog.text::pg_catalog.jsonb ELSE r.context END,
        current_step = CASE WHEN d.branch OPERATOR(pg_catalog.=) 'cancel' THEN NULL
                            WHEN $7 THEN $8 ELSE r.current_step END,
        last_error = CASE WHEN d.branch OPERATOR(pg_catalog.=) 'cancel' THEN NULL
                          WHEN $9 THEN $10::pg_catalog.text::pg_catalog.jsonb
                          ELSE r.last_error END
    FROM decision d
    WHERE r.id OPERATOR(pg_catalog.=) d.id
      AND d.branch OPERATOR(pg_catalog.=) ANY ('{cancel,pause}'::pg_catalog.text[])
    RETURNING r AS run
), failed_step AS (
    UPDATE squidmesh.step_runs s SET
        status = 'failed',
        last_error = d.error,
        updated_at = GREATEST(d.at, s.updated_at)
    FROM decision d, step
    WHERE s.id OPERATOR(pg_catalog.=) step.id
      AND d.branch OPERATOR(pg_catalog.=) ANY ('{terminal,cancel}'::pg_catalog.text[])
      AND s.status OPERATOR(pg_catalog.=) 'running'
    RETURNING s.id
), failed_attempt AS (
    UPDATE squidmesh.step_attempts a SET
        status = 'failed',
        error = d.error,
        updated_at = GREATEST(d.at, a.updated_at)
    FROM decision d, attempt
    WHERE a.id OPERATOR(pg_catalog.=) attempt.id
      AND d.branch OPERATOR(pg_catalog.=) ANY ('{terminal,cancel}'::pg_catalog.text[])
      AND a.status OPERATOR(pg_catalog.=) 'running'
    RETURNING a.attempt_number, a.inserted_at
)
SELECT pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
       r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
       r.current_step, r.last_error::pg_catalog.text AS last_error,
       pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
       r.version, r.idempotency_key,
       pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
       pg_catalog.date_part('epoch', r.updated_at) AS updated_at,
       locked.status AS from_status,
       locked.version AS from_version,
       EXISTS (SELECT 1 FROM step) AS step_found,
       EXISTS (SELECT 1 FROM attempt) AS attempt_found,
       decision.branch,
       decision.error::pg_catalog.text AS error,
       step.step,
       failed_step.id IS NOT NULL AS step_failed,
       failed_attempt.attempt_number,
       pg_catalog.date_part('epoch', decision.at OPERATOR(pg_catalog.-)
           coalesce(failed_attempt.inserted_at, step.inserted_at))::pg_catalog.float8
           AS duration_s
FROM locked
LEFT JOIN decision ON true
LEFT JOIN moved ON true
LEFT JOIN step ON true
LEFT JOIN failed_step ON true
LEFT JOIN failed_attempt ON true
CROSS JOIN LATERAL (SELECT (coalesce(moved.run, locked.run)).*) r;
