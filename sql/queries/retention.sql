-- Named queries of the bulk operations: prune_runs, cancel_runs,
-- sweep_stale_runs and prune_feed (squidmesh/_retention.py). The conventions
-- of runs.sql hold here too: every name schema-qualified, JSON in as
-- $n::text::jsonb, runs out as the run's columns (see runs.sql; cancel_runs:
-- as squidmesh.cancel_run_v2 returns them, the JSON of squidmesh.run_json).
--
-- Each bulk operation works in batches, one statement and one transaction
-- per batch, so that no transaction holds more than $1 (the batch size) row
-- locks and none lasts as long as the whole operation. Each comes in two
-- forms, with the same parameters after the first few:
--
--   * <name>: one status ($4) at a time, in (inserted_at, id) order, after
--     a cursor ($2, $3: the key of the last run the previous batch took;
--     NULL for the first), written as "inserted_at >= $2" (the index
--     condition) "and, at $2 itself, id > $3". The cursor makes each batch
--     an index range scan that starts where the previous one stopped:
--     without it, every batch would scan again past the index entries (or,
--     in a sequential scan, the heap tuples) of all the runs the batches
--     before it deleted or moved, which stay until VACUUM, and a prune of N
--     runs would cost O(N^2 / batch size). Candidates are picked FOR UPDATE
--     SKIP LOCKED, so a batch never waits on a run someone else holds while
--     holding the locks of the runs it has already taken. Each row holds
--     the run's key (key_at, key_id): the next cursor is the largest.
--   * <name>_waiting: every status asked for ($2), no cursor, FOR UPDATE
--     (it waits), called with $1 = 1 once the first form is done: what is
--     left was locked by others meanwhile (or, for cancel_runs, moved to a
--     status already done), and each such run is decided after its holder
--     commits, with no other run's lock held while waiting.
--
-- In both, FOR UPDATE re-evaluates the WHERE clause on the newest version of
-- a row that changed since the statement began (READ COMMITTED, which
-- _retention names for every batch), so the filters are decided under the
-- row lock: a run touched meanwhile (its updated_at moved past the cut-off)
-- or moved to another status is left alone. The write then re-checks them
-- anyway, so each statement alone says what it may touch.
--
-- The write finds its rows through "id = ANY (array of the picked ids)", an
-- index condition on runs_pkey whatever the planner estimates for the
-- picked set (a join with it may be planned as a sequential scan of runs).
--
-- The cut-offs are computed once per call from the database clock
-- (retention_clock), not per batch: the set of candidates is then fixed
-- when the call starts (a run written after that is newer than the
-- cut-off), so the batches end even while runs keep changing.
--
-- Indexes: only those of 0001. Runs of one status are read by (inserted_at,
-- id): runs_status_inserted_idx, or runs_workflow_status_inserted_idx for
-- one workflow, read backwards. prune and sweeps select on updated_at older
-- than a cut-off; a run's updated_at is never earlier than its inserted_at
-- (insert_run and insert_replay write one clock reading to both, and
-- runs_write never moves updated_at back), so "inserted_at < cut-off" holds
-- for every candidate and bounds the range. A batch also reads the runs
-- inserted before the cut-off but written after it, each once per call
-- thanks to the cursor: for prune, finished runs written again after the
-- cut-off (few); for sweeps, the runs of that status that are not stale
-- (the live set: 30 to 70 ms per call for 100,000 running runs, measured).
-- An index on (status, updated_at) would spare those reads, but updated_at
-- changes with every write of a run, so it would end HOT updates of runs:
-- measured, an update_run heartbeat then writes twice the WAL (790 bytes
-- instead of 380: a new entry in every index of runs), on every run write,
-- to make a periodic sweep cheaper.

-- name: retention_clock
-- The database clock the cut-offs are computed from (runs' updated_at is
-- stamped with this clock too, by the runs_write trigger).
SELECT pg_catalog.clock_timestamp();

-- name: count_prunable_runs
-- prune_runs(dry_run=True): what the prune would delete, counted in one
-- statement without locks. $1 statuses (terminal only), $2 cut-off,
-- $3 workflow (NULL = all). One row per status present.
WITH doomed AS (
    -- runs_status_inserted_idx: one range scan per status.
    SELECT r.id, r.status FROM squidmesh.runs r
    WHERE r.status OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])
      AND r.inserted_at OPERATOR(pg_catalog.<) $2::pg_catalog.timestamptz
      AND r.updated_at OPERATOR(pg_catalog.<) $2::pg_catalog.timestamptz
      AND ($3::pg_catalog.text IS NULL OR r.workflow OPERATOR(pg_catalog.=) $3)
), counted AS (
    -- What the foreign keys' ON DELETE CASCADE would take with each run:
    -- step_runs_run_id_step_key, step_attempts_step_run_id_number_key.
    SELECT d.status,
           (SELECT pg_catalog.count(s.id) FROM squidmesh.step_runs s
             WHERE s.run_id OPERATOR(pg_catalog.=) d.id) AS step_runs,
           (SELECT pg_catalog.count(a.id)
              FROM squidmesh.step_runs s
              JOIN squidmesh.step_attempts a ON a.step_run_id OPERATOR(pg_catalog.=) s.id
             WHERE s.run_id OPERATOR(pg_catalog.=) d.id) AS attempts
    FROM doomed d
)
SELECT c.status,
       pg_catalog.count(c.status) AS runs,
       pg_catalog.sum(c.step_runs)::pg_catalog.int8 AS step_runs,
       pg_catalog.sum(c.attempts)::pg_catalog.int8 AS attempts
FROM counted c
GROUP BY c.status;

-- name: lock_and_prune_runs
-- One batch of prune_runs: $1 batch size, $2/$3 cursor (inserted_at, id),
-- $4 status (terminal, checked by the caller), $5 cut-off, $6 workflow
-- (NULL = all). Deletes up to $1 runs; their step runs and attempts go with
-- them through the foreign keys' ON DELETE CASCADE, their rows of the
-- transition log (squidmesh.run_transitions has no foreign key) in the same
-- statement (forgotten), and the replays of a deleted run get
-- replayed_from_run_id NULL (ON DELETE SET NULL: an UPDATE of the replay, so
-- the runs_write trigger bumps its version and stamps its updated_at; no
-- status change, so no log row). One row per deleted run: its key, its
-- status, and how many step runs and attempts went with it (log rows are
-- not counted).
--
-- forgotten deletes the log rows the statement's snapshot sees. A candidate
-- is finished in that snapshot, so only an unchecked move (see runs_write)
-- can change its status after it, and that write moves its updated_at past
-- the cut-off, which FOR UPDATE re-checks: the run is left alone. (With an
-- older_than shorter than the time such a write takes to commit, its log
-- row could outlive the run.)
WITH picked AS MATERIALIZED (
    -- runs_status_inserted_idx backwards, from the cursor on.
    SELECT r.inserted_at, r.id FROM squidmesh.runs r
    WHERE r.status OPERATOR(pg_catalog.=) $4
      AND r.inserted_at OPERATOR(pg_catalog.<) $5::pg_catalog.timestamptz
      AND r.updated_at OPERATOR(pg_catalog.<) $5::pg_catalog.timestamptz
      AND r.inserted_at OPERATOR(pg_catalog.>=)
          COALESCE($2::pg_catalog.timestamptz, '-infinity')
      AND ($2::pg_catalog.timestamptz IS NULL
           OR r.inserted_at OPERATOR(pg_catalog.>) $2::pg_catalog.timestamptz
           OR r.id OPERATOR(pg_catalog.>) $3::pg_catalog.uuid)
      AND ($6::pg_catalog.text IS NULL OR r.workflow OPERATOR(pg_catalog.=) $6)
    ORDER BY r.inserted_at, r.id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM squidmesh.runs r
    WHERE r.id OPERATOR(pg_catalog.=) ANY (
            (SELECT pg_catalog.array_agg(p.id) FROM picked p)::pg_catalog.uuid[])
      AND r.status OPERATOR(pg_catalog.=) $4
      AND r.updated_at OPERATOR(pg_catalog.<) $5::pg_catalog.timestamptz
    RETURNING r.inserted_at, r.id, r.status
), forgotten AS (
    -- run_transitions_pkey: one range per deleted run. Not read below: a
    -- data-modifying WITH runs to completion whether read or not.
    DELETE FROM squidmesh.run_transitions l
    WHERE l.run_id OPERATOR(pg_catalog.=) ANY (
            (SELECT pg_catalog.array_agg(d.id) FROM deleted d)::pg_catalog.uuid[])
)
-- The cascades run at the end of the statement and every part of it reads
-- one snapshot, so the step runs and attempts counted here are the ones the
-- cascades delete (save one a worker commits to a finished run between the
-- snapshot and the lock: deleted, not counted).
SELECT d.inserted_at AS key_at, d.id AS key_id, d.status,
       (SELECT pg_catalog.count(s.id) FROM squidmesh.step_runs s
         WHERE s.run_id OPERATOR(pg_catalog.=) d.id) AS step_runs,
       (SELECT pg_catalog.count(a.id)
          FROM squidmesh.step_runs s
          JOIN squidmesh.step_attempts a ON a.step_run_id OPERATOR(pg_catalog.=) s.id
         WHERE s.run_id OPERATOR(pg_catalog.=) d.id) AS attempts
FROM deleted d;

-- name: lock_and_prune_runs_waiting
-- The second form of lock_and_prune_runs (see the header): $1 batch size,
-- $2 statuses, $3 cut-off, $4 workflow.
WITH picked AS MATERIALIZED (
    SELECT r.id FROM squidmesh.runs r
    WHERE r.status OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.text[])
      AND r.inserted_at OPERATOR(pg_catalog.<) $3::pg_catalog.timestamptz
      AND r.updated_at OPERATOR(pg_catalog.<) $3::pg_catalog.timestamptz
      AND ($4::pg_catalog.text IS NULL OR r.workflow OPERATOR(pg_catalog.=) $4)
    LIMIT $1
    FOR UPDATE
), deleted AS (
    DELETE FROM squidmesh.runs r
    WHERE r.id OPERATOR(pg_catalog.=) ANY (
            (SELECT pg_catalog.array_agg(p.id) FROM picked p)::pg_catalog.uuid[])
      AND r.status OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.text[])
      AND r.updated_at OPERATOR(pg_catalog.<) $3::pg_catalog.timestamptz
    RETURNING r.inserted_at, r.id, r.status
), forgotten AS (
    DELETE FROM squidmesh.run_transitions l
    WHERE l.run_id OPERATOR(pg_catalog.=) ANY (
            (SELECT pg_catalog.array_agg(d.id) FROM deleted d)::pg_catalog.uuid[])
)
SELECT d.inserted_at AS key_at, d.id AS key_id, d.status,
       (SELECT pg_catalog.count(s.id) FROM squidmesh.step_runs s
         WHERE s.run_id OPERATOR(pg_catalog.=) d.id) AS step_runs,
       (SELECT pg_catalog.count(a.id)
          FROM squidmesh.step_runs s
          JOIN squidmesh.step_attempts a ON a.step_run_id OPERATOR(pg_catalog.=) s.id
         WHERE s.run_id OPERATOR(pg_catalog.=) d.id) AS attempts
FROM deleted d;

-- name: cancel_runs
-- One batch of cancel_runs: $1 batch size, $2/$3 cursor (inserted_at, id),
-- $4 status (one cancel_run changes), $5 workflow (NULL = all), $6 created
-- before (never later than the call's start), $7 the error for a paused
-- step (CANCELLED_WHILE_PAUSED). Each run is decided by
-- squidmesh.cancel_run_v2, the function cancel_run calls, so the rules are
-- the same: it locks the run (already locked here: no wait), reads its state
-- and fails a paused run's running step run and attempt. One row per
-- cancelled run: its key and the function's row.
WITH picked AS MATERIALIZED (
    -- runs_status_inserted_idx (runs_workflow_status_inserted_idx for one
    -- workflow) read backwards, from the cursor on.
    SELECT r.inserted_at, r.id FROM squidmesh.runs r
    WHERE r.status OPERATOR(pg_catalog.=) $4
      AND r.inserted_at OPERATOR(pg_catalog.<) $6::pg_catalog.timestamptz
      AND r.inserted_at OPERATOR(pg_catalog.>=)
          COALESCE($2::pg_catalog.timestamptz, '-infinity')
      AND ($2::pg_catalog.timestamptz IS NULL
           OR r.inserted_at OPERATOR(pg_catalog.>) $2::pg_catalog.timestamptz
           OR r.id OPERATOR(pg_catalog.>) $3::pg_catalog.uuid)
      AND ($5::pg_catalog.text IS NULL OR r.workflow OPERATOR(pg_catalog.=) $5)
    ORDER BY r.inserted_at, r.id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
SELECT p.inserted_at AS key_at, p.id AS key_id,
       c.from_status, c.run, c.failed_step, c.attempt_number, c.duration_s
FROM picked p
CROSS JOIN LATERAL squidmesh.cancel_run_v2(
    p.id, $7::pg_catalog.text::pg_catalog.jsonb, NULL::pg_catalog.int8) c
-- NULL run: the function wrote nothing. Not expected (the lock taken above
-- keeps the status filtered on), and never reported as a change.
WHERE c.run IS NOT NULL;

-- name: cancel_runs_waiting
-- The second form of cancel_runs (see the header): $1 batch size,
-- $2 statuses, $3 workflow, $4 created before, $5 the error.
WITH picked AS MATERIALIZED (
    SELECT r.inserted_at, r.id FROM squidmesh.runs r
    WHERE r.status OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.text[])
      AND r.inserted_at OPERATOR(pg_catalog.<) $4::pg_catalog.timestamptz
      AND ($3::pg_catalog.text IS NULL OR r.workflow OPERATOR(pg_catalog.=) $3)
    LIMIT $1
    FOR UPDATE
)
SELECT p.inserted_at AS key_at, p.id AS key_id,
       c.from_status, c.run, c.failed_step, c.attempt_number, c.duration_s
FROM picked p
CROSS JOIN LATERAL squidmesh.cancel_run_v2(
    p.id, $5::pg_catalog.text::pg_catalog.jsonb, NULL::pg_catalog.int8) c
WHERE c.run IS NOT NULL;

-- name: transition_stale_runs
-- One batch of sweep_stale_runs: $1 batch size, $2/$3 cursor (inserted_at,
-- id), $4 from status, $5 cut-off, $6 workflow (NULL = all), $7 to status
-- (a legal move from $4, checked by the caller and again by the runs_write
-- trigger), $8..$13 field writes as in write_run. One row per moved run: the
-- run as written, then its key.
WITH picked AS MATERIALIZED (
    -- runs_status_inserted_idx backwards, from the cursor on.
    SELECT r.inserted_at, r.id FROM squidmesh.runs r
    WHERE r.status OPERATOR(pg_catalog.=) $4
      AND r.inserted_at OPERATOR(pg_catalog.<) $5::pg_catalog.timestamptz
      AND r.updated_at OPERATOR(pg_catalog.<) $5::pg_catalog.timestamptz
      AND r.inserted_at OPERATOR(pg_catalog.>=)
          COALESCE($2::pg_catalog.timestamptz, '-infinity')
      AND ($2::pg_catalog.timestamptz IS NULL
           OR r.inserted_at OPERATOR(pg_catalog.>) $2::pg_catalog.timestamptz
           OR r.id OPERATOR(pg_catalog.>) $3::pg_catalog.uuid)
      AND ($6::pg_catalog.text IS NULL OR r.workflow OPERATOR(pg_catalog.=) $6)
    ORDER BY r.inserted_at, r.id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), moved AS (
    UPDATE squidmesh.runs r SET
        status = $7,
        context = CASE WHEN $8 THEN $9::pg_catalog.text::pg_catalog.jsonb ELSE r.context END,
        current_step = CASE WHEN $10 THEN $11 ELSE r.current_step END,
        last_error = CASE WHEN $12 THEN $13::pg_catalog.text::pg_catalog.jsonb
                          ELSE r.last_error END
    WHERE r.id OPERATOR(pg_catalog.=) ANY (
            (SELECT pg_catalog.array_agg(p.id) FROM picked p)::pg_catalog.uuid[])
      AND r.status OPERATOR(pg_catalog.=) $4
      AND r.updated_at OPERATOR(pg_catalog.<) $5::pg_catalog.timestamptz
    RETURNING pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
              r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
              r.current_step, r.last_error::pg_catalog.text AS last_error,
              pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
              r.version, r.idempotency_key,
              pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
              pg_catalog.date_part('epoch', r.updated_at) AS updated_at,
              r.id AS run_id
)
SELECT m.id, m.workflow, m.trigger, m.status, m.payload, m.context, m.current_step,
       m.last_error, m.replayed_from_run_id, m.version, m.idempotency_key, m.inserted_at,
       m.updated_at, p.inserted_at AS key_at, p.id AS key_id
FROM moved m JOIN picked p ON p.id OPERATOR(pg_catalog.=) m.run_id;

-- name: transition_stale_runs_waiting
-- The second form of transition_stale_runs (see the header): $1 batch size,
-- $2 from statuses (the one asked for), $3 cut-off, $4 workflow, $5 to
-- status, $6..$11 field writes.
WITH picked AS MATERIALIZED (
    SELECT r.inserted_at, r.id FROM squidmesh.runs r
    WHERE r.status OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.text[])
      AND r.inserted_at OPERATOR(pg_catalog.<) $3::pg_catalog.timestamptz
      AND r.updated_at OPERATOR(pg_catalog.<) $3::pg_catalog.timestamptz
      AND ($4::pg_catalog.text IS NULL OR r.workflow OPERATOR(pg_catalog.=) $4)
    LIMIT $1
    FOR UPDATE
), moved AS (
    UPDATE squidmesh.runs r SET
        status = $5,
        context = CASE WHEN $6 THEN $7::pg_catalog.text::pg_catalog.jsonb ELSE r.context END,
        current_step = CASE WHEN $8 THEN $9 ELSE r.current_step END,
        last_error = CASE WHEN $10 THEN $11::pg_catalog.text::pg_catalog.jsonb
                          ELSE r.last_error END
    WHERE r.id OPERATOR(pg_catalog.=) ANY (
            (SELECT pg_catalog.array_agg(p.id) FROM picked p)::pg_catalog.uuid[])
      AND r.status OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.text[])
      AND r.updated_at OPERATOR(pg_catalog.<) $3::pg_catalog.timestamptz
    RETURNING pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
              r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
              r.current_step, r.last_error::pg_catalog.text AS last_error,
              pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
              r.version, r.idempotency_key,
              pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
              pg_catalog.date_part('epoch', r.updated_at) AS updated_at,
              r.id AS run_id
)
SELECT m.id, m.workflow, m.trigger, m.status, m.payload, m.context, m.current_step,
       m.last_error, m.replayed_from_run_id, m.version, m.idempotency_key, m.inserted_at,
       m.updated_at, p.inserted_at AS key_at, p.id AS key_id
FROM moved m JOIN picked p ON p.id OPERATOR(pg_catalog.=) m.run_id;

-- name: lock_and_prune_feed_ticks
-- One batch of prune_feed: $1 batch size, $2 cursor (the largest id the
-- previous batch deleted; 0 for the first), $3 cut-off. Deletes up to $1
-- ticks made before the cut-off, in id order after the cursor (tick 0, the
-- feed's start that the position None reads from, is not stored), never the newest
-- tick (every read of the feed ends its window there, and feed_tick makes
-- the next one from it). A tick that is not the newest in this statement's
-- snapshot is not the newest later either: ticks are only ever added above
-- it. Candidates are picked FOR UPDATE SKIP LOCKED so that concurrent prunes
-- take disjoint batches instead of deadlocking on each other's rows; nothing
-- else locks a tick, and readers take no row locks. One row: how many ticks
-- were deleted and the largest id among them (NULL when none).
--
-- feed_ticks_pkey from the cursor on. made_at has no index: the last batch
-- of a call reads every tick after the cursor (those made within
-- older_than), once per call.
WITH picked AS MATERIALIZED (
    SELECT t.id FROM squidmesh.feed_ticks t
    WHERE t.id OPERATOR(pg_catalog.>) GREATEST($2::pg_catalog.int8, 0)
      AND (SELECT pg_catalog.max(n.id) FROM squidmesh.feed_ticks n) OPERATOR(pg_catalog.>) t.id
      AND t.made_at OPERATOR(pg_catalog.<) $3::pg_catalog.timestamptz
    ORDER BY t.id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM squidmesh.feed_ticks t
    WHERE t.id OPERATOR(pg_catalog.=) ANY (
            (SELECT pg_catalog.array_agg(p.id) FROM picked p)::pg_catalog.int8[])
    RETURNING t.id
)
SELECT pg_catalog.count(d.id) AS deleted, pg_catalog.max(d.id) AS last_id
FROM deleted d;
