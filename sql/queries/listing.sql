-- Named queries of page_runs, list_runs, count_runs and count_runs_by_status
-- (squidmesh/_listing.py). The conventions of runs.sql hold: every function,
-- operator and type schema-qualified, runs out one row each as
-- the run's columns (see runs.sql).
--
-- One fixed text per filter shape (which of workflow and trigger are given;
-- the replays of a run apart), not one text with "$n IS NULL OR col = $n":
-- asyncpg prepares each statement and, after five executions, PostgreSQL may
-- switch to a generic plan, made without the parameters' values, which can no
-- longer drop a predicate whose parameter is NULL; an index that a filter
-- needs is then lost. tests/integration/test_listing_plans.py checks the
-- plans of every shape, custom and generic.
--
-- Parameters every listing query takes, in this order:
--   $1 statuses text[]: the statuses asked for, distinct (all eight when the
--      caller gives none);
--   $2, $3 before (inserted_at, id): only runs strictly before this position
--      in the order (inserted_at DESC, id DESC); NULL = no bound. The caller
--      folds the page cursor and created_before into it: (created_before,
--      the nil uuid) excludes exactly the runs inserted at or after it;
--   $4 created_after timestamptz, inclusive; NULL = no bound;
--   $5 limit int8; NULL = no limit;
--   then the shape's equality filters.
-- The absent bounds become -infinity / infinity in SQL, so the range is
-- always an index condition and never an "IS NULL OR".
--
-- Where a shape's plan does not depend on the values (every shape but
-- workflow + trigger, which picks the more selective of two indexes, and the
-- replays of a run), each value goes in as a scalar subquery, (SELECT $n): an
-- InitPlan, a value known only when the statement runs, in the first five
-- executions too. Their custom plans are then the generic plan, at its cost,
-- and PostgreSQL keeps that plan instead of planning every execution again:
-- with a bare LIMIT $5, the generic plan prices the limit at 10 % of the
-- rows and costs more than custom plans that know it is 50, so each call was
-- planned anew (50 to 70 us for a one-status list, more for a merge; a
-- hand-written query with LIMIT 50 does not pay that). Reading the five
-- values costs about a microsecond. test_queries.py checks that the
-- prepared statements settle on their generic plan, test_listing_plans.py
-- that it reads the right index ranges.
--
-- Keyset paging: a page continues strictly after the last run of the one
-- before, (inserted_at, id) < (last.inserted_at, last.id). A run keeps its
-- inserted_at, so a run that existed when the walk began is on exactly one
-- page however many runs are inserted meanwhile.
--
-- Newest first across several statuses: for each status (unnest $1), one
-- index range read newest first, of at most $5 keys (an index-only scan of
-- (inserted_at, id)); the keys are merged by a sort of at most
-- statuses x $5 keys, the newest $5 kept, and only those runs are read
-- (runs_pkey). Driving every shape by its statuses leaves each status one
-- range of one index, so the plan does not depend on how the planner prices
-- LIMIT $n in a generic plan (as 10 % of the rows): with an index in
-- (inserted_at) order to choose, a generic plan walked it and dropped the
-- other statuses (see sql/migrations/0004_listing_indexes.sql).

-- One status, and no trigger or source run: a single ordered range of one
-- index, read straight from it (no merge, no second lookup by id). $1 is
-- that status (text, not text[]); the other parameters are those above.

-- name: list_runs_by_status
-- No equality filter: runs_status_inserted_idx.
SELECT pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
       r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
       r.current_step, r.last_error::pg_catalog.text AS last_error,
       pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
       r.version, r.idempotency_key,
       pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
       pg_catalog.date_part('epoch', r.updated_at) AS updated_at
FROM squidmesh.runs r
WHERE r.status OPERATOR(pg_catalog.=) (SELECT $1::pg_catalog.text)
  AND (r.inserted_at, r.id) OPERATOR(pg_catalog.<)
      ROW(COALESCE((SELECT $2::pg_catalog.timestamptz), 'infinity'),
       COALESCE((SELECT $3::pg_catalog.uuid), 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
  AND r.inserted_at OPERATOR(pg_catalog.>=)
      COALESCE((SELECT $4::pg_catalog.timestamptz), '-infinity')
ORDER BY r.inserted_at DESC, r.id DESC
LIMIT (SELECT $5::pg_catalog.int8);

-- name: list_runs_by_workflow_status
-- $6 workflow: runs_workflow_status_inserted_idx.
SELECT pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
       r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
       r.current_step, r.last_error::pg_catalog.text AS last_error,
       pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
       r.version, r.idempotency_key,
       pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
       pg_catalog.date_part('epoch', r.updated_at) AS updated_at
FROM squidmesh.runs r
WHERE r.workflow OPERATOR(pg_catalog.=) (SELECT $6::pg_catalog.text)
  AND r.status OPERATOR(pg_catalog.=) (SELECT $1::pg_catalog.text)
  AND (r.inserted_at, r.id) OPERATOR(pg_catalog.<)
      ROW(COALESCE((SELECT $2::pg_catalog.timestamptz), 'infinity'),
       COALESCE((SELECT $3::pg_catalog.uuid), 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
  AND r.inserted_at OPERATOR(pg_catalog.>=)
      COALESCE((SELECT $4::pg_catalog.timestamptz), '-infinity')
ORDER BY r.inserted_at DESC, r.id DESC
LIMIT (SELECT $5::pg_catalog.int8);

-- name: select_runs
-- No equality filter: runs_status_inserted_idx, one range per status.
SELECT pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
       r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
       r.current_step, r.last_error::pg_catalog.text AS last_error,
       pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
       r.version, r.idempotency_key,
       pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
       pg_catalog.date_part('epoch', r.updated_at) AS updated_at
FROM (
    SELECT k.inserted_at, k.id
    FROM pg_catalog.unnest((SELECT $1::pg_catalog.text[])) AS s(status)
    CROSS JOIN LATERAL (
        SELECT r.inserted_at, r.id FROM squidmesh.runs r
        WHERE r.status OPERATOR(pg_catalog.=) s.status
          AND (r.inserted_at, r.id) OPERATOR(pg_catalog.<)
              ROW(COALESCE((SELECT $2::pg_catalog.timestamptz), 'infinity'),
               COALESCE((SELECT $3::pg_catalog.uuid), 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          AND r.inserted_at OPERATOR(pg_catalog.>=)
              COALESCE((SELECT $4::pg_catalog.timestamptz), '-infinity')
        ORDER BY r.inserted_at DESC, r.id DESC
        LIMIT (SELECT $5::pg_catalog.int8)
    ) k
    ORDER BY k.inserted_at DESC, k.id DESC
    LIMIT (SELECT $5::pg_catalog.int8)
) page
JOIN squidmesh.runs r ON r.id OPERATOR(pg_catalog.=) page.id
ORDER BY page.inserted_at DESC, page.id DESC;

-- name: select_runs_by_workflow
-- $6 workflow: runs_workflow_status_inserted_idx, one range per status.
SELECT pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
       r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
       r.current_step, r.last_error::pg_catalog.text AS last_error,
       pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
       r.version, r.idempotency_key,
       pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
       pg_catalog.date_part('epoch', r.updated_at) AS updated_at
FROM (
    SELECT k.inserted_at, k.id
    FROM pg_catalog.unnest((SELECT $1::pg_catalog.text[])) AS s(status)
    CROSS JOIN LATERAL (
        SELECT r.inserted_at, r.id FROM squidmesh.runs r
        WHERE r.workflow OPERATOR(pg_catalog.=) (SELECT $6::pg_catalog.text)
          AND r.status OPERATOR(pg_catalog.=) s.status
          AND (r.inserted_at, r.id) OPERATOR(pg_catalog.<)
              ROW(COALESCE((SELECT $2::pg_catalog.timestamptz), 'infinity'),
               COALESCE((SELECT $3::pg_catalog.uuid), 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          AND r.inserted_at OPERATOR(pg_catalog.>=)
              COALESCE((SELECT $4::pg_catalog.timestamptz), '-infinity')
        ORDER BY r.inserted_at DESC, r.id DESC
        LIMIT (SELECT $5::pg_catalog.int8)
    ) k
    ORDER BY k.inserted_at DESC, k.id DESC
    LIMIT (SELECT $5::pg_catalog.int8)
) page
JOIN squidmesh.runs r ON r.id OPERATOR(pg_catalog.=) page.id
ORDER BY page.inserted_at DESC, page.id DESC;

-- name: select_runs_by_trigger
-- $6 trigger: runs_trigger_status_inserted_idx, one range per status.
SELECT pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
       r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
       r.current_step, r.last_error::pg_catalog.text AS last_error,
       pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
       r.version, r.idempotency_key,
       pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
       pg_catalog.date_part('epoch', r.updated_at) AS updated_at
FROM (
    SELECT k.inserted_at, k.id
    FROM pg_catalog.unnest((SELECT $1::pg_catalog.text[])) AS s(status)
    CROSS JOIN LATERAL (
        SELECT r.inserted_at, r.id FROM squidmesh.runs r
        WHERE r.trigger OPERATOR(pg_catalog.=) (SELECT $6::pg_catalog.text)
          AND r.status OPERATOR(pg_catalog.=) s.status
          AND (r.inserted_at, r.id) OPERATOR(pg_catalog.<)
              ROW(COALESCE((SELECT $2::pg_catalog.timestamptz), 'infinity'),
               COALESCE((SELECT $3::pg_catalog.uuid), 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          AND r.inserted_at OPERATOR(pg_catalog.>=)
              COALESCE((SELECT $4::pg_catalog.timestamptz), '-infinity')
        ORDER BY r.inserted_at DESC, r.id DESC
        LIMIT (SELECT $5::pg_catalog.int8)
    ) k
    ORDER BY k.inserted_at DESC, k.id DESC
    LIMIT (SELECT $5::pg_catalog.int8)
) page
JOIN squidmesh.runs r ON r.id OPERATOR(pg_catalog.=) page.id
ORDER BY page.inserted_at DESC, page.id DESC;

-- name: select_runs_by_workflow_trigger
-- $6 workflow, $7 trigger: no index holds both, so the range of one of
-- runs_workflow_status_inserted_idx and runs_trigger_status_inserted_idx is
-- read (the planner takes the more selective) and the other equality is
-- checked on each run: runs of the workflow with other triggers (or of the
-- trigger in other workflows) are read and skipped.
SELECT pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
       r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
       r.current_step, r.last_error::pg_catalog.text AS last_error,
       pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
       r.version, r.idempotency_key,
       pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
       pg_catalog.date_part('epoch', r.updated_at) AS updated_at
FROM (
    SELECT k.inserted_at, k.id
    FROM pg_catalog.unnest($1::pg_catalog.text[]) AS s(status)
    CROSS JOIN LATERAL (
        SELECT r.inserted_at, r.id FROM squidmesh.runs r
        WHERE r.workflow OPERATOR(pg_catalog.=) $6::pg_catalog.text
          AND r.trigger OPERATOR(pg_catalog.=) $7::pg_catalog.text
          AND r.status OPERATOR(pg_catalog.=) s.status
          AND (r.inserted_at, r.id) OPERATOR(pg_catalog.<)
              ROW(COALESCE($2::pg_catalog.timestamptz, 'infinity'),
               COALESCE($3::pg_catalog.uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
          AND r.inserted_at OPERATOR(pg_catalog.>=)
              COALESCE($4::pg_catalog.timestamptz, '-infinity')
        ORDER BY r.inserted_at DESC, r.id DESC
        LIMIT $5::pg_catalog.int8
    ) k
    ORDER BY k.inserted_at DESC, k.id DESC
    LIMIT $5::pg_catalog.int8
) page
JOIN squidmesh.runs r ON r.id OPERATOR(pg_catalog.=) page.id
ORDER BY page.inserted_at DESC, page.id DESC;

-- name: select_runs_by_replayed_from
-- $6 the source run, $7 workflow and $8 trigger (NULL = any). The replays of
-- one run are few, so runs_replayed_from_inserted_idx reads all of them and
-- the other filters are checked on each; a replay copies its source's
-- workflow and trigger, so in practice only the statuses and the time range
-- skip any. The equality on $6 fixes the index, so "$n IS NULL OR" is safe
-- here.
SELECT pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
       r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
       r.current_step, r.last_error::pg_catalog.text AS last_error,
       pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
       r.version, r.idempotency_key,
       pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
       pg_catalog.date_part('epoch', r.updated_at) AS updated_at
FROM squidmesh.runs r
WHERE r.replayed_from_run_id OPERATOR(pg_catalog.=) $6::pg_catalog.uuid
  AND r.status OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])
  AND (r.inserted_at, r.id) OPERATOR(pg_catalog.<)
      ROW(COALESCE($2::pg_catalog.timestamptz, 'infinity'),
       COALESCE($3::pg_catalog.uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
  AND r.inserted_at OPERATOR(pg_catalog.>=) COALESCE($4::pg_catalog.timestamptz, '-infinity')
  AND ($7::pg_catalog.text IS NULL OR r.workflow OPERATOR(pg_catalog.=) $7)
  AND ($8::pg_catalog.text IS NULL OR r.trigger OPERATOR(pg_catalog.=) $8)
ORDER BY r.inserted_at DESC, r.id DESC
LIMIT $5::pg_catalog.int8;

-- Counts: one row per status asked for ($1), the runs in it inserted in
-- [$2, $3) (NULL = unbounded); the caller adds them up (count_runs) or
-- reports them (count_runs_by_status). Each status is one range of the
-- shape's index, counted by an index-only scan (no table read for pages the
-- visibility map, kept by autovacuum, marks all-visible). One scalar subquery
-- per status rather than one GROUP BY: a status equality in each keeps every
-- count on an index, where a GROUP BY over most of the table was planned as
-- a sequential scan. A count reads every matching index entry: bound it in
-- time with created_after.

-- name: count_runs
-- runs_status_inserted_idx (or, on PostgreSQL >= 18, whichever index the
-- planner finds cheaper to skip-scan: both hold status and inserted_at).
SELECT s.status,
       (SELECT pg_catalog.count(r.id) FROM squidmesh.runs r
         WHERE r.status OPERATOR(pg_catalog.=) s.status
           AND r.inserted_at OPERATOR(pg_catalog.>=)
               COALESCE($2::pg_catalog.timestamptz, '-infinity')
           AND r.inserted_at OPERATOR(pg_catalog.<)
               COALESCE($3::pg_catalog.timestamptz, 'infinity')) AS runs
FROM pg_catalog.unnest($1::pg_catalog.text[]) AS s(status);

-- name: count_runs_by_workflow
-- $4 workflow: runs_workflow_status_inserted_idx.
SELECT s.status,
       (SELECT pg_catalog.count(r.id) FROM squidmesh.runs r
         WHERE r.workflow OPERATOR(pg_catalog.=) $4::pg_catalog.text
           AND r.status OPERATOR(pg_catalog.=) s.status
           AND r.inserted_at OPERATOR(pg_catalog.>=)
               COALESCE($2::pg_catalog.timestamptz, '-infinity')
           AND r.inserted_at OPERATOR(pg_catalog.<)
               COALESCE($3::pg_catalog.timestamptz, 'infinity')) AS runs
FROM pg_catalog.unnest($1::pg_catalog.text[]) AS s(status);

-- name: count_runs_by_trigger
-- $4 trigger: runs_trigger_status_inserted_idx.
SELECT s.status,
       (SELECT pg_catalog.count(r.id) FROM squidmesh.runs r
         WHERE r.trigger OPERATOR(pg_catalog.=) $4::pg_catalog.text
           AND r.status OPERATOR(pg_catalog.=) s.status
           AND r.inserted_at OPERATOR(pg_catalog.>=)
               COALESCE($2::pg_catalog.timestamptz, '-infinity')
           AND r.inserted_at OPERATOR(pg_catalog.<)
               COALESCE($3::pg_catalog.timestamptz, 'infinity')) AS runs
FROM pg_catalog.unnest($1::pg_catalog.text[]) AS s(status);

-- name: count_runs_by_workflow_trigger
-- $4 workflow, $5 trigger: the ranges of both indexes above, combined
-- (a BitmapAnd) or one of them with the other equality checked on the row;
-- either way the table is read for the runs of the more selective filter,
-- not only the index.
SELECT s.status,
       (SELECT pg_catalog.count(r.id) FROM squidmesh.runs r
         WHERE r.workflow OPERATOR(pg_catalog.=) $4::pg_catalog.text
           AND r.trigger OPERATOR(pg_catalog.=) $5::pg_catalog.text
           AND r.status OPERATOR(pg_catalog.=) s.status
           AND r.inserted_at OPERATOR(pg_catalog.>=)
               COALESCE($2::pg_catalog.timestamptz, '-infinity')
           AND r.inserted_at OPERATOR(pg_catalog.<)
               COALESCE($3::pg_catalog.timestamptz, 'infinity')) AS runs
FROM pg_catalog.unnest($1::pg_catalog.text[]) AS s(status);
