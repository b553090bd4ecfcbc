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

-- name: insert_run
-- One round trip: the new run's timestamps come from the server clock.
INSERT INTO squidmesh.runs AS r
    (id, workflow, trigger, status, payload, context, current_step, replayed_from_run_id)
VALUES ($1, $2, $3, 'pending', $4::text::jsonb, '{}'::jsonb, $5, $6)
RETURNING squidmesh.run_json(r)::text;

-- name: get_run
-- Primary-key lookup.
SELECT squidmesh.run_json(r)::text FROM squidmesh.runs r WHERE r.id = $1;

-- name: lock_run
-- The locking read for operations that run user code under the lock.
SELECT squidmesh.run_json(r)::text FROM squidmesh.runs r WHERE r.id = $1 FOR UPDATE;

-- name: list_runs
-- Newest first; runs_inserted_idx. $1 = limit (NULL = all).
SELECT coalesce(json_agg(squidmesh.run_json(r) ORDER BY r.inserted_at DESC, r.id DESC), '[]')::text
FROM (SELECT * FROM squidmesh.runs
      ORDER BY inserted_at DESC, id DESC LIMIT $1) r;

-- name: list_runs_by_workflow
-- runs_workflow_inserted_idx.
SELECT coalesce(json_agg(squidmesh.run_json(r) ORDER BY r.inserted_at DESC, r.id DESC), '[]')::text
FROM (SELECT * FROM squidmesh.runs WHERE workflow = $2
      ORDER BY inserted_at DESC, id DESC LIMIT $1) r;

-- name: list_runs_by_status
-- runs_status_inserted_idx.
SELECT coalesce(json_agg(squidmesh.run_json(r) ORDER BY r.inserted_at DESC, r.id DESC), '[]')::text
FROM (SELECT * FROM squidmesh.runs WHERE status = $2
      ORDER BY inserted_at DESC, id DESC LIMIT $1) r;

-- name: list_runs_by_workflow_status
-- runs_workflow_status_inserted_idx.
SELECT coalesce(json_agg(squidmesh.run_json(r) ORDER BY r.inserted_at DESC, r.id DESC), '[]')::text
FROM (SELECT * FROM squidmesh.runs WHERE workflow = $2 AND status = $3
      ORDER BY inserted_at DESC, id DESC LIMIT $1) r;

-- name: insert_replay
-- One round trip. $1 new id, $2 source id, $3/$4 the registered workflows'
-- names and entry steps (the entry step comes from the definition in
-- Python). Copies workflow, trigger and payload from the source, which is
-- read, not locked: a replay leaves it untouched. Returns the source's
-- workflow and the new run, NULL when that workflow is not registered;
-- no row = no source.
WITH source AS (
    SELECT * FROM squidmesh.runs WHERE id = $2
), registered AS (
    SELECT source.*, e.entry_step
    FROM source
    JOIN unnest($3::text[], $4::text[]) AS e(workflow, entry_step)
      ON e.workflow = source.workflow
), inserted AS (
    INSERT INTO squidmesh.runs AS r
        (id, workflow, trigger, status, payload, context, current_step, replayed_from_run_id)
    SELECT $1, g.workflow, g.trigger, 'pending', g.payload, '{}'::jsonb, g.entry_step, g.id
    FROM registered g
    RETURNING squidmesh.run_json(r)::text AS run
)
SELECT source.workflow, inserted.run FROM source LEFT JOIN inserted ON true;

-- name: transition_run
-- One round trip: lock, check the move against the states it may come from
-- ($9, from the state machine), write. Returns the status read under the
-- lock and the new run (NULL when the move is illegal); no row = not found.
WITH locked AS (
    SELECT id, status FROM squidmesh.runs WHERE id = $1 FOR UPDATE
), moved AS (
    UPDATE squidmesh.runs r SET
        status = $2,
        context = CASE WHEN $3 THEN $4::text::jsonb ELSE r.context END,
        current_step = CASE WHEN $5 THEN $6 ELSE r.current_step END,
        last_error = CASE WHEN $7 THEN $8::text::jsonb ELSE r.last_error END,
        version = r.version + 1,
        updated_at = now()
    FROM locked
    WHERE r.id = locked.id AND locked.status = ANY($9::text[])
    RETURNING squidmesh.run_json(r)::text AS run
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
    context = CASE WHEN $3 THEN $4::text::jsonb ELSE r.context END,
    current_step = CASE WHEN $5 THEN $6 ELSE r.current_step END,
    last_error = CASE WHEN $7 THEN $8::text::jsonb ELSE r.last_error END,
    version = r.version + 1,
    updated_at = now()
WHERE r.id = $1 AND r.status = ANY($9::text[])
RETURNING old.status, squidmesh.run_json(r)::text;

-- name: update_run
-- The UPDATE takes the row lock itself; status is untouched.
UPDATE squidmesh.runs r SET
    context = CASE WHEN $2 THEN $3::text::jsonb ELSE r.context END,
    current_step = CASE WHEN $4 THEN $5 ELSE r.current_step END,
    last_error = CASE WHEN $6 THEN $7::text::jsonb ELSE r.last_error END,
    version = r.version + 1,
    updated_at = now()
WHERE r.id = $1
RETURNING squidmesh.run_json(r)::text;

-- name: cancel_run
-- One round trip; the branches and the paused-step finalisation live in the
-- function squidmesh.cancel_run (sql/0001_initial.sql), which locks the run
-- row FOR UPDATE before it reads anything else.
SELECT from_status, run, failed_step, attempt_number, duration_s
FROM squidmesh.cancel_run($1, $2::text::jsonb);

-- name: cancel_run_fast
-- PostgreSQL >= 18: the common cases (pending -> cancelled, running or
-- retrying -> cancelling) as one guarded UPDATE. No row back (paused,
-- terminal, not found) falls back to cancel_run, which decides atomically.
UPDATE squidmesh.runs r SET
    status = CASE WHEN r.status = 'pending' THEN 'cancelled' ELSE 'cancelling' END,
    current_step = NULL,
    version = r.version + 1,
    updated_at = now()
WHERE r.id = $1 AND r.status IN ('pending', 'running', 'retrying')
RETURNING old.status, squidmesh.run_json(r)::text;

-- name: write_run
-- A write to a row the caller already locked in its transaction
-- (SELECT ... FOR UPDATE): status $2 (NULL = unchanged) and fields.
UPDATE squidmesh.runs r SET
    status = coalesce($2, r.status),
    context = CASE WHEN $3 THEN $4::text::jsonb ELSE r.context END,
    current_step = CASE WHEN $5 THEN $6 ELSE r.current_step END,
    last_error = CASE WHEN $7 THEN $8::text::jsonb ELSE r.last_error END,
    version = r.version + 1,
    updated_at = now()
WHERE r.id = $1
RETURNING squidmesh.run_json(r)::text;
