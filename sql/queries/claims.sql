-- Named queries of claim_runs (squidmesh/_claims.py). The conventions of
-- runs.sql hold here too: every name schema-qualified, JSON in as
-- $n::text::jsonb, runs out as the run's columns (see runs.sql).
--
-- A claim is one statement: pick up to $1 pending runs, oldest first, FOR
-- UPDATE SKIP LOCKED, and move them to running with the field writes. Two
-- claimers never wait on each other: a claim passes over every run another
-- transaction holds (another claimer's, or anyone's row lock), so it
-- returns at once with what is free. At READ COMMITTED (the level
-- _queries.write_rows guarantees), a row another claimer moved and committed
-- after this statement's snapshot is re-read when it is locked and its
-- WHERE clause re-checked on the newest version (the plan keeps the status
-- as a filter of the scan for that, even where the partial index implies
-- it): it is no longer pending, so it is left out. Each run is therefore
-- claimed once. The runs_write trigger bumps the version, stamps
-- updated_at, checks the move and appends the pending -> running row to the
-- transition log.
--
-- The UPDATE does not filter on the status again: every picked run was
-- locked, pending, by this statement, and nobody can change it before the
-- UPDATE. A second "status = 'pending'" there would also let the planner
-- find the picked ids through runs_pending_claim_idx (a skip scan of the
-- whole queue for its id column, chosen on PostgreSQL 18 when the queue is
-- small) instead of runs_pkey.
--
-- Indexes. The status is written as the literal 'pending', never a
-- parameter: the planner uses a partial index only when it can prove the
-- index's predicate (status = 'pending') from the query's WHERE clause, and
-- with a parameter it cannot in a generic plan (the plan asyncpg's prepared
-- statement may switch to after five executions).
--   * claim_runs reads runs_pending_claim_idx (inserted_at, id) WHERE
--     status = 'pending' (0005) from its start: it holds only the queue, so
--     the oldest pending runs are its first entries and a claim reads about
--     $1 of them (plus the entries of runs claimed since the last VACUUM,
--     which point at row versions no longer pending, and of rows others
--     hold, which SKIP LOCKED passes over).
--   * claim_runs_by_workflow reads runs_workflow_status_inserted_idx
--     (workflow, status, inserted_at DESC, id DESC) (0001) backwards over
--     (workflow, 'pending'): oldest first, and only that workflow's entries.
--     The partial index would serve it too, but reads and drops the pending
--     runs of every other workflow.
-- Neither plan sorts. The rows of the UPDATE come back in no particular
-- order: _claims.py sorts the (at most 1000) claimed runs by (inserted_at,
-- id), rather than a Sort node here.
--
-- The UPDATE finds its rows through "id = ANY (array of the picked ids)",
-- an index condition on runs_pkey whatever the planner estimates for the
-- picked set (see retention.sql). tests/integration/test_claims.py checks
-- both plans, custom and generic.

-- name: claim_runs
-- $1 limit (1 to 1000, checked by the caller), $2..$7 field writes as in
-- write_run. One row per claimed run: the run as written.
WITH picked AS MATERIALIZED (
    SELECT r.id FROM squidmesh.runs r
    WHERE r.status OPERATOR(pg_catalog.=) 'pending'
    ORDER BY r.inserted_at, r.id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE squidmesh.runs r SET
    status = 'running',
    context = CASE WHEN $2 THEN $3::pg_catalog.text::pg_catalog.jsonb ELSE r.context END,
    current_step = CASE WHEN $4 THEN $5 ELSE r.current_step END,
    last_error = CASE WHEN $6 THEN $7::pg_catalog.text::pg_catalog.jsonb
                      ELSE r.last_error END
WHERE r.id OPERATOR(pg_catalog.=) ANY (
        (SELECT pg_catalog.array_agg(p.id) FROM picked p)::pg_catalog.uuid[])
RETURNING pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
          r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
          r.current_step, r.last_error::pg_catalog.text AS last_error,
          pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
          r.version, r.idempotency_key,
          pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
          pg_catalog.date_part('epoch', r.updated_at) AS updated_at;

-- name: claim_runs_by_workflow
-- claim_runs for one workflow: $1 limit, $2 workflow, $3..$8 field writes.
WITH picked AS MATERIALIZED (
    SELECT r.id FROM squidmesh.runs r
    WHERE r.workflow OPERATOR(pg_catalog.=) $2
      AND r.status OPERATOR(pg_catalog.=) 'pending'
    ORDER BY r.inserted_at, r.id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE squidmesh.runs r SET
    status = 'running',
    context = CASE WHEN $3 THEN $4::pg_catalog.text::pg_catalog.jsonb ELSE r.context END,
    current_step = CASE WHEN $5 THEN $6 ELSE r.current_step END,
    last_error = CASE WHEN $7 THEN $8::pg_catalog.text::pg_catalog.jsonb
                      ELSE r.last_error END
WHERE r.id OPERATOR(pg_catalog.=) ANY (
        (SELECT pg_catalog.array_agg(p.id) FROM picked p)::pg_catalog.uuid[])
RETURNING pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
          r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
          r.current_step, r.last_error::pg_catalog.text AS last_error,
          pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
          r.version, r.idempotency_key,
          pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
          pg_catalog.date_part('epoch', r.updated_at) AS updated_at;
