-- Named queries over squidmesh.runs. Each block starts with "-- name: <name>".
--
-- The run's columns. Every query that returns a run (here and in the other
-- files) returns it as these thirteen columns, first in its row (other values
-- after them), which squidmesh._codec.decode_run turns into a Run:
--   pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
--   r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
--   r.current_step, r.last_error::pg_catalog.text AS last_error,
--   pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
--   r.version, r.idempotency_key,
--   pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
--   pg_catalog.date_part('epoch', r.updated_at) AS updated_at
-- (tests/unit/test_run_columns.py checks that each copy is this one). They
-- are what a hand-written SELECT of the row costs the server: nothing is
-- built per run (squidmesh.run_json, the shape before, built a JSON text with
-- json_build_object and to_char: 3 to 6 us of server time per run, most of
-- a 50-run list). And their types are ones a pool's codecs are not set for,
-- so a user's pool with codecs for jsonb, json, uuid, timestamptz or
-- timestamp still gets the same Run, whatever the session's TimeZone:
--   * ids as bytea, the uuid's 16 bytes, made into asyncpg's own UUID in C;
--   * jsonb as its text, decoded by msgspec (JSON goes in as
--     $n::text::jsonb the same way);
--   * timestamps as float8 seconds since 1970-01-01 UTC, made into aware
--     UTC datetimes (datetime.fromtimestamp, or msgspec for many at once):
--     exact to the microsecond for the years 1900 to 2200, where the double
--     is within half a microsecond of the stored value;
--   * the rest as stored, text and int8.
-- The output names are the run's column names, so a query orders and filters
-- by r.<column>: a bare ORDER BY inserted_at would sort by the float8.
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
-- version and updated_at of a run are not written here: the trigger runs_write
-- (sql/functions/runs_write.sql) bumps the version and stamps updated_at for
-- every UPDATE of a run, once PostgreSQL holds the row lock (an expression in
-- the UPDATE's SET list would be evaluated before the wait), and refuses an
-- illegal status change from any client. New rows get one clock reading for
-- inserted_at and updated_at.

-- name: insert_run
-- One round trip; inserted_at and updated_at are one reading of the clock.
INSERT INTO squidmesh.runs AS r
    (id, workflow, trigger, status, payload, context, current_step, replayed_from_run_id,
     inserted_at, updated_at)
SELECT $1, $2, $3, 'pending', $4::pg_catalog.text::pg_catalog.jsonb, '{}'::pg_catalog.jsonb,
       $5, $6, c.ts, c.ts
FROM (SELECT pg_catalog.clock_timestamp() AS ts) c
RETURNING pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
          r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
          r.current_step, r.last_error::pg_catalog.text AS last_error,
          pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
          r.version, r.idempotency_key,
          pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
          pg_catalog.date_part('epoch', r.updated_at) AS updated_at;

-- name: insert_run_keyed
-- insert_run with an idempotency key ($6) and the fingerprint of what the
-- caller gave ($7). The partial unique index runs_workflow_idempotency_key
-- decides between concurrent callers: the loser's insert yields (waiting for
-- the winner to commit first) and returns no row; the caller then reads the
-- winner's run with get_run_by_key. A separate query from insert_run so that
-- creation without a key pays nothing for ON CONFLICT.
INSERT INTO squidmesh.runs AS r
    (id, workflow, trigger, status, payload, context, current_step,
     idempotency_key, idempotency_fingerprint, inserted_at, updated_at)
SELECT $1, $2, $3, 'pending', $4::pg_catalog.text::pg_catalog.jsonb, '{}'::pg_catalog.jsonb,
       $5, $6, $7, c.ts, c.ts
FROM (SELECT pg_catalog.clock_timestamp() AS ts) c
ON CONFLICT (workflow, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
          r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
          r.current_step, r.last_error::pg_catalog.text AS last_error,
          pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
          r.version, r.idempotency_key,
          pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
          pg_catalog.date_part('epoch', r.updated_at) AS updated_at;

-- name: get_run_by_key
-- The run holding an idempotency key, and the fingerprint it was created with.
SELECT pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
       r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
       r.current_step, r.last_error::pg_catalog.text AS last_error,
       pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
       r.version, r.idempotency_key,
       pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
       pg_catalog.date_part('epoch', r.updated_at) AS updated_at,
       r.idempotency_fingerprint
FROM squidmesh.runs r
WHERE r.workflow OPERATOR(pg_catalog.=) $1 AND r.idempotency_key OPERATOR(pg_catalog.=) $2;

-- name: run_version
-- Whether a write that found no row met no run or another version.
SELECT r.version FROM squidmesh.runs r WHERE r.id OPERATOR(pg_catalog.=) $1;

-- name: get_run
-- Primary-key lookup.
SELECT pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
       r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
       r.current_step, r.last_error::pg_catalog.text AS last_error,
       pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
       r.version, r.idempotency_key,
       pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
       pg_catalog.date_part('epoch', r.updated_at) AS updated_at
FROM squidmesh.runs r
WHERE r.id OPERATOR(pg_catalog.=) $1;

-- name: lock_run
-- The locking read for operations that run user code under the lock.
SELECT pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
       r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
       r.current_step, r.last_error::pg_catalog.text AS last_error,
       pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
       r.version, r.idempotency_key,
       pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
       pg_catalog.date_part('epoch', r.updated_at) AS updated_at
FROM squidmesh.runs r
WHERE r.id OPERATOR(pg_catalog.=) $1 FOR UPDATE;

-- name: insert_replay
-- One round trip. $1 new id, $2 source id, $3/$4 the registered workflows'
-- names and entry steps (the entry step comes from the definition in
-- Python). Copies workflow, trigger and payload from the source, which is
-- read, not locked: a replay leaves it untouched. Returns the new run (all
-- NULL when the source's workflow is not registered), then the source's
-- workflow; no row = no source.
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
    RETURNING pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
              r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
              r.current_step, r.last_error::pg_catalog.text AS last_error,
              pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
              r.version, r.idempotency_key,
              pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
              pg_catalog.date_part('epoch', r.updated_at) AS updated_at
)
SELECT inserted.*, source.workflow AS source_workflow FROM source LEFT JOIN inserted ON true;

-- name: transition_run
-- One round trip: lock, check the version ($10, NULL = any) and the move
-- against the states it may come from ($9, from the state machine), write.
-- Returns the new run (all NULL when the version differs or the move is
-- illegal), then the status and version read under the lock; no row = not
-- found.
WITH locked AS (
    SELECT id, status, version FROM squidmesh.runs
    WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE
), moved AS (
    UPDATE squidmesh.runs r SET
        status = $2,
        context = CASE WHEN $3 THEN $4::pg_catalog.text::pg_catalog.jsonb ELSE r.context END,
        current_step = CASE WHEN $5 THEN $6 ELSE r.current_step END,
        last_error = CASE WHEN $7 THEN $8::pg_catalog.text::pg_catalog.jsonb
                          ELSE r.last_error END
    FROM locked
    WHERE r.id OPERATOR(pg_catalog.=) locked.id
      AND locked.status OPERATOR(pg_catalog.=) ANY ($9::pg_catalog.text[])
      AND ($10::pg_catalog.int8 IS NULL OR locked.version OPERATOR(pg_catalog.=) $10)
    RETURNING pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
              r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
              r.current_step, r.last_error::pg_catalog.text AS last_error,
              pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
              r.version, r.idempotency_key,
              pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
              pg_catalog.date_part('epoch', r.updated_at) AS updated_at
)
SELECT moved.*, locked.status AS from_status, locked.version AS from_version
FROM locked LEFT JOIN moved ON true;

-- name: transition_run_fast
-- PostgreSQL >= 18 (RETURNING old.*): the guarded UPDATE alone, as cheap as a
-- hand-written one. The UPDATE takes the row lock; if it had to wait, the
-- WHERE is re-checked on the newest row version, so the move is decided on
-- the state read under the lock. No row back (not found, or an illegal
-- move, another version than $10) falls back to transition_run, which tells
-- them apart atomically.
UPDATE squidmesh.runs r SET
    status = $2,
    context = CASE WHEN $3 THEN $4::pg_catalog.text::pg_catalog.jsonb ELSE r.context END,
    current_step = CASE WHEN $5 THEN $6 ELSE r.current_step END,
    last_error = CASE WHEN $7 THEN $8::pg_catalog.text::pg_catalog.jsonb ELSE r.last_error END
WHERE r.id OPERATOR(pg_catalog.=) $1 AND r.status OPERATOR(pg_catalog.=) ANY ($9::pg_catalog.text[])
  AND ($10::pg_catalog.int8 IS NULL OR r.version OPERATOR(pg_catalog.=) $10)
RETURNING pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
          r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
          r.current_step, r.last_error::pg_catalog.text AS last_error,
          pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
          r.version, r.idempotency_key,
          pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
          pg_catalog.date_part('epoch', r.updated_at) AS updated_at,
          old.status AS from_status, old.version AS from_version;

-- name: update_run
-- The UPDATE takes the row lock itself; status is untouched. $8 = the
-- expected version (NULL = any); no row = not found or another version.
UPDATE squidmesh.runs r SET
    context = CASE WHEN $2 THEN $3::pg_catalog.text::pg_catalog.jsonb ELSE r.context END,
    current_step = CASE WHEN $4 THEN $5 ELSE r.current_step END,
    last_error = CASE WHEN $6 THEN $7::pg_catalog.text::pg_catalog.jsonb ELSE r.last_error END
WHERE r.id OPERATOR(pg_catalog.=) $1
  AND ($8::pg_catalog.int8 IS NULL OR r.version OPERATOR(pg_catalog.=) $8)
RETURNING pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
          r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
          r.current_step, r.last_error::pg_catalog.text AS last_error,
          pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
          r.version, r.idempotency_key,
          pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
          pg_catalog.date_part('epoch', r.updated_at) AS updated_at;

-- name: cancel_run
-- One round trip; the branches and the paused-step finalisation live in the
-- function squidmesh.cancel_run_v2 (sql/functions/cancel_run_v2.sql), which
-- locks the run row FOR UPDATE before it reads anything else. $3 = the
-- expected version (NULL = any).
SELECT from_status, version, run, failed_step, attempt_number, duration_s
FROM squidmesh.cancel_run_v2($1, $2::pg_catalog.text::pg_catalog.jsonb, $3::pg_catalog.int8);

-- name: cancel_run_fast
-- PostgreSQL >= 18: the common cases (pending -> cancelled, running or
-- retrying -> cancelling) as one guarded UPDATE. No row back (paused,
-- terminal, not found, another version than $2) falls back to cancel_run,
-- which decides atomically.
UPDATE squidmesh.runs r SET
    status = CASE WHEN r.status OPERATOR(pg_catalog.=) 'pending' THEN 'cancelled'
                  ELSE 'cancelling' END,
    current_step = NULL
WHERE r.id OPERATOR(pg_catalog.=) $1
  AND r.status OPERATOR(pg_catalog.=) ANY ('{pending,running,retrying}'::pg_catalog.text[])
  AND ($2::pg_catalog.int8 IS NULL OR r.version OPERATOR(pg_catalog.=) $2)
RETURNING pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
          r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
          r.current_step, r.last_error::pg_catalog.text AS last_error,
          pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
          r.version, r.idempotency_key,
          pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
          pg_catalog.date_part('epoch', r.updated_at) AS updated_at,
          old.status AS from_status, old.version AS from_version;

-- name: write_run
-- A write to a row the caller already locked in its transaction
-- (SELECT ... FOR UPDATE): status $2 (NULL = unchanged) and fields.
UPDATE squidmesh.runs r SET
    status = coalesce($2, r.status),
    context = CASE WHEN $3 THEN $4::pg_catalog.text::pg_catalog.jsonb ELSE r.context END,
    current_step = CASE WHEN $5 THEN $6 ELSE r.current_step END,
    last_error = CASE WHEN $7 THEN $8::pg_catalog.text::pg_catalog.jsonb ELSE r.last_error END
WHERE r.id OPERATOR(pg_catalog.=) $1
RETURNING pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
          r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
          r.current_step, r.last_error::pg_catalog.text AS last_error,
          pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
          r.version, r.idempotency_key,
          pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
          pg_catalog.date_part('epoch', r.updated_at) AS updated_at;
