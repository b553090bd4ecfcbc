-- squidmesh schema, version 0004: the indexes behind page_runs, list_runs,
-- count_runs and count_runs_by_status (sql/queries/listing.sql).
--
-- Built in the migration's transaction, not CONCURRENTLY: migrate() must keep
-- working inside a caller's transaction. Each build blocks writes to runs
-- while it reads the table (seconds on millions of runs). On a large table,
-- build them first by hand with CREATE INDEX IF NOT EXISTS (the statements
-- below, with CONCURRENTLY added, outside a transaction): this file then
-- finds them (IF NOT EXISTS) and only drops the old ones.
--
-- Every listing query is driven by the statuses asked for (all eight when
-- none are given): for each status it reads one range of an index whose
-- columns are (equality filter, status, inserted_at DESC, id DESC), newest
-- first, and merges the ranges (see listing.sql). So the ordered indexes are:
--
--   runs_status_inserted_idx           (status, inserted_at, id)            0001
--       no filter, a status filter, a time range, counts without filters;
--   runs_workflow_status_inserted_idx  (workflow, status, inserted_at, id)  0001
--       the same with a workflow;
--   runs_trigger_status_inserted_idx   (trigger, status, inserted_at, id)   new
--       the same with a trigger. With a workflow AND a trigger, one of the
--       two indexes above serves the equality it has and the other is
--       checked on the row (the runs of that workflow with other triggers,
--       or of that trigger in other workflows, are read and skipped);
--   runs_replayed_from_inserted_idx    (replayed_from_run_id, inserted_at, id)
--       WHERE replayed_from_run_id IS NOT NULL                        new
--       the replays of a run, newest first; replaces runs_replayed_from_idx
--       (replayed_from_run_id), which it also stands in for where that one
--       served: the lookup behind the ON DELETE SET NULL of
--       runs_replayed_from_fkey when a run is deleted.
--
-- Dropped: runs_inserted_idx (inserted_at, id) and runs_workflow_inserted_idx
-- (workflow, inserted_at, id). The per-status ranges above serve what they
-- served (8 short ranges instead of one), and they were a trap as well as a
-- cost: once a prepared statement switches to its generic plan, PostgreSQL
-- prices LIMIT $n as 10 % of the rows, and because runs_inserted_idx follows
-- the heap's insertion order it looked cheaper to walk it and drop the other
-- statuses than to read the status's own range (measured: a rare status then
-- walks most of the table). Every index on runs costs each INSERT and each
-- status change (status is indexed, so such an UPDATE is never HOT): this
-- file leaves three ordered indexes where there were four, plus the partial
-- one on replays, which only replays pay for.
--
-- While a rolling deploy is under way, instances of the previous release
-- list runs without a status filter (list_runs() or list_runs(workflow=...))
-- by sorting the candidate rows instead of reading them in order.
CREATE INDEX IF NOT EXISTS runs_trigger_status_inserted_idx
    ON squidmesh.runs (trigger, status, inserted_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS runs_replayed_from_inserted_idx
    ON squidmesh.runs (replayed_from_run_id, inserted_at DESC, id DESC)
    WHERE replayed_from_run_id IS NOT NULL;
DROP INDEX IF EXISTS squidmesh.runs_replayed_from_idx;
DROP INDEX IF EXISTS squidmesh.runs_inserted_idx;
DROP INDEX IF EXISTS squidmesh.runs_workflow_inserted_idx;
