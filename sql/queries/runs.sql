-- Named queries over squidmesh.runs. Each block starts with "-- name: <name>".
-- Every query returns runs as squidmesh.run_json(r)::text so that one
-- msgspec decode builds the Run. JSON goes in as $n::text::jsonb, so a
-- user's pool works whatever jsonb codec it has.
--
-- Lock order everywhere: run row, then step run row, then attempt row.
-- FOR UPDATE is what semantics.md asks for; FOR NO KEY UPDATE would not block
-- inserts of step runs referencing the run, a possible later relaxation.
--
-- Field writes take a (given?, value) pair per field so the SQL text stays
-- stable (one prepared statement) whichever fields a caller passes.
--
-- Names are resolved at prepare time through the caller's search_path, which
-- squidmesh does not own: a function or operator of the same name in a schema
-- listed before pg_catalog would win. So every function, operator and type
-- here is schema-qualified (pg_catalog.clock_timestamp(), OPERATOR(pg_catalog.=),
-- ::pg_catalog.text); only SQL syntax (COALESCE, CASE, EXISTS, GREATEST) is
-- written bare. A unit test checks this, an integration test runs the API
-- under a hostile search_path.
--
-- updated_at of a run is stamped by the trigger runs_stamp_updated_at
-- (sql/0002_hardening.sql), not here: a BEFORE UPDATE trigger runs once the
-- row lock is held, so the stamp is the clock at the write, after any wait,
-- and never earlier than the stored value: updated_at follows version. An
-- expression in the UPDATE would be evaluated before the wait. New rows get
-- one clock reading for inserted_at and updated_at.

-- name: insert_run
-- One round trip; inserted_at and updated_at are one reading of the clock.
INSERT INTO squidmesh.runs AS r
    (id, workflow, trigger, status, payload, context, current_step, replayed_from_run_id,
     inserted_at, updated_at)
SELECT $1, $2, $3, 'pending', $4::pg_catalog.text::pg_catalog.jsonb, '{}'::pg_catalog.jsonb,
       $5, $6, c.ts, c.ts
FROM (SELECT pg_catalog.clock_timestamp() AS ts) c
RETURNING squidmesh.run_json(r)::pg_catalog.text;

-- name: get_run
-- Primary-key lookup.
SELECT squidmesh.run_json(r)::pg_catalog.text FROM squidmesh.runs r
WHERE r.id OPERATOR(pg_catalog.=) $1;

-- name: lock_run
-- The locking read for operations that run user code under the lock.
SELECT squidmesh.run_json(r)::pg_catalog.text FROM squidmesh.runs r
WHERE r.id OPERATOR(pg_catalog.=) $1 FOR UPDATE;

-- name: list_runs
-- Newest first; runs_inserted_idx. $1 = limit (NULL = all). One row per run:
-- aggregating them into one value would fail past PostgreSQL's 1 GB limit on
-- a single value.
SELECT squidmesh.run_json(r)::pg_catalog.text FROM squidmesh.runs r
ORDER BY r.inserted_at DESC, r.id DESC LIMIT $1;

-- name: list_runs_by_workflow
-- runs_workflow_inserted_idx.
SELECT squidmesh.run_json(r)::pg_catalog.text FROM squidmesh.runs r
WHERE r.workflow OPERATOR(pg_catalog.=) $2
ORDER BY r.inserted_at DESC, r.id DESC LIMIT $1;

-- name: list_runs_by_status
-- runs_status_inserted_idx.
SELECT squidmesh.run_json(r)::pg_catalog.text FROM squidmesh.runs r
WHERE r.status OPERATOR(pg_catalog.=) $2
ORDER BY r.inserted_at DESC, r.id DESC LIMIT $1;

-- name: list_runs_by_workflow_status
-- runs_workflow_status_inserted_idx.
SELECT squidmesh.run_json(r)::pg_catalog.text FROM squidmesh.runs r
WHERE r.workflow OPERATOR(pg_catalog.=) $2 AND r.status OPERATOR(pg_catalog.=) $3
ORDER BY r.inserted_at DESC, r.id DESC LIMIT $1;

-- name: insert_replay
-- One round trip. $1 new id, $2 source id, $3/$4 the registered workflows'
-- names and entry steps (the entry step comes from the definition in
-- Python). Copies workflow, trigger and payload from the source, which is
-- read, not locked: a replay leaves it untouched. Returns the source's
-- workflow and the new run, NULL when that workflow is not registered;
-- no row = no source.
WITH source AS (
    SELECT * FROM squidmesh.runs WHERE id OPERATOR(pg_catalog.=) $2
), registered AS (
    SELECT source.*, e.entry_step
    FROM source
    JOIN ROWS FROM (pg_catalog.unnest($3::pg_catalog.text[]),
                           pg_catalog.unnest($4::pg_catalog.text[]))
        AS e(workflow, entry_step)
      ON e.workflow OPERATOR(pg_catalog.=) source.workflow
), inserted AS (
    INSERT INTO squidmesh.runs AS r
        (id, workflow, trigger, status, payload, context, current_step, replayed_from_run_id,
         inserted_at, updated_at)
    SELECT $1, g.workflow, g.trigger, 'pending', g.payload, '{}'::pg_catalog.jsonb,
           g.entry_step, g.id, c.ts, c.ts
    FROM registered g, (SELECT pg_catalog.clock_timestamp() AS ts) c
    RETURNING squidmesh.run_json(r)::pg_catalog.text AS run
)
SELECT source.workflow, inserted.run FROM source LEFT JOIN inserted ON true;

-- name: transition_run
-- One round trip: lock, check the move against the states it may come from
-- ($9, from the state machine), write. Returns the status read under the
-- lock and the new run (NULL when the move is illegal); no row = not found.
WITH locked AS (
    SELECT id, status FROM squidmesh.runs WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE
), moved AS (
    UPDATE squidmesh.runs r SET
        status = $2,
        context = CASE WHEN $3 THEN $4::pg_catalog.text::pg_catalog.jsonb ELSE r.context END,
        current_step = CASE WHEN $5 THEN $6 ELSE r.current_step END,
        last_error = CASE WHEN $7 THEN $8::pg_catalog.text::pg_catalog.jsonb
                          ELSE r.last_error END,
        version = r.version OPERATOR(pg_catalog.+) 1
    FROM locked
    WHERE r.id OPERATOR(pg_catalog.=) locked.id
      AND locked.status OPERATOR(pg_catalog.=) ANY ($9::pg_catalog.text[])
    RETURNING squidmesh.run_json(r)::pg_catalog.text AS run
)
SELECT locked.status, moved.run FROM locked LEFT JOIN moved ON true;

-- name: transition_run_fast
-- PostgreSQL >= 18 (RETURNING old.*): the guarded UPDATE alone, as cheap as a
-- hand-written one. The UPDATE takes the row lock; if it had to wait, the
-- WHERE is re-checked on the newest row version, so the move is decided on
-- the state read under the lock. No row back (not found, or an illegal
-- move) falls back to transition_run, which tells the two apart atomically.
UPDATE squidmesh.runs r SET
    status = $2,
    context = CASE WHEN $3 THEN $4::pg_catalog.text::pg_catalog.jsonb ELSE r.context END,
    current_step = CASE WHEN $5 THEN $6 ELSE r.current_step END,
    last_error = CASE WHEN $7 THEN $8::pg_catalog.text::pg_catalog.jsonb ELSE r.last_error END,
    version = r.version OPERATOR(pg_catalog.+) 1
WHERE r.id OPERATOR(pg_catalog.=) $1 AND r.status OPERATOR(pg_catalog.=) ANY ($9::pg_catalog.text[])
RETURNING old.status, squidmesh.run_json(r)::pg_catalog.text;

-- name: update_run
-- The UPDATE takes the row lock itself; status is untouched.
UPDATE squidmesh.runs r SET
    context = CASE WHEN $2 THEN $3::pg_catalog.text::pg_catalog.jsonb ELSE r.context END,
    current_step = CASE WHEN $4 THEN $5 ELSE r.current_step END,
    last_error = CASE WHEN $6 THEN $7::pg_catalog.text::pg_catalog.jsonb ELSE r.last_error END,
    version = r.version OPERATOR(pg_catalog.+) 1
WHERE r.id OPERATOR(pg_catalog.=) $1
RETURNING squidmesh.run_json(r)::pg_catalog.text;

-- name: cancel_run
-- One round trip; the branches and the paused-step finalisation live in the
-- function squidmesh.cancel_run (sql/0002_hardening.sql), which locks the run
-- row FOR UPDATE before it reads anything else.
SELECT from_status, run, failed_step, attempt_number, duration_s
FROM squidmesh.cancel_run($1, $2::pg_catalog.text::pg_catalog.jsonb);

-- name: cancel_run_fast
-- PostgreSQL >= 18: the common cases (pending -> cancelled, running or
-- retrying -> cancelling) as one guarded UPDATE. No row back (paused,
-- terminal, not found) falls back to cancel_run, which decides atomically.
UPDATE squidmesh.runs r SET
    status = CASE WHEN r.status OPERATOR(pg_catalog.=) 'pending' THEN 'cancelled'
                  ELSE 'cancelling' END,
    current_step = NULL,
    version = r.version OPERATOR(pg_catalog.+) 1
WHERE r.id OPERATOR(pg_catalog.=) $1
  AND r.status OPERATOR(pg_catalog.=) ANY ('{pending,running,retrying}'::pg_catalog.text[])
RETURNING old.status, squidmesh.run_json(r)::pg_catalog.text;

-- name: write_run
-- A write to a row the caller already locked in its transaction
-- (SELECT ... FOR UPDATE): status $2 (NULL = unchanged) and fields.
UPDATE squidmesh.runs r SET
    status = coalesce($2, r.status),
    context = CASE WHEN $3 THEN $4::pg_catalog.text::pg_catalog.jsonb ELSE r.context END,
    current_step = CASE WHEN $5 THEN $6 ELSE r.current_step END,
    last_error = CASE WHEN $7 THEN $8::pg_catalog.text::pg_catalog.jsonb ELSE r.last_error END,
    version = r.version OPERATOR(pg_catalog.+) 1
WHERE r.id OPERATOR(pg_catalog.=) $1
RETURNING squidmesh.run_json(r)::pg_catalog.text;
